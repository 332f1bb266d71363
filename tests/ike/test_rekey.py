"""We test these aspects of rekeying and deleting (charon's test_child_rekey/test_ike_rekey):

- a Child SA rekey: the initiator switches its outbound SA at once and deletes the old SA; the
  responder activates its new outbound SA only on that DELETE (make-before-break);
- the soft lifetime timer triggers the rekey by itself;
- simultaneous Child SA rekeys: each side ends with exactly one, identical, SA, and the SA made
  by the exchange holding the lowest nonce is the one that went away;
- IKE SA rekey: the Child SAs move to the new IKE SA, whose message IDs restart at 0;
- simultaneous IKE rekeys end with one IKE SA on both sides;
- TEMPORARY_FAILURE and CHILD_SA_NOT_FOUND answers;
- deleting a Child SA and an IKE SA, from either side.
"""

from kube_ipsec import ike
from kube_ipsec.ike.config import ChildConfig
from tests.ike.harness import Pair
from tests.ike.test_establish import assert_mirrored


def established() -> tuple[Pair, int, ike.ChildSa]:
    pair = Pair()
    ike_sa = pair.connect()
    return pair, ike_sa, pair.a.of(ike.ChildSaEstablished)[0].child


def test_child_rekey_is_make_before_break():
    pair, _, old = established()
    pair.a.engine.rekey_child(old.spi_in, pair.now)
    pair.pump()
    a_kinds = [type(e).__name__ for e in pair.a.events[2:]]
    b_kinds = [type(e).__name__ for e in pair.b.events[2:]]
    assert a_kinds == ["ChildSaRekeyed", "ChildSaDeleted"]
    assert b_kinds == ["ChildSaRekeyed", "ChildSaOutboundActivated", "ChildSaDeleted"]
    [ra], [rb] = pair.a.of(ike.ChildSaRekeyed), pair.b.of(ike.ChildSaRekeyed)
    assert ra.outbound_active and not rb.outbound_active
    assert ra.old == old and rb.old.spi_in == old.spi_out
    assert_mirrored(ra.new, rb.new)
    assert pair.b.of(ike.ChildSaOutboundActivated)[0].child == rb.new
    assert [e.reason for e in pair.a.of(ike.ChildSaDeleted)] == [ike.Reason.REKEYED]
    assert [e.reason for e in pair.b.of(ike.ChildSaDeleted)] == [ike.Reason.REKEYED]
    assert pair.a.children() == [ra.new.spi_in] and pair.b.children() == [rb.new.spi_in]
    assert pair.a.engine.stats.rekeys["child"] == 1


def test_soft_lifetime_triggers_the_child_rekey():
    child = ChildConfig(rekey_time=60, life_time=90, rand_time=5)
    pair = Pair(a_peer={"child": child, "dpd_delay": 0},
                b_peer={"child": ChildConfig(rekey_time=0), "dpd_delay": 0})
    pair.connect()
    pair.advance(61)
    assert len(pair.a.of(ike.ChildSaRekeyed)) == 1
    pair.advance(60)
    assert len(pair.a.of(ike.ChildSaRekeyed)) == 2
    assert len(pair.a.children()) == len(pair.b.children()) == 1


def test_simultaneous_child_rekey_keeps_exactly_one_sa_by_the_lowest_nonce_rule():
    pair, _, old = established()
    b_old = pair.b.of(ike.ChildSaEstablished)[0].child
    pair.a.engine.rekey_child(old.spi_in, pair.now)
    pair.b.engine.rekey_child(b_old.spi_in, pair.now)
    pair.pump()
    [sa_a], [sa_b] = pair.a.engine.snapshot(), pair.b.engine.snapshot()
    assert len(sa_a.children) == len(sa_b.children) == 1
    ca, cb = sa_a.children[0], sa_b.children[0]
    assert (ca.spi_in, ca.spi_out) == (cb.spi_out, cb.spi_in)
    assert old.spi_in not in pair.a.children()
    lost = [n.engine.stats.failures["child_rekey_collision_lost"] for n in pair.nodes()]
    assert sorted(lost) == [0, 1]
    loser, winner = (pair.a, pair.b) if lost[0] else (pair.b, pair.a)
    # the winner's own rekey survives; the loser's new SA was never used outbound
    win = [e for e in winner.of(ike.ChildSaRekeyed) if e.outbound_active]
    assert [e.new.spi_in for e in win] == winner.children()
    assert not [e for e in loser.of(ike.ChildSaRekeyed) if e.outbound_active]
    assert [e.child.spi_in for e in loser.of(ike.ChildSaOutboundActivated)] == loser.children()
    keys = {n.name: n.of(ike.ChildSaRekeyed) for n in pair.nodes()}
    final_a = next(e.new for e in keys["node-a"] if e.new.spi_in == ca.spi_in)
    final_b = next(e.new for e in keys["node-b"] if e.new.spi_in == cb.spi_in)
    assert_mirrored(final_a, final_b)


