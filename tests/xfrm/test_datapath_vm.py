"""We test these aspects in the VM (real kernel with ESP/AH), two namespaces on a veth wire,
every SA and policy installed through kube_ipsec.xfrm with kernel-allocated SPIs:

* traffic (ping + a TCP transfer) flows; the wire shows ESP/AH with exactly our SPIs and no
  plaintext; ``ip xfrm state`` shows the parameters set; a dump reads back the SAs installed;
  per-SA counters equal ``ip -s xfrm state`` — for transport/tunnel, AES-GCM-128/256,
  ChaCha20-Poly1305 with ESN, AH HMAC-SHA-256, ESP in UDP 4500 (NAT-T), and IPv6 tunnel;
* make-before-break: 20 consecutive ``switch_sa_pair`` under a 1000 packet/s UDP stream lose
  nothing and reorder nothing beyond the replay window;
* fail-closed: with a template policy but no SA, and a catch-all block policy, nothing leaves
  in plaintext and ACQUIREs arrive;
* soft and hard EXPIRE events arrive for an SA's time limits, and the hard one removes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from pyroute2 import netns as pr_netns

from kube_ipsec.xfrm import (
    SA,
    Acquire,
    Action,
    Algorithm,
    Dir,
    Encap,
    Expire,
    Lifetime,
    Mode,
    NetlinkKernel,
    Policy,
    Proto,
    SaPair,
    Selector,
    Template,
    bypass_socket,
    enable_udp_encap,
    install_inbound,
    switch_sa_pair,
)
from tests.netns import Pair, capture, veth_pair

pytestmark = pytest.mark.vm

REQID = 0x6B690100
ANY = ipaddress.ip_network('0.0.0.0/0')


@dataclass
class Node:
    ns: str
    ip: ipaddress.IPv4Address
    kernel: NetlinkKernel


@dataclass(frozen=True)
class Suite:
    name: str
    proto: Proto
    mode: Mode
    alg: Callable[[], Algorithm]
    esn: bool = False
    replay_window: int = 32
    natt: bool = False
    ipv6: bool = False

    def addresses(self, pair: Pair) -> tuple[str, str]:
        return (pair.left_ip6, pair.right_ip6) if self.ipv6 else (pair.left_ip, pair.right_ip)

    def sa(self, src, dst, spi) -> SA:
        alg = self.alg()
        return SA(src, dst, spi, REQID, self.proto, self.mode,
                  aead=alg if self.proto is Proto.ESP else None,
                  auth=alg if self.proto is Proto.AH else None,
                  replay_window=self.replay_window, esn=self.esn,
                  encap=Encap() if self.natt else None)


SUITES = [
    Suite('esp-transport-gcm128', Proto.ESP, Mode.TRANSPORT,
          lambda: Algorithm.aes_gcm(os.urandom(20))),
    Suite('esp-tunnel-gcm256', Proto.ESP, Mode.TUNNEL,
          lambda: Algorithm.aes_gcm(os.urandom(36)), replay_window=128),
    Suite('esp-transport-chacha20-esn', Proto.ESP, Mode.TRANSPORT,
          lambda: Algorithm.chacha20_poly1305(os.urandom(36)), esn=True, replay_window=1024),
    Suite('ah-transport-sha256', Proto.AH, Mode.TRANSPORT,
          lambda: Algorithm.hmac_sha256(os.urandom(32), 128)),
    Suite('esp-transport-gcm128-natt', Proto.ESP, Mode.TRANSPORT,
          lambda: Algorithm.aes_gcm(os.urandom(20)), natt=True),
    Suite('esp-tunnel-gcm128-ipv6', Proto.ESP, Mode.TUNNEL,
          lambda: Algorithm.aes_gcm(os.urandom(20)), ipv6=True),
]


def policies(me: Node, peer: Node, suite: Suite) -> tuple[Policy, Policy]:
    """(in, out) for traffic between the two node addresses."""
    def tmpl(src, dst):
        return Template(src, dst, REQID, suite.proto, suite.mode)

    return (
        Policy(Selector.hosts(peer.ip, me.ip), Dir.IN, (tmpl(peer.ip, me.ip),),
               priority=0x6B690100),
        Policy(Selector.hosts(me.ip, peer.ip), Dir.OUT, (tmpl(me.ip, peer.ip),),
               priority=0x6B690100),
    )


async def new_pairs(left: Node, right: Node, suite: Suite) -> tuple[SaPair, SaPair]:
    """Allocate both inbound SPIs in the kernel, as IKE would, and build the two SA pairs."""
    kw = {'proto': suite.proto, 'mode': suite.mode}
    l_in = await left.kernel.allocspi(right.ip, left.ip, REQID, **kw)
    r_in = await right.kernel.allocspi(left.ip, right.ip, REQID, **kw)
    to_left = suite.sa(right.ip, left.ip, l_in)
    to_right = suite.sa(left.ip, right.ip, r_in)
    return SaPair(to_left, to_right), SaPair(to_right, to_left)


async def establish(pair: Pair, suite: Suite):
    left_ip, right_ip = suite.addresses(pair)
    left = Node(pair.left, ipaddress.ip_address(left_ip), NetlinkKernel(pair.left))
    right = Node(pair.right, ipaddress.ip_address(right_ip), NetlinkKernel(pair.right))
    outs = {}
    for me, peer in ((left, right), (right, left)):  # policies first: fail closed
        pol_in, outs[me.ns] = policies(me, peer, suite)
        await me.kernel.add_policy(pol_in)
        await me.kernel.add_policy(outs[me.ns])
    lpair, rpair = await new_pairs(left, right, suite)
    outs[right.ns] = await switch_sa_pair(right.kernel, None, rpair, outs[right.ns])
    outs[left.ns] = await switch_sa_pair(left.kernel, None, lpair, outs[left.ns])
    return left, right, lpair, rpair, outs


def tcp_transfer(pair: Pair, dst: str, size: int = 256 * 1024) -> bool:
    family = socket.AF_INET6 if ':' in dst else socket.AF_INET
    payload = os.urandom(size)
    server = pr_netns.create_socket(pair.right, family, socket.SOCK_STREAM)
    server.bind((dst, 5001))
    server.listen(1)
    server.settimeout(60)
    got = hashlib.sha256()

    def serve():
        conn, _ = server.accept()
        with conn:
            while chunk := conn.recv(65536):
                got.update(chunk)

    thread = threading.Thread(target=serve)
    thread.start()
    client = pr_netns.create_socket(pair.left, family, socket.SOCK_STREAM)
    client.settimeout(60)
    client.connect((dst, 5001))
    client.sendall(payload)
    client.close()
    thread.join(60)
    server.close()
    return got.digest() == hashlib.sha256(payload).digest()


def ip_s_xfrm_state(ns: str) -> dict[int, tuple[str, int, int]]:
    """spi -> (the state's text, bytes, packets) from ``ip -s xfrm state``."""
    out = subprocess.run(['ip', 'netns', 'exec', ns, 'ip', '-s', 'xfrm', 'state'],
                         check=True, capture_output=True, text=True).stdout
    states = {}
    for block in re.split(r'\n(?=src )', out.strip()):
        spi = int(re.search(r'spi (0x[0-9a-f]+)', block).group(1), 16)
        cur = re.search(r'lifetime current:\s+(\d+)\(bytes\), (\d+)\(packets\)', block)
        states[spi] = (block, int(cur.group(1)), int(cur.group(2)))
    return states


def wire_spis(text: str, proto: Proto) -> set[int]:
    tag = 'ESP' if proto is Proto.ESP else 'AH'
    return {int(m, 16) for m in re.findall(tag + r'\(spi=(0x[0-9a-f]+)', text)}


@pytest.mark.parametrize('suite', SUITES, ids=[s.name for s in SUITES])
async def test_sas_installed_here_carry_traffic(suite, tmp_path):
    with veth_pair(ipv6=suite.ipv6) as pair, contextlib.ExitStack() as sockets:
        left, right, lpair, rpair, _ = await establish(pair, suite)
        left_ip, right_ip = suite.addresses(pair)
        l3 = 'ip6' if suite.ipv6 else 'ip'
        if suite.natt:  # the IKE socket on 4500 is where the kernel decapsulates ESP-in-UDP
            for ns, ip in ((pair.left, pair.left_ip), (pair.right, pair.right_ip)):
                sock = sockets.enter_context(
                    pr_netns.create_socket(ns, socket.AF_INET, socket.SOCK_DGRAM))
                bypass_socket(sock)
                enable_udp_encap(sock)
                sock.bind((ip, 4500))
        try:
            # Each side's egress is the wire; ingress also shows tunnel-mode packets the
            # kernel re-injects after decryption, so filter on the sender's address.
            with capture(pair.left, pair.left_if, tmp_path / 'left.pcap',
                         f'{l3} and src host {left_ip}') as lcap, \
                 capture(pair.right, pair.right_if, tmp_path / 'right.pcap',
                         f'{l3} and src host {right_ip}') as rcap:
                assert pair.ping(pair.left, right_ip)
                assert tcp_transfer(pair, right_ip)
            for cap, sa in ((lcap, lpair.outbound), (rcap, rpair.outbound)):
                text = cap.text()
                assert wire_spis(text, suite.proto) == {sa.spi}
                assert ('UDP-encap' in text) == suite.natt
                if suite.proto is Proto.ESP:
                    # (IPv6 neighbour solicitations to multicast stay plaintext, by design)
                    assert 'echo' not in text and 'Flags [' not in text, 'plaintext on wire'

            for node, sa_pair in ((left, lpair), (right, rpair)):
                dumped = {s.spi: s for s in await node.kernel.dump_sas()}
                assert dumped[sa_pair.inbound.spi] == sa_pair.inbound  # params read back
                assert dumped[sa_pair.outbound.spi] == sa_pair.outbound
                shown = ip_s_xfrm_state(node.ns)
                for sa in (sa_pair.inbound, sa_pair.outbound):
                    block, nbytes, npackets = shown[sa.spi]
                    alg = (sa.aead or sa.auth).name
                    assert f'mode {suite.mode.name.lower()}' in block and alg in block
                    assert f'reqid {REQID}' in block
                    counters = dumped[sa.spi].counters
                    assert (counters.bytes, counters.packets) == (nbytes, npackets)
                    assert npackets > 10
                    # replay state: sequence numbers sent / highest received (no loss here)
                    sequence = counters.oseq if sa is sa_pair.outbound else counters.seq
                    assert sequence == npackets
                    assert (counters.replay, counters.integrity_failed) == (0, 0)
                    print(f'{suite.name} {node.ns} spi 0x{sa.spi:08x}: '
                          f'{npackets} packets {nbytes} bytes seq {sequence} (ip -s agrees)')
        finally:
            await left.kernel.close()
            await right.kernel.close()


def kernel_drops(ns: str) -> dict[str, int]:
    """Non-zero XFRM error counters and UDP receive errors in ``ns``, to explain any loss."""
    def cat(path: str) -> str:
        return subprocess.run(['ip', 'netns', 'exec', ns, 'cat', path], check=True,
                              capture_output=True, text=True).stdout

    found = {k: int(v) for k, v in (line.split() for line in cat('/proc/net/xfrm_stat')
                                    .splitlines()) if int(v)}
    names, values = [line.split()[1:] for line in cat('/proc/net/snmp').splitlines()
                     if line.startswith('Udp:')]
    found.update({f'Udp{k}': int(v) for k, v in zip(names, values, strict=True)
                  if k.endswith('Errors') and int(v)})
    return found


def softnet_drops() -> int:
    """Packets dropped because a CPU's input backlog was full (all namespaces)."""
    rows = Path('/proc/net/softnet_stat').read_text().split('\n')
    return sum(int(row.split()[1], 16) for row in rows if row)


def start(ns: str, *args: str) -> subprocess.Popen[str]:
    """Run udp_stream pinned to CPU 0. A veth delivers on the sending CPU's backlog; a sender
    hopping between vCPUs reorders its own flow there (a NIC's per-flow queue would not)."""
    proc = subprocess.Popen(['ip', 'netns', 'exec', ns, 'taskset', '-c', '0', sys.executable,
                             '-m', 'tests.xfrm.udp_stream', *args],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == 'ready'
    return proc


async def test_make_before_break_under_a_udp_stream_loses_nothing(tmp_path):
    suite = dataclasses.replace(SUITES[0], replay_window=128)
    switches, linger = 20, 0.5
    # Under TCG on a busy host a vCPU can stall for a second while its per-CPU backlog fills
    # (1000 packets by default): the drops that follow are the VM's, not XFRM's (seen: 26
    # packets after all 33906 had crossed the wire as ESP). The VM is ours: a deeper backlog.
    Path('/proc/sys/net/core/netdev_max_backlog').write_text('100000')
    backlog_drops = softnet_drops()
    with veth_pair() as pair:
        left, right, lpair, rpair, outs = await establish(pair, suite)
        used = {lpair.outbound.spi}
        try:
            with capture(pair.right, pair.right_if, tmp_path / 'wire.pcap', 'esp') as cap:
                receiver = start(pair.right, 'recv', pair.right_ip, '7000')
                sender = start(pair.left, 'send', pair.right_ip, '7000', '1000')
                await asyncio.sleep(1)
                for _ in range(switches):
                    new_l, new_r = await new_pairs(left, right, suite)
                    # responder (right) installs its inbound SA on the CREATE_CHILD_SA request
                    await install_inbound(right.kernel, new_r.inbound)
                    # initiator (left), on the response: in, out, switch, retire old
                    outs[left.ns] = await switch_sa_pair(
                        left.kernel, lpair, new_l, outs[left.ns], linger=linger)
                    # responder, on the initiator's DELETE
                    outs[right.ns] = await switch_sa_pair(
                        right.kernel, rpair, new_r, outs[right.ns], linger=linger,
                        inbound_installed=True)
                    lpair, rpair = new_l, new_r
                    used.add(lpair.outbound.spi)
                    await asyncio.sleep(0.2)
                await asyncio.sleep(1)
                sender.send_signal(signal.SIGTERM)
                sent = json.loads(sender.communicate(timeout=60)[0])
                got = json.loads(receiver.communicate(timeout=60)[0])
            esp = [p for p in cap.esp() if p.src == pair.left_ip]
            drops = (kernel_drops(pair.left), kernel_drops(pair.right))
            backlog_drops = softnet_drops() - backlog_drops
        finally:
            await left.kernel.close()
            await right.kernel.close()
    lost = sent['sent'] - got['unique']
    esp_late, esp_displacement = reordering(esp)
    print(f'kernel drop counters: left {drops[0]}, right {drops[1]}, '
          f'backlog {backlog_drops}')
    print(f'make-before-break: {switches} switches, sent {sent["sent"]}, '
          f'received {got["received"]} ({got["unique"]} unique), lost {lost}, '
          f'send errors {sent["send_errors"]}; ESP on the wire: {len(esp)} packets on '
          f'{len({p.spi for p in esp})} SPIs, {esp_late} reordered within their SA, max '
          f'{esp_displacement} (replay window {suite.replay_window}); at the receiving socket '
          f'{got["late"]} late, max {got["max_displacement"]} behind')
    assert got['ended'] and sent['sent'] > 1000 * switches * 0.2
    assert len(esp) == sent['sent'] + 5  # + end markers: every packet left as ESP
    assert lost == 0 and sent['send_errors'] == [] and backlog_drops == 0
    # The replay window applies per SA, to ESP sequence numbers: nothing beyond it, and the
    # receiver's replay check dropped nothing. (The socket may see more reordering: under
    # TCG a stalled vCPU holds its backlog queue; that happens after ESP and is not loss.)
    assert esp_displacement <= suite.replay_window
    assert 'XfrmInStateSeqError' not in drops[1] and not drops[0] and not drops[1]
    assert {p.spi for p in esp} == used and len(used) == switches + 1  # every switch moved it


def reordering(packets) -> tuple[int, int]:
    """ESP packets that arrived after a higher sequence number of the same SA, and how far."""
    highest: dict[int, int] = {}
    late = worst = 0
    for p in packets:
        top = highest.get(p.spi, 0)
        if p.seq < top:
            late, worst = late + 1, max(worst, top - p.seq)
        highest[p.spi] = max(top, p.seq)
    return late, worst


async def test_fail_closed_without_sa_sends_nothing_in_plaintext(tmp_path):
    with veth_pair() as pair:
        left = Node(pair.left, ipaddress.ip_address(pair.left_ip), NetlinkKernel(pair.left))
        right_ip = ipaddress.ip_address(pair.right_ip)
        _, out = policies(left, Node(pair.right, right_ip, left.kernel), SUITES[0])
        block = Policy(Selector(ANY, ANY), Dir.OUT, action=Action.BLOCK, priority=0x6B69FFFF)
        try:
            await left.kernel.add_policy(out)
            await left.kernel.add_policy(block)
            async with left.kernel.events() as events:
                with capture(pair.right, pair.right_if, tmp_path / 'wire.pcap', 'ip') as cap:
                    assert not pair.ping(pair.left, pair.right_ip, count=3, wait=1)
                    assert not pair.ping(pair.left, '192.0.2.3', count=1, wait=1)  # blocked
                    event = await asyncio.wait_for(anext(events), 30)
        finally:
            await left.kernel.close()
    assert cap.text().strip() == '', 'plaintext left the node'
    assert isinstance(event, Acquire) and event.template.reqid == REQID
    assert event.template.dst == right_ip


async def test_soft_then_hard_expire_events_arrive():
    with veth_pair() as pair:
        kernel = NetlinkKernel(pair.left)
        left, right = ipaddress.ip_address(pair.left_ip), ipaddress.ip_address(pair.right_ip)
        sa = dataclasses.replace(SUITES[0].sa(left, right, 0xD0000100),
                                 lifetime=Lifetime(soft_seconds=1, hard_seconds=3))
        try:
            async with kernel.events() as events:
                await kernel.add_sa(sa)
                soft = await asyncio.wait_for(anext(events), 30)
                hard = await asyncio.wait_for(anext(events), 30)
            remaining = await kernel.dump_sas()
        finally:
            await kernel.close()
    assert soft == Expire(sa.id, REQID, hard=False)
    assert hard == Expire(sa.id, REQID, hard=True)
    assert remaining == []
