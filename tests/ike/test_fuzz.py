"""We test these aspects of robustness with hypothesis:

- random bytes on either port never raise out of ``receive_datagram``;
- mutated copies of every datagram of a real session (INIT, AUTH, rekeys, deletes) never raise;
- mutated *plaintext* inside correctly encrypted SK payloads (so the parser and the task
  manager, not just the ICV check, see the damage) never raise;
- every datagram is accounted for exactly once: ``received == accepted + sum(dropped)``, and
  no drop is an ``internal_error`` (a bug caught by the safety net).
"""

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kube_ipsec.ike import message
from kube_ipsec.ike.constants import PayloadType
from kube_ipsec.ike.engine import Engine
from tests.ike.harness import Pair

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def session() -> tuple[Pair, list[tuple[str, bytes]]]:
    """An established pair plus every datagram a busy session sent."""
    pair = Pair()
    ike_sa = pair.connect()
    child = pair.a.children()[0]
    pair.a.engine.rekey_child(child, pair.now)
    pair.pump()
    pair.b.engine.rekey_ike(pair.b.engine.snapshot()[0].ike_sa, pair.now)
    pair.pump()
    pair.a.engine.dpd(pair.a.engine.snapshot()[0].ike_sa, pair.now)
    pair.pump()
    assert ike_sa
    return pair, [(name, data) for name, data, _, _ in pair.sent]


PAIR, CORPUS = session()


def accounted(engine: Engine) -> None:
    stats = engine.stats
    assert stats.received == stats.accepted + sum(stats.dropped.values())
    assert stats.dropped["internal_error"] == 0


def mutate(data: bytes, ops: list[tuple[int, int, int]]) -> bytes:
    buf = bytearray(data)
    for kind, pos, value in ops:
        if not buf:
            break
        pos %= len(buf)
        if kind == 0:
            buf[pos] ^= 1 << (value % 8)
        elif kind == 1:
            buf[pos] = value % 256
        elif kind == 2:
            del buf[pos:]
        elif kind == 3:
            buf[pos:pos] = bytes([value % 256]) * (1 + value % 7)
        else:  # keep lengths consistent so deeper parsers are reached
            buf[pos] = value % 256
            if len(buf) >= 28:
                struct.pack_into("!I", buf, 24, len(buf))
    return bytes(buf)


OPS = st.lists(st.tuples(st.integers(0, 4), st.integers(0, 2**16), st.integers(0, 2**16)),
               min_size=1, max_size=6)


@FUZZ
@given(data=st.binary(max_size=600), port=st.sampled_from([500, 4500]))
def test_random_bytes_never_raise_and_are_counted(data, port):
    engine = PAIR.b.engine
    engine.receive_datagram(data, ("192.0.2.1", port), ("192.0.2.2", port), PAIR.now)
    engine.datagrams_to_send()
    accounted(engine)


@FUZZ
@given(index=st.integers(0, len(CORPUS) - 1), ops=OPS)
def test_mutated_session_datagrams_never_raise(index, ops):
    name, data = CORPUS[index]
    node = PAIR.b if name == "node-a" else PAIR.a
    data = mutate(data, ops)
    src = ("192.0.2.1" if name == "node-a" else "192.0.2.2", 500)
    node.engine.receive_datagram(data, src, (node.host, 500), PAIR.now)
    node.engine.datagrams_to_send()
    while node.engine.next_event():
        pass
    accounted(node.engine)


@FUZZ
@given(inner=st.binary(max_size=300), first=st.sampled_from(
    [0, 33, 34, 35, 36, 39, 40, 41, 42, 44, 45, 47, 48, 99]), exchange=st.sampled_from(
    [34, 35, 36, 37]), response=st.booleans(), mid_delta=st.integers(-1, 1))
def test_mutated_plaintext_inside_valid_encryption_never_raises(inner, first, exchange,
                                                                response, mid_delta):
    pair = Pair()
    ike_sa = pair.connect()
    sa_a = pair.a.engine._by_id[ike_sa]
    mid = max(0, sa_a.mgr.mid_out + mid_delta)
    flags = 0x08 | (0x20 if response else 0)
    length = 28 + 4 + 8 + len(inner) + 1 + 16
    header = struct.pack("!8s8sBBBBII", sa_a.spi_i, sa_a.spi_r, PayloadType.SK, 0x20, exchange,
                         flags, mid, length)
    sk = struct.pack("!BBH", first, 0, length - 28)
    assert sa_a.cipher_out is not None
    data = header + sk + sa_a.cipher_out.seal(header + sk, inner + b"\x00")
    message.parse_header(data)
    pair.b.engine.receive_datagram(data, ("192.0.2.1", 500), ("192.0.2.2", 500), pair.now)
    pair.pump()
    pair.advance(200)
    for node in pair.nodes():
        accounted(node.engine)
