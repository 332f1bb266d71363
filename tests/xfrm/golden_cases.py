"""Each golden case: an ``ip xfrm`` command and the same operation through kube_ipsec.xfrm.

``golden_capture.py`` records what iproute2 sends for ``ip``; ``test_golden.py`` checks that
``build()`` encodes to the very same bytes. Keys are fixed test patterns, not secrets.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field

from kube_ipsec.xfrm import codec
from kube_ipsec.xfrm.model import (
    SA,
    Action,
    Algorithm,
    Dir,
    Encap,
    Lifetime,
    Mark,
    Mode,
    Policy,
    Proto,
    SaId,
    Selector,
    Template,
)

A, B = ipaddress.ip_address('10.0.0.1'), ipaddress.ip_address('10.0.0.2')
A6, B6 = ipaddress.ip_address('fd00::1'), ipaddress.ip_address('fd00::2')
REQID = 0x6B690007
KEY20 = bytes(range(1, 21))
KEY36 = bytes(range(1, 37))
KEY32 = bytes(range(0x40, 0x60))


def hexkey(key: bytes) -> str:
    return '0x' + key.hex()


@dataclass(frozen=True)
class Case:
    name: str
    ip: str
    build: Callable[[], codec.Request]
    setup: list[str] = field(default_factory=list)


SEL_AB = Selector.hosts(A, B)
TMPL_AB = Template(A, B, REQID, spi=0xD0000001)
POLICY_OUT = Policy(SEL_AB, Dir.OUT, (TMPL_AB,), priority=0x6B690100)
GCM128 = SA(A, B, 0xD0000001, REQID, aead=Algorithm.aes_gcm(KEY20), replay_window=32)
GCM256_TUNNEL_ESN = SA(
    A, B, 0xD0000002, REQID, mode=Mode.TUNNEL, aead=Algorithm.aes_gcm(KEY36),
    replay_window=1024, esn=True, mark=Mark(0x100, 0xFF00),
)
CHACHA_NATT = SA(
    A, B, 0xD0000003, REQID, aead=Algorithm.chacha20_poly1305(KEY36),
    replay_window=64, encap=Encap(4500, 4500),
    lifetime=Lifetime(1000000, 2000000, 1000, 2000, 3000, 3600),
)
AH96 = SA(A, B, 0xD0000004, REQID, proto=Proto.AH, auth=Algorithm.hmac_sha256(KEY32, 96))

def policy_in_tunnel_mark() -> Policy:
    return Policy(
        Selector(ipaddress.ip_network('10.1.0.0/16'), ipaddress.ip_network('10.2.0.0/16')),
        Dir.IN, (Template(B, A, REQID, mode=Mode.TUNNEL),), priority=0x6B690200,
        mark=Mark(5, 0xF),
    )


def policy_fwd_v6() -> Policy:
    return Policy(
        Selector.hosts(A6, B6, proto=17, dport=4789), Dir.FWD,
        (Template(A6, B6, REQID),), priority=0x6B690300,
    )


def policy_block() -> Policy:
    return Policy(
        Selector(ipaddress.ip_network('0.0.0.0/0'), ipaddress.ip_network('0.0.0.0/0')),
        Dir.OUT, action=Action.BLOCK, priority=0x6B69FFFF,
    )


CASES: list[Case] = [
    Case(
        'newsa_gcm128_transport',
        f'state add src {A} dst {B} proto esp spi 0xd0000001 reqid {REQID} mode transport'
        f' replay-window 32 aead rfc4106(gcm(aes)) {hexkey(KEY20)} 128',
        lambda: codec.newsa(GCM128),
    ),
    Case(
        'updsa_gcm128_transport',
        f'state update src {A} dst {B} proto esp spi 0xd0000001 reqid {REQID} mode transport'
        f' replay-window 32 aead rfc4106(gcm(aes)) {hexkey(KEY20)} 128',
        lambda: codec.newsa(GCM128, update=True),
    ),
    Case(
        'newsa_gcm256_tunnel_esn_mark',
        f'state add src {A} dst {B} proto esp spi 0xd0000002 reqid {REQID} mode tunnel'
        f' replay-window 1024 flag esn mark 0x100 mask 0xff00'
        f' aead rfc4106(gcm(aes)) {hexkey(KEY36)} 128',
        lambda: codec.newsa(GCM256_TUNNEL_ESN),
    ),
    Case(
        'newsa_chacha20_encap_lifetimes',
        f'state add src {A} dst {B} proto esp spi 0xd0000003 reqid {REQID} mode transport'
        f' replay-window 64 aead rfc7539esp(chacha20,poly1305) {hexkey(KEY36)} 128'
        f' encap espinudp 4500 4500 0.0.0.0'
        f' limit byte-soft 1000000 limit byte-hard 2000000'
        f' limit packet-soft 1000 limit packet-hard 2000'
        f' limit time-soft 3000 limit time-hard 3600',
        lambda: codec.newsa(CHACHA_NATT),
    ),
    Case(
        'newsa_ah_sha256_96',
        f'state add src {A} dst {B} proto ah spi 0xd0000004 reqid {REQID} mode transport'
        f' replay-window 32 auth-trunc hmac(sha256) {hexkey(KEY32)} 96',
        lambda: codec.newsa(AH96),
    ),
    Case(
        'newsa_ah_sha256_128_v6',
        f'state add src {A6} dst {B6} proto ah spi 0xd0000005 reqid {REQID} mode transport'
        f' replay-window 32 auth-trunc hmac(sha256) {hexkey(KEY32)} 128',
        lambda: codec.newsa(SA(
            A6, B6, 0xD0000005, REQID, proto=Proto.AH,
            auth=Algorithm.hmac_sha256(KEY32, 128),
        )),
    ),
    Case(
        'delsa',
        f'state delete src {A} dst {B} proto esp spi 0xd0000001',
        lambda: codec.delsa(SaId(B, 0xD0000001, src=A)),
    ),
    Case(
        'delsa_mark',
        f'state delete src {A} dst {B} proto esp spi 0xd0000001 mark 0x100 mask 0xff00',
        lambda: codec.delsa(SaId(B, 0xD0000001, mark=Mark(0x100, 0xFF00), src=A)),
    ),
    Case(
        'getsa',
        f'state get src {A} dst {B} proto esp spi 0xd0000001',
        lambda: codec.getsa(SaId(B, 0xD0000001, src=A)),
    ),
    Case('dumpsa', 'state list', lambda: codec.dump_sas()),
    Case(
        'allocspi',
        f'state allocspi src {A} dst {B} proto esp reqid {REQID} mode transport'
        f' min 0xd0000000 max 0xdfffffff',
        lambda: codec.allocspi(A, B, Proto.ESP, REQID, Mode.TRANSPORT, 0xD0000000, 0xDFFFFFFF),
    ),
    Case(
        'newpolicy_out_tmpl_spi',
        f'policy add src {A}/32 dst {B}/32 dir out priority {0x6B690100}'
        f' tmpl src {A} dst {B} proto esp spi 0xd0000001 reqid {REQID} mode transport',
        lambda: codec.newpolicy(POLICY_OUT),
    ),
    Case(
        'updpolicy_out_tmpl_spi',
        f'policy update src {A}/32 dst {B}/32 dir out priority {0x6B690100}'
        f' tmpl src {A} dst {B} proto esp spi 0xd0000001 reqid {REQID} mode transport',
        lambda: codec.newpolicy(POLICY_OUT, update=True),
    ),
    Case(
        'newpolicy_in_tunnel_mark',
        f'policy add src 10.1.0.0/16 dst 10.2.0.0/16 dir in priority {0x6B690200}'
        f' mark 0x5 mask 0xf'
        f' tmpl src {B} dst {A} proto esp reqid {REQID} mode tunnel',
        lambda: codec.newpolicy(policy_in_tunnel_mark()),
    ),
    Case(
        'newpolicy_fwd_udp_port_v6',
        f'policy add src {A6}/128 dst {B6}/128 proto udp dport 4789 dir fwd'
        f' priority {0x6B690300} tmpl src {A6} dst {B6} proto esp reqid {REQID} mode transport',
        lambda: codec.newpolicy(policy_fwd_v6()),
    ),
    Case(
        'newpolicy_block',
        f'policy add src 0.0.0.0/0 dst 0.0.0.0/0 dir out action block priority {0x6B69FFFF}',
        lambda: codec.newpolicy(policy_block()),
    ),
    Case(
        'delpolicy',
        f'policy delete src {A}/32 dst {B}/32 dir out',
        lambda: codec.delpolicy(POLICY_OUT.id),
    ),
    Case(
        'delpolicy_mark',
        f'policy delete src {A}/32 dst {B}/32 dir out mark 0x5 mask 0xf',
        lambda: codec.delpolicy(Policy(SEL_AB, Dir.OUT, mark=Mark(5, 0xF)).id),
    ),
    Case('dumppolicy', 'policy list', lambda: codec.dump_policies()),
]

# kernel replies, for the decoding tests: (setup commands, traced command). REPLIES come from
# the host kernel (no ESP), VM_REPLIES from the test VM's kernel (SAs install there).
VM_REPLIES: dict[str, tuple[list[str], str]] = {
    'sa_dump': ([CASES[0].ip, CASES[2].ip, CASES[3].ip, CASES[4].ip], 'state list'),
}
REPLIES: dict[str, tuple[list[str], str]] = {
    'policy_dump': (
        [CASES[11].ip, CASES[13].ip, CASES[14].ip, CASES[15].ip],
        'policy list',
    ),
    'allocspi': ([], CASES[10].ip),
    'delsa_missing': ([], CASES[6].ip),
    'newsa_no_esp': ([], CASES[0].ip),
}
