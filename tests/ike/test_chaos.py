"""We test these aspects of the state machine under concurrency and a bad network (hypothesis):

- both peers fire random operations at the same time (child/IKE rekeys, reauthentication,
  DPD, child deletes, new Child SAs) while datagrams are reordered, duplicated or lost;
- after the network heals and the clock runs on, both ends agree: one IKE SA (same SPI pair)
  holding mirrored Child SAs with the same keys, none lost; nothing was dropped as an
  internal error, and no timer is left in the past.
"""

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kube_ipsec import ike
from tests.ike.harness import Node, Pair

OPS = st.lists(st.tuples(st.sampled_from(["a", "b"]),
                         st.sampled_from(["rekey_child", "rekey_ike", "dpd", "create_child",
                                          "delete_child", "reauthenticate"])),
               min_size=1, max_size=4)


def fire(pair: Pair, node: Node, op: str) -> None:
    engine = node.engine
    sas = [s for s in engine.snapshot() if s.state == "established"]
    if not sas:
        return
    sa = sas[0]
    if op == "rekey_ike":
        engine.rekey_ike(sa.ike_sa, pair.now)
    elif op == "reauthenticate":
        engine.reauthenticate(sa.ike_sa, pair.now)
    elif op == "dpd":
        engine.dpd(sa.ike_sa, pair.now)
    elif op == "create_child":
        engine.create_child(sa.ike_sa, pair.now)
    elif sa.children and op == "rekey_child":
        engine.rekey_child(sa.children[0].spi_in, pair.now)
    elif sa.children and op == "delete_child" and len(sa.children) > 1:
        engine.delete_child(sa.children[-1].spi_in, pair.now)


def keys(node: Node) -> dict[int, tuple[int, bytes, bytes]]:
    """Live Child SAs as the shell knows them: spi_in -> (spi_out, key_in, key_out)."""
    live: dict[int, ike.ChildSa] = {}
    for e in node.events:
        if isinstance(e, ike.ChildSaEstablished):
            live[e.child.spi_in] = e.child
        elif isinstance(e, ike.ChildSaRekeyed):
            live[e.new.spi_in] = e.new
        elif isinstance(e, ike.ChildSaDeleted):
            live.pop(e.child.spi_in, None)
    return {c.spi_in: (c.spi_out, c.inbound.key, c.outbound.key) for c in live.values()}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS, seed=st.integers(0, 2**32 - 1), loss=st.sampled_from([0.0, 0.0, 0.2]),
       dup=st.booleans())
def test_concurrent_operations_on_a_bad_network_converge(ops, seed, loss, dup):
    pair = Pair(a_peer={"dpd_delay": 0}, b_peer={"dpd_delay": 0})
    pair.connect()
    rng = random.Random(seed)
    pair.reorder = rng
    pair.drop = lambda *_: rng.random() < loss
    pair.duplicate = lambda *_: dup and rng.random() < 0.3
    for who, op in ops:
        fire(pair, pair.a if who == "a" else pair.b, op)
    pair.pump()
    pair.drop = lambda *_: False
    pair.duplicate = lambda *_: False
    pair.advance(120)
    for node in pair.nodes():
        assert node.engine.stats.dropped["internal_error"] == 0
    sas_a = {(s.local_spi, s.remote_spi): s for s in pair.a.engine.snapshot()
             if s.state == "established"}
    sas_b = {(s.remote_spi, s.local_spi): s for s in pair.b.engine.snapshot()
             if s.state == "established"}
    assert sas_a.keys() == sas_b.keys()
    assert len(sas_a) == 1  # rekeys replace, they never duplicate or lose the IKE SA
    assert sas_a and all(s.children for s in sas_a.values())  # nor the Child SAs
    for key, sa in sas_a.items():
        mirror = {(c.spi_out, c.spi_in) for c in sas_b[key].children}
        assert {(c.spi_in, c.spi_out) for c in sa.children} == mirror
    ka, kb = keys(pair.a), keys(pair.b)
    assert set(ka) == {c.spi_in for s in sas_a.values() for c in s.children}
    for spi_in, (spi_out, key_in, key_out) in ka.items():
        assert kb[spi_out] == (spi_in, key_out, key_in)
