"""Typed objects <-> XFRM netlink messages, without any socket.

Requests are encoded the way iproute2 encodes the same ``ip xfrm`` command, byte for byte
(``tests/xfrm/test_golden.py`` holds us to it): the same flags, the same attribute order, the
same conventions (infinite byte/packet limits, a zero SA selector the kernel fills in, a replay
window above 32 or ESN carried in ``XFRMA_REPLAY_ESN_VAL``). iproute2 is what kernel developers
test against, so matching it keeps us on the paths the kernel is known to accept.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

from pyroute2.netlink import NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, nlmsg

from kube_ipsec.xfrm import constants as c
from kube_ipsec.xfrm import msgs
from kube_ipsec.xfrm.model import (
    SA,
    Acquire,
    Action,
    Address,
    AlgKind,
    Algorithm,
    Dir,
    Encap,
    Expire,
    Lifetime,
    Mark,
    Mode,
    Policy,
    PolicyId,
    Proto,
    SaCounters,
    SaId,
    Selector,
    Template,
)

INF = c.XFRM_INF
ANY_ALGO = 0xFFFFFFFF
FLAGS_ACK = NLM_F_REQUEST | NLM_F_ACK
FLAGS_DUMP = NLM_F_REQUEST | NLM_F_DUMP


@dataclass
class Request:
    """One netlink request: a message object, its type and flags (seq/pid are the socket's)."""

    msg: nlmsg
    type: int
    flags: int

    def encode(self, seq: int = 0, pid: int = 0) -> bytes:
        self.msg['header'].update(type=self.type, flags=self.flags, sequence_number=seq, pid=pid)
        self.msg.encode()
        return bytes(self.msg.data)


# -- addresses and selectors ------------------------------------------------------------------


def family_of(addr: Address) -> int:
    return socket.AF_INET if addr.version == 4 else socket.AF_INET6


def unpack_address(raw: bytes, family: int) -> Address:
    if family == socket.AF_INET6:
        return ipaddress.IPv6Address(raw[:16])
    return ipaddress.IPv4Address(raw[:4])


def selector_dict(sel: Selector | None) -> dict[str, Any]:
    if sel is None:
        return {}
    return {
        'daddr': sel.dst.network_address.packed,
        'saddr': sel.src.network_address.packed,
        'dport': sel.dport,
        'dport_mask': 0xFFFF if sel.dport else 0,
        'sport': sel.sport,
        'sport_mask': 0xFFFF if sel.sport else 0,
        'family': socket.AF_INET if sel.src.version == 4 else socket.AF_INET6,
        'prefixlen_d': sel.dst.prefixlen,
        'prefixlen_s': sel.src.prefixlen,
        'proto': sel.proto,
    }


def decode_selector(sel: dict[str, Any], family: int = socket.AF_INET) -> Selector:
    fam = sel['family'] or family
    src = unpack_address(sel['saddr'], fam)
    dst = unpack_address(sel['daddr'], fam)
    return Selector(
        ipaddress.ip_network((src, sel['prefixlen_s'])),
        ipaddress.ip_network((dst, sel['prefixlen_d'])),
        proto=sel['proto'],
        sport=sel['sport'],
        dport=sel['dport'],
    )


def lifetime_dict(lft: Lifetime) -> dict[str, int]:
    def limit(v: int | None) -> int:
        return INF if v is None else v

    return {
        'soft_byte_limit': limit(lft.soft_bytes),
        'hard_byte_limit': limit(lft.hard_bytes),
        'soft_packet_limit': limit(lft.soft_packets),
        'hard_packet_limit': limit(lft.hard_packets),
        'soft_add_expires_seconds': lft.soft_seconds or 0,
        'hard_add_expires_seconds': lft.hard_seconds or 0,
    }


def decode_lifetime(lft: dict[str, int]) -> Lifetime:
    def limit(v: int) -> int | None:
        return None if v in (INF, 0) else v

    return Lifetime(
        limit(lft['soft_byte_limit']),
        limit(lft['hard_byte_limit']),
        limit(lft['soft_packet_limit']),
        limit(lft['hard_packet_limit']),
        limit(lft['soft_add_expires_seconds']),
        limit(lft['hard_add_expires_seconds']),
    )


def mark_attr(mark: Mark | None) -> list[tuple[str, Any]]:
    return [] if mark is None else [('XFRMA_MARK', {'v': mark.value, 'm': mark.mask})]


def decode_mark(msg: nlmsg) -> Mark | None:
    m = msg.get_attr('XFRMA_MARK')
    return None if m is None else Mark(m['v'], m['m'])


# -- SAs ----------------------------------------------------------------------------------------


def uses_esn_attr(sa: SA) -> bool:
    return sa.esn or sa.replay_window > 32


def sa_info(sa: SA) -> dict[str, Any]:
    return {
        'sel': selector_dict(sa.selector),
        'id': {'daddr': sa.dst.packed, 'spi': sa.spi, 'proto': sa.proto},
        'saddr': sa.src.packed,
        'lft': lifetime_dict(sa.lifetime),
        'reqid': sa.reqid,
        'family': family_of(sa.dst),
        'mode': sa.mode,
        'replay_window': 0 if uses_esn_attr(sa) else sa.replay_window,
        'flags': c.XFRM_STATE_ESN if sa.esn else 0,
    }


def alg_attr(alg: Algorithm) -> tuple[str, dict[str, Any]]:
    value = {'alg_name': alg.name, 'alg_key_len': len(alg.key) * 8, 'alg_key': alg.key}
    if alg.kind is AlgKind.AEAD:
        return 'XFRMA_ALG_AEAD', {**value, 'alg_icv_len': alg.bits}
    return 'XFRMA_ALG_AUTH_TRUNC', {**value, 'alg_trunc_len': alg.bits}


def newsa(sa: SA, update: bool = False) -> Request:
    """NEWSA (or UPDSA, which completes a larval SA from ALLOCSPI)."""
    msg = msgs.xfrm_usersa_info()
    msg.update(sa_info(sa))
    attrs: list[tuple[str, Any]] = [alg_attr(a) for a in (sa.aead, sa.auth) if a is not None]
    if sa.encap is not None:
        attrs.append(('XFRMA_ENCAP', {
            'encap_type': c.UDP_ENCAP_ESPINUDP,
            'encap_sport': sa.encap.sport,
            'encap_dport': sa.encap.dport,
        }))
    if uses_esn_attr(sa):
        attrs.append(('XFRMA_REPLAY_ESN_VAL', {
            'bmp_len': (sa.replay_window + 31) // 32,
            'replay_window': sa.replay_window,
        }))
    attrs += mark_attr(sa.mark)
    msg['attrs'] = attrs
    return Request(msg, c.XFRM_MSG_UPDSA if update else c.XFRM_MSG_NEWSA, FLAGS_ACK)


def _sa_id(sa: SaId, msg_type: int, flags: int) -> Request:
    msg = msgs.xfrm_usersa_id()
    msg.update(daddr=sa.dst.packed, spi=sa.spi, family=family_of(sa.dst), proto=sa.proto)
    attrs: list[tuple[str, Any]] = []
    if sa.src is not None:
        attrs.append(('XFRMA_SRCADDR', sa.src.packed))
    msg['attrs'] = attrs + mark_attr(sa.mark)
    return Request(msg, msg_type, flags)


def delsa(sa: SaId) -> Request:
    return _sa_id(sa, c.XFRM_MSG_DELSA, FLAGS_ACK)


def getsa(sa: SaId) -> Request:
    return _sa_id(sa, c.XFRM_MSG_GETSA, NLM_F_REQUEST)


def dump_sas() -> Request:
    msg = msgs.xfrm_dump()
    msg['attrs'] = [('XFRMA_ADDRESS_FILTER', {})]
    return Request(msg, c.XFRM_MSG_GETSA, FLAGS_DUMP)


def allocspi(
    src: Address, dst: Address, proto: Proto, reqid: int, mode: Mode, lo: int, hi: int,
    mark: Mark | None = None,
) -> Request:
    """ALLOCSPI: the kernel creates a larval SA with a free SPI in [lo, hi] and returns it."""
    msg = msgs.xfrm_userspi_info()
    msg.update(
        id={'daddr': dst.packed, 'proto': proto},
        saddr=src.packed,
        reqid=reqid,
        family=family_of(dst),
        mode=mode,
        min=lo,
        max=hi,
    )
    msg['attrs'] = mark_attr(mark)
    return Request(msg, c.XFRM_MSG_ALLOCSPI, NLM_F_REQUEST)


def decode_sa(msg: nlmsg) -> SA:
    family = msg['family']
    aead = auth = None
    if (a := msg.get_attr('XFRMA_ALG_AEAD')) is not None:
        aead = Algorithm(AlgKind.AEAD, _name(a), a['alg_key'], a['alg_icv_len'])
    if (a := msg.get_attr('XFRMA_ALG_AUTH_TRUNC')) is not None:
        auth = Algorithm(AlgKind.AUTH, _name(a), a['alg_key'], a['alg_trunc_len'])
    esn = msg.get_attr('XFRMA_REPLAY_ESN_VAL')
    replay = esn if esn is not None else msg.get_attr('XFRMA_REPLAY_VAL') or {}
    encap = msg.get_attr('XFRMA_ENCAP')
    curlft, stats = msg['curlft'], msg['stats']
    return SA(
        src=unpack_address(msg['saddr'], family),
        dst=unpack_address(msg['id']['daddr'], family),
        spi=msg['id']['spi'],
        reqid=msg['reqid'],
        proto=Proto(msg['id']['proto']),
        mode=Mode(msg['mode']),
        aead=aead,
        auth=auth,
        replay_window=esn['replay_window'] if esn is not None else msg['replay_window'],
        esn=bool(msg['flags'] & c.XFRM_STATE_ESN),
        mark=decode_mark(msg),
        encap=None if encap is None else Encap(encap['encap_sport'], encap['encap_dport']),
        lifetime=decode_lifetime(msg['lft']),
        selector=_sa_selector(msg),
        counters=SaCounters(
            bytes=curlft['bytes'],
            packets=curlft['packets'],
            add_time=curlft['add_time'],
            use_time=curlft['use_time'],
            replay_window=stats['replay_window'],
            replay=stats['replay'],
            integrity_failed=stats['integrity_failed'],
            oseq=replay.get('oseq', 0) + (replay.get('oseq_hi', 0) << 32),
            seq=replay.get('seq', 0) + (replay.get('seq_hi', 0) << 32),
        ),
    )


def _sa_selector(msg: nlmsg) -> Selector | None:
    """The kernel gives a zero selector the SA's family; that still means 'no selector'."""
    sel = msg['sel']
    if not (sel['prefixlen_s'] or sel['prefixlen_d'] or sel['proto']):
        return None
    return decode_selector(sel, msg['family'])


def _name(alg: dict[str, Any]) -> str:
    return bytes(alg['alg_name']).rstrip(b'\0').decode()


# -- policies -----------------------------------------------------------------------------------


def template_dict(t: Template) -> dict[str, Any]:
    return {
        'id': {'daddr': t.dst.packed, 'spi': t.spi, 'proto': t.proto},
        'family': family_of(t.dst),
        'saddr': t.src.packed,
        'reqid': t.reqid,
        'mode': t.mode,
        'optional': int(t.optional),
        'aalgos': ANY_ALGO,
        'ealgos': ANY_ALGO,
        'calgos': ANY_ALGO,
    }


def decode_template(t: dict[str, Any]) -> Template:
    return Template(
        src=unpack_address(t['saddr'], t['family']),
        dst=unpack_address(t['id']['daddr'], t['family']),
        reqid=t['reqid'],
        proto=Proto(t['id']['proto']),
        mode=Mode(t['mode']),
        spi=t['id']['spi'],
        optional=bool(t['optional']),
    )


def policy_info(p: Policy) -> dict[str, Any]:
    return {
        'sel': selector_dict(p.selector),
        'lft': lifetime_dict(Lifetime()),
        'priority': p.priority,
        'dir': p.dir,
        'action': p.action,
    }


def newpolicy(p: Policy, update: bool = False) -> Request:
    """NEWPOLICY, or UPDPOLICY: replaces templates in place (the make-before-break switch)."""
    msg = msgs.xfrm_userpolicy_info()
    msg.update(policy_info(p))
    attrs: list[tuple[str, Any]] = []
    if p.templates:
        attrs.append(('XFRMA_TMPL', [template_dict(t) for t in p.templates]))
    msg['attrs'] = attrs + mark_attr(p.mark)
    return Request(msg, c.XFRM_MSG_UPDPOLICY if update else c.XFRM_MSG_NEWPOLICY, FLAGS_ACK)


def delpolicy(p: PolicyId) -> Request:
    msg = msgs.xfrm_userpolicy_id()
    msg.update(sel=selector_dict(p.selector), dir=p.dir)
    msg['attrs'] = mark_attr(p.mark)
    return Request(msg, c.XFRM_MSG_DELPOLICY, FLAGS_ACK)


def dump_policies() -> Request:
    return Request(msgs.xfrm_dump(), c.XFRM_MSG_GETPOLICY, FLAGS_DUMP)


def decode_policy(msg: nlmsg) -> Policy:
    return Policy(
        selector=decode_selector(msg['sel']),
        dir=Dir(msg['dir']),
        templates=tuple(decode_template(t) for t in msg.get_attr('XFRMA_TMPL') or ()),
        action=Action(msg['action']),
        priority=msg['priority'],
        mark=decode_mark(msg),
        index=msg['index'],
    )


def socket_policy(family: int, direction: Dir) -> bytes:
    """The ``xfrm_userpolicy_info`` for ``setsockopt(IP[V6]_XFRM_POLICY)``: allow, no template.

    A per-socket policy overrides the SPD for that socket, so IKE traffic on 500/4500 is never
    caught by our own policies (strongSwan's ``bypass_socket`` does the same).
    """
    data = bytearray()
    msgs.policy_info.encode_into(data, 0, {
        'sel': {'family': family},
        'dir': direction,
        'action': Action.ALLOW,
    })
    return bytes(data)


# -- events -------------------------------------------------------------------------------------


def decode_acquire(msg: nlmsg) -> Acquire:
    family = msg['policy']['sel']['family'] or msg['sel']['family']
    wanted = msg['id']
    tmpls = [decode_template(t) for t in msg.get_attr('XFRMA_TMPL') or ()]
    match = [t for t in tmpls if t.proto == wanted['proto']] or tmpls
    template = match[0] if match else Template(
        unpack_address(msg['saddr'], family),
        unpack_address(wanted['daddr'], family),
        reqid=0,
        proto=Proto(wanted['proto']),
        spi=wanted['spi'],
    )
    return Acquire(
        template=template,
        selector=decode_selector(msg['sel'], family),
        policy_dir=Dir(msg['policy']['dir']),
        policy_index=msg['policy']['index'],
        seq=msg['seq'],
    )


def decode_expire(msg: nlmsg) -> Expire:
    family = msg['family']
    sa = SaId(
        dst=unpack_address(msg['id']['daddr'], family),
        spi=msg['id']['spi'],
        proto=Proto(msg['id']['proto']),
        mark=decode_mark(msg),
        src=unpack_address(msg['saddr'], family),
    )
    return Expire(sa=sa, reqid=msg['reqid'], hard=bool(msg['hard']))