def test_collision_nonces_decide_the_loser():
    from kube_ipsec.ike.tasks.child_rekey import lost_collision

    class Ex:
        def __init__(self, ni: bytes, nr: bytes) -> None:
            self.ni, self.nr = ni, nr

    assert lost_collision(Ex(b"\x01", b"\x09"), Ex(b"\x05", b"\x06"))  # type: ignore[arg-type]
    assert not lost_collision(Ex(b"\x07", b"\x09"), Ex(b"\x05", b"\x02"))  # type: ignore[arg-type]


def test_ike_rekey_moves_children_and_restarts_message_ids():
    pair, old_ike, child = established()
    pair.a.engine.rekey_ike(old_ike, pair.now)
    pair.pump()
    [ra], [rb] = pair.a.of(ike.IkeSaRekeyed), pair.b.of(ike.IkeSaRekeyed)
    assert ra.old_ike_sa == old_ike and (ra.local_spi, ra.remote_spi) == (rb.remote_spi,
                                                                          rb.local_spi)
    assert [e.reason for e in pair.a.of(ike.IkeSaDeleted)] == [ike.Reason.REKEYED]
    assert [e.reason for e in pair.b.of(ike.IkeSaDeleted)] == [ike.Reason.REKEYED]
    assert not pair.a.of(ike.ChildSaDeleted) and not pair.b.of(ike.ChildSaDeleted)
    [sa_a] = pair.a.engine.snapshot()
    assert sa_a.ike_sa == ra.new_ike_sa and [c.spi_in for c in sa_a.children] == [child.spi_in]
    assert sa_a.local_spi == ra.local_spi.hex()
    pair.a.engine.dpd(ra.new_ike_sa, pair.now)  # message ID 0 on the new SA
    pair.pump()
    pair.b.engine.rekey_child(pair.b.children()[0], pair.now)  # the child lives on the new SA
    pair.pump()
    assert len(pair.b.of(ike.ChildSaRekeyed)) == 1
    assert pair.a.engine.stats.rekeys["ike"] == 1
    assert not pair.a.engine.stats.dropped and not pair.b.engine.stats.dropped


def test_simultaneous_ike_rekey_ends_with_one_ike_sa_each():
    pair, old_ike, child = established()
    b_ike = pair.b.of(ike.IkeSaEstablished)[0].ike_sa
    pair.a.engine.rekey_ike(old_ike, pair.now)
    pair.b.engine.rekey_ike(b_ike, pair.now)
    pair.pump()
    sas_a, sas_b = pair.a.engine.snapshot(), pair.b.engine.snapshot()
    assert len(sas_a) == len(sas_b) == 1
    assert (sas_a[0].local_spi, sas_a[0].remote_spi) == (sas_b[0].remote_spi,
                                                         sas_b[0].local_spi)
    assert pair.a.children() == [child.spi_in]
    lost = [n.engine.stats.failures["ike_rekey_collision_lost"] for n in pair.nodes()]
    assert sorted(lost) == [0, 1]
    for node in pair.nodes():  # the shell heard of exactly one successor, the survivor
        [rekeyed] = node.of(ike.IkeSaRekeyed)
        assert rekeyed.new_ike_sa == node.engine.snapshot()[0].ike_sa
    pair.a.engine.dpd(sas_a[0].ike_sa, pair.now)
    pair.pump()
    assert not pair.a.engine.stats.dropped and not pair.b.engine.stats.dropped


def test_rekey_of_an_unknown_child_gets_child_sa_not_found():
    pair, _, old = established()
    b_sa = pair.b.engine._child(old.spi_out)[0]  # the peer forgets the SA without telling
    b_sa.children.clear()
    pair.a.engine.rekey_child(old.spi_in, pair.now)
    pair.pump()
    assert [e.reason for e in pair.a.of(ike.ChildSaDeleted)] == [ike.Reason.NOT_FOUND]
    assert pair.b.engine.stats.exchanges[("CREATE_CHILD_SA", "responder",
                                          "CHILD_SA_NOT_FOUND")] == 1


