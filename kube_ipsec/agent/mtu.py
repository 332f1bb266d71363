"""How much room IPsec leaves for the packets it protects (arithmetic, RFC 4303/4302).

The agent owns no routes — transport mode rides on the node's own routes and tunnel mode on
the CNI's — so it *reports* the largest inner packet that still fits the link after ESP/AH
(``tunnels[].mtu`` in IPsecNode status and the log), for the CNI or the admin to set on the
pod interfaces. The numbers are exact per packet, not a rounded worst case:

ESP = outer IP (tunnel mode) + UDP 8 (NAT-T) + SPI/seq 8 + IV + payload padded so that
payload + 2 trailer bytes is a multiple of 4 (AEAD block size 1) + ICV 16.
AH = outer IP (tunnel mode) + 12-byte header + ICV, padded to 4 (IPv4) or 8 (IPv6) bytes; AH
cannot be UDP-encapsulated (it authenticates the addresses a NAT rewrites).

``link_mtu`` finds the MTU of the interface carrying the node address, the one input that is
not arithmetic.
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
from pathlib import Path

SIOCGIFADDR = 0x8915
ESP_HEADER = 8  # SPI + sequence number
ESP_TRAILER = 2  # pad length + next header
ESP_ALIGN = 4
UDP_HEADER = 8
AH_HEADER = 12
IP_HEADER = {4: 20, 6: 40}

# cipher -> (IV bytes, ICV bytes); AH integrity -> ICV bytes
ESP_CIPHERS = {
    "aes-gcm-128": (8, 16),
    "aes-gcm-256": (8, 16),
    "chacha20-poly1305": (8, 16),
}
AH_INTEGRITY = {"hmac-sha256-128": 16}


def inner_mtu(link_mtu: int, *, mode: str, protocol: str = "esp", cipher: str | None = None,
              integrity: str | None = None, family: int = 4, udp_encap: bool = False) -> int:
    """The largest inner IP packet that, protected, still fits ``link_mtu``.

    ``mode`` is ``transport`` or ``tunnel``; ``family`` the IP version of the outer header
    (transport mode: of the packet itself, whose header is not encrypted).
    """
    ip = IP_HEADER[family]
    outer = ip if mode == "tunnel" else 0
    if protocol == "ah":
        if udp_encap:
            raise ValueError("AH cannot be UDP-encapsulated")
        icv = AH_INTEGRITY[integrity or "hmac-sha256-128"]
        align = 4 if family == 4 else 8
        ah = -(-(AH_HEADER + icv) // align) * align
        return link_mtu - outer - ah
    iv, icv = ESP_CIPHERS[cipher or "aes-gcm-256"]
    room = link_mtu - outer - (UDP_HEADER if udp_encap else 0) - ESP_HEADER - iv - icv
    if mode == "tunnel":
        # the whole inner packet is the ESP payload
        return room // ESP_ALIGN * ESP_ALIGN - ESP_TRAILER
    # transport: the inner IP header stays outside; only its payload is padded
    return ip + (room - ip) // ESP_ALIGN * ESP_ALIGN - ESP_TRAILER


def overhead(link_mtu: int, **kwargs: object) -> int:
    """Bytes lost to IPsec on a link of ``link_mtu`` (same keywords as ``inner_mtu``)."""
    return link_mtu - inner_mtu(link_mtu, **kwargs)  # type: ignore[arg-type]


def link_mtu(address: str, sys_net: str = "/sys/class/net",
             if_inet6: str = "/proc/net/if_inet6") -> int | None:
    """The MTU of the interface holding ``address`` (None if no interface has it).

    Read without netlink (pyroute2 stays in the xfrm layer): SIOCGIFADDR per interface for
    IPv4, ``/proc/net/if_inet6`` for IPv6, then ``/sys/class/net/<if>/mtu``.
    """
    ip = ipaddress.ip_address(address)
    name = _v4_interface(ip) if ip.version == 4 else _v6_interface(ip, if_inet6)
    if name is None:
        return None
    try:
        return int(Path(sys_net, name, "mtu").read_text())
    except (OSError, ValueError):
        return None


def _v4_interface(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            try:
                reply = fcntl.ioctl(sock.fileno(), SIOCGIFADDR,
                                    struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue  # no IPv4 address on it
            if socket.inet_ntoa(reply[20:24]) == str(ip):
                return name
    return None


def _v6_interface(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, path: str) -> str | None:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) == 6 and ipaddress.ip_address(bytes.fromhex(fields[0])) == ip:
            return fields[5]
    return None
