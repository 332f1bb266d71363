"""Per-socket XFRM settings for the agent's IKE sockets (UDP 500 and 4500).

A socket-level policy with no template, for both directions, exempts the socket's packets
from every SPD policy: IKE must flow in the clear even when a catch-all policy (ours, or a
fail-closed ``block``) would encrypt or drop it. ``UDP_ENCAP`` on the 4500 socket lets the
kernel strip NAT-T-encapsulated ESP before the socket sees it. strongSwan's kernel-netlink
does both (``bypass_socket``, ``enable_udp_decap``).
"""

from __future__ import annotations

import socket

from kube_ipsec.xfrm import codec
from kube_ipsec.xfrm import constants as c
from kube_ipsec.xfrm.model import Dir


def bypass_socket(sock: socket.socket) -> None:
    if sock.family == socket.AF_INET6:
        level, option = socket.IPPROTO_IPV6, c.IPV6_XFRM_POLICY
    else:
        level, option = socket.IPPROTO_IP, c.IP_XFRM_POLICY
    for direction in (Dir.IN, Dir.OUT):
        sock.setsockopt(level, option, codec.socket_policy(sock.family, direction))


def enable_udp_encap(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_UDP, c.UDP_ENCAP, c.UDP_ENCAP_ESPINUDP)
