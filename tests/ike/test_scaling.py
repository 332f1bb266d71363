"""We test that the work per input does not grow with the number of IKE SAs an engine holds
(one agent holds one per peer): the same handshake, DPD round and SPI delivery ask the same
number of SAs for their deadline and resume the same number of task managers whether the engine
holds 5 other IKE SAs or 200. Counted calls, never timings."""

from collections import Counter

import pytest

from kube_ipsec import ike
from kube_ipsec.ike.manager import TaskManager
from kube_ipsec.ike.sa import IkeSa
from tests.ike import harness
from tests.ike.harness import Pair

FAR = 10_000.0  # the other SAs' first retransmission lies beyond the test


def work(others: int, monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    pair = Pair()
    engine = pair.a.engine
    for i in range(others):  # IKE SAs towards peers that never answer (their datagrams dropped)
        peer = ike.PeerConfig(remote_host=f"203.0.113.{i % 250}", local_id=pair.a.peer.local_id,
                              remote_id=ike.Identity.fqdn(f"other-{i}"))
        engine.initiate(peer, pair.now + FAR)
    engine.datagrams_to_send()
    engine.get_timer()
    calls: Counter[str] = Counter()

    def counted(name: str, method):  # type: ignore[no-untyped-def]
        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            calls[name] += 1
            return method(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(harness, "check_timer", lambda _engine: None)  # asks every SA itself
    monkeypatch.setattr(IkeSa, "deadline", counted("deadline", IkeSa.deadline))
    monkeypatch.setattr(TaskManager, "resume", counted("resume", TaskManager.resume))
    monkeypatch.setattr(TaskManager, "initiate", counted("initiate", TaskManager.initiate))
    pair.connect()  # a handshake: get_timer after every datagram in a real shell
    for node in pair.nodes():
        node.engine.get_timer()
    engine.provide_spis(range(0xC5000000, 0xC5000008), pair.now)
    pair.advance(pair.a.peer.dpd_delay + 1)  # a DPD round trip on the new SA, timers fired
    monkeypatch.undo()
    assert len(pair.a.ike_sas()) == 1 and len(pair.a.ike_sas("connecting")) == others
    assert pair.a.engine.stats.exchanges[("INFORMATIONAL", "initiator", "ok")] == 1
    return calls


def test_per_input_work_does_not_grow_with_the_number_of_ike_sas(monkeypatch):
    few, many = work(5, monkeypatch), work(200, monkeypatch)
    assert few["deadline"] > 0 and few["initiate"] > 0
    assert many == few


def test_rescheduled_deadlines_do_not_pile_up_in_the_timer_heap():
    """Every exchange moves the SA's deadline (retransmission, then DPD): the superseded heap
    entries are dropped, so the heap stays in proportion to the SAs, and timers stay right."""
    pair = Pair()
    ike_sa = pair.connect()
    for _ in range(150):
        pair.now += 1
        pair.a.engine.dpd(ike_sa, pair.now)
        pair.pump()  # checks the engines' timers against every SA's deadline
    for node in pair.nodes():
        assert len(node.engine._timers) <= 2 * len(node.engine.snapshot()) + 64
    pair.advance(pair.a.peer.dpd_delay + 1)
    assert pair.a.engine.stats.exchanges[("INFORMATIONAL", "initiator", "ok")] == 151
