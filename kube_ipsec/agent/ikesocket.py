"""The IKE endpoint's UDP sockets: port 500 and the NAT-T port 4500, one address.

Both sockets get a per-socket XFRM bypass policy (``xfrm.bypass``): without it the node-to-node
transport policies — "all traffic between the two addresses" — would capture IKE itself, and
the pair could never negotiate the SAs it waits for. The 4500 socket also gets ``UDP_ENCAP``
(ESP-in-UDP), so the kernel decapsulates NAT-T ESP and hands the socket only IKE datagrams,
still carrying the 4-byte non-ESP marker, which the core strips (and adds on send).

Addresses and ports are configurable so several agents can run side by side on one machine
(tests bind 127.0.0.x, the lab one network namespace per node). Datagrams go to a callback
with (data, src, dst) — dst is the socket's own address, the core needs it for NAT detection;
nothing is parsed here.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import socket
from collections.abc import Callable

from kube_ipsec.xfrm import bypass

log = logging.getLogger(__name__)

Address = tuple[str, int]
OnDatagram = Callable[[bytes, Address, Address], None]
# A node with many peers gets their IKE_SA_INIT answers in one burst; the default ~208 KiB
# buffer dropped 151 of 1000 in benchmarks/mesh_convergence.py, each costing a 4 s retransmit.
RECEIVE_BUFFER = 4 * 1024 * 1024
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, local: Address, on_datagram: OnDatagram) -> None:
        self.local, self.on_datagram = local, on_datagram

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.on_datagram(data, (str(addr[0]), int(addr[1])), self.local)

    def error_received(self, exc: Exception) -> None:
        log.debug("IKE socket %s: %s", self.local, exc)  # ICMP unreachable from a peer: retried


def _grow_receive_buffer(sock: socket.socket) -> None:
    """Past net.core.rmem_max with CAP_NET_ADMIN (the agent has it), else as far as allowed."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)


def _same(protocol: _Protocol) -> _Protocol:
    return protocol


class IkeEndpoint:
    def __init__(self, address: str, on_datagram: OnDatagram, *, ike_port: int = 500,
                 natt_port: int = 4500, socket_bypass: bool = True) -> None:
        self.address, self.on_datagram = address, on_datagram
        self.ports = (ike_port, natt_port)
        self.socket_bypass = socket_bypass
        self._transports: dict[int, asyncio.DatagramTransport] = {}

    @property
    def bound(self) -> bool:
        return len(self._transports) == 2

    def _socket(self, port: int, encap: bool) -> socket.socket:
        family = (socket.AF_INET6 if ipaddress.ip_address(self.address).version == 6
                  else socket.AF_INET)
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            _grow_receive_buffer(sock)
            if self.socket_bypass:
                bypass.bypass_socket(sock)
            if encap:
                bypass.enable_udp_encap(sock)
            sock.bind((self.address, port))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        for port, encap in ((self.ports[0], False), (self.ports[1], True)):
            protocol = _Protocol((self.address, port), self.on_datagram)
            transport, _ = await loop.create_datagram_endpoint(
                functools.partial(_same, protocol), sock=self._socket(port, encap))
            self._transports[port] = transport
        log.info("IKE on %s ports %d and %d (socket bypass %s)", self.address, *self.ports,
                 "on" if self.socket_bypass else "off")

    def send(self, data: bytes, src: Address, dst: Address) -> None:
        transport = self._transports.get(src[1])
        if transport is None:
            log.warning("no IKE socket on port %d; datagram to %s dropped", src[1], dst)
            return
        transport.sendto(data, dst)

    def close(self) -> None:
        for transport in self._transports.values():
            transport.close()
        self._transports.clear()