def test_rekey_during_the_peers_delete_gets_temporary_failure_and_retries_later():
    pair, _, old = established()
    pair.a.engine.rekey_child(old.spi_in, pair.now)
    [(req, src, dst)] = pair.a.engine.datagrams_to_send()
    b_sa = pair.b.engine._child(old.spi_out)[0]
    from kube_ipsec.ike.sa import ChildState

    next(iter(b_sa.children.values())).state = ChildState.DELETING
    pair.b.engine.receive_datagram(req, src, dst, pair.now)
    next(iter(b_sa.children.values())).state = ChildState.INSTALLED
    pair.pump()
    assert pair.a.engine.stats.exchanges[("CREATE_CHILD_SA", "initiator",
                                          "TEMPORARY_FAILURE")] == 1
    assert not pair.a.of(ike.ChildSaRekeyed)
    pair.advance(10)  # retried after retry_delay
    assert len(pair.a.of(ike.ChildSaRekeyed)) == 1


def test_delete_child_from_either_side():
    pair, _, child = established()
    pair.b.engine.delete_child(child.spi_out, pair.now)
    pair.pump()
    assert [e.reason for e in pair.a.of(ike.ChildSaDeleted)] == [ike.Reason.PEER]
    assert [e.reason for e in pair.b.of(ike.ChildSaDeleted)] == [ike.Reason.LOCAL]
    assert pair.a.children() == pair.b.children() == []
    assert len(pair.a.ike_sas()) == 1


def test_delete_ike_takes_the_children_along():
    pair, ike_sa, _ = established()
    pair.a.engine.delete_ike(ike_sa, pair.now)
    pair.pump()
    for node, reason in ((pair.a, ike.Reason.LOCAL), (pair.b, ike.Reason.PEER)):
        assert [e.reason for e in node.of(ike.ChildSaDeleted)] == [ike.Reason.IKE_DELETED]
        assert [e.reason for e in node.of(ike.IkeSaDeleted)] == [reason]
        assert node.engine.snapshot() == []
    assert pair.a.engine.get_timer() is None


def test_ike_rekey_timer_and_child_timers_run_together():
    pair = Pair(a_peer={"ike_rekey_time": 100, "ike_rand_time": 0,
                        "child": ChildConfig(rekey_time=150, rand_time=0)},
                b_peer={"ike_rekey_time": 0, "child": ChildConfig(rekey_time=0)})
    pair.connect()
    pair.advance(400)
    assert len(pair.a.of(ike.IkeSaRekeyed)) >= 3
    assert len(pair.a.of(ike.ChildSaRekeyed)) >= 2
    assert len(pair.a.engine.snapshot()) == len(pair.b.engine.snapshot()) == 1
    assert len(pair.a.children()) == len(pair.b.children()) == 1
    assert not pair.a.engine.stats.dropped and not pair.b.engine.stats.dropped


def test_old_ike_sa_goes_even_if_its_delete_is_lost():
    pair, old_ike, _ = established()
    pair.drop = lambda name, data, *_: name == "node-a" and len(pair.a.of(ike.IkeSaRekeyed)) > 0
    pair.a.engine.rekey_ike(old_ike, pair.now)
    pair.pump()
    pair.advance(40)
    for node in pair.nodes():
        assert [e.reason for e in node.of(ike.IkeSaDeleted)] == [ike.Reason.REKEYED]
        assert not node.of(ike.PeerDead) and not node.of(ike.ChildSaDeleted)
        assert len(node.engine.snapshot()) == 1


def test_create_child_adds_a_child_sa_with_its_own_nonces():
    pair, ike_sa, first = established()
    pair.a.engine.create_child(ike_sa, pair.now)
    pair.pump()
    [_, ca] = pair.a.of(ike.ChildSaEstablished)
    [_, cb] = pair.b.of(ike.ChildSaEstablished)
    assert_mirrored(ca.child, cb.child)
    assert ca.child.outbound.key != first.outbound.key
    assert len(pair.a.children()) == len(pair.b.children()) == 2
    assert pair.b.engine.stats.exchanges[("CREATE_CHILD_SA", "responder", "ok")] == 1
