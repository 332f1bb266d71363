"""We test these aspects of failures, loss and liveness:

- a wrong PSK: AUTHENTICATION_FAILED, reported on both sides, both IKE SAs gone;
- no common proposal: NO_PROPOSAL_CHOSEN in IKE_SA_INIT; a Child SA that fails alone
  (TS_UNACCEPTABLE) leaves the IKE SA up;
- a lost request is retransmitted with back-off; a duplicated request is answered from the
  responder's cache with the same bytes; duplicated responses are dropped and counted;
- DPD: an answered probe, and a dead peer after the retransmissions run out (PeerDead, all SAs
  deleted); idle SAs probe by themselves after ``dpd_delay``;
- an empty SPI pool defers the work until ``provide_spis``;
- EAP (IKE_AUTH without AUTH) and unknown critical payloads are refused cleanly.
"""

from kube_ipsec import ike
from kube_ipsec.ike import message
from kube_ipsec.ike import payloads as pl
from kube_ipsec.ike.config import ChildConfig
from kube_ipsec.ike.constants import ExchangeType, NotifyType
from kube_ipsec.ike.proposals import IkeProposal
from tests.ike.harness import Pair


def exchange_of(data: bytes) -> tuple[int, bool]:
    if data[:4] == bytes(4):
        data = data[4:]
    header = message.parse_header(data)
    return header.exchange, header.is_response


def test_wrong_psk_fails_authentication_on_both_sides():
    pair = Pair(a_psks=[(1, b"x" * 32)])
    pair.connect()
    [fa] = pair.a.of(ike.AuthenticationFailed)
    [fb] = pair.b.of(ike.AuthenticationFailed)
    assert fa.by_peer and not fb.by_peer and str(fb.remote_id) == "node-a"
    for node in pair.nodes():
        assert [e.reason for e in node.of(ike.IkeSaDeleted)] == [ike.Reason.AUTH_FAILED]
        assert not node.of(ike.IkeSaEstablished) and node.engine.snapshot() == []
    assert pair.b.engine.stats.failures["authentication_failed"] == 1


def test_initiator_without_a_psk_fails_before_sending_auth():
    pair = Pair(a_psks=[])
    pair.connect()
    [fa] = pair.a.of(ike.AuthenticationFailed)
    assert not fa.by_peer
    assert not [d for n, d, *_ in pair.sent if exchange_of(d)[0] == ExchangeType.IKE_AUTH]
    assert pair.a.engine.snapshot() == []


def test_unknown_peer_identity_fails_authentication():
    pair = Pair(b_psks=[])
    pair.connect()
    assert pair.a.of(ike.AuthenticationFailed) and pair.b.of(ike.AuthenticationFailed)


def test_no_common_ike_proposal_gets_no_proposal_chosen():
    pair = Pair(a_peer={"ike_proposals": (IkeProposal.parse("aes128gcm16-prfsha256-ecp256"),)},
                b_peer={"ike_proposals": (IkeProposal.parse("aes256gcm16-prfsha384-x25519"),)})
    pair.connect()
    [na] = pair.a.of(ike.NegotiationFailed)
    [nb] = pair.b.of(ike.NegotiationFailed)
    assert (na.exchange, na.notify, na.by_peer) == ("IKE_SA_INIT", "NO_PROPOSAL_CHOSEN", True)
    assert (nb.notify, nb.by_peer) == ("NO_PROPOSAL_CHOSEN", False)
    assert pair.a.engine.snapshot() == pair.b.engine.snapshot() == []


def test_child_failure_in_ike_auth_keeps_the_ike_sa():
    b_child = ChildConfig(remote_ts=(ike.TrafficSelector.from_network("10.9.0.0/16"),))
    pair = Pair(b_peer={"child": b_child})
    pair.connect()
    assert pair.a.of(ike.IkeSaEstablished) and pair.b.of(ike.IkeSaEstablished)
    [fa] = pair.a.of(ike.ChildSaFailed)
    assert (fa.notify, fa.by_peer) == ("TS_UNACCEPTABLE", True)
    assert pair.b.of(ike.ChildSaFailed)[0].notify == "TS_UNACCEPTABLE"
    assert pair.a.children() == pair.b.children() == []
    assert len(pair.a.ike_sas()) == 1


def test_lost_request_is_retransmitted_with_backoff():
    pair = Pair()
    lost = []

    def drop_first_auth(name, data, src, dst):
        if name == "node-a" and exchange_of(data) == (ExchangeType.IKE_AUTH, False) and not lost:
            lost.append(data)
            return True
        return False

    pair.drop = drop_first_auth
    pair.connect()
    assert not pair.a.of(ike.IkeSaEstablished)
    assert pair.a.engine.get_timer() == pair.now + 1.0
    pair.advance(1.0)
    assert pair.a.of(ike.IkeSaEstablished) and pair.b.of(ike.ChildSaEstablished)
    assert pair.a.engine.stats.retransmits == 1
    resent = [d for n, d, *_ in pair.sent if n == "node-a"]
    assert resent.count(lost[0]) == 2  # the exact same bytes, not re-encrypted


def test_duplicated_requests_are_answered_from_the_cache():
    pair = Pair()
    pair.duplicate = lambda name, data: name == "node-a"
    pair.connect()
    assert pair.a.of(ike.IkeSaEstablished) and pair.b.of(ike.ChildSaEstablished)
    assert pair.b.engine.stats.retransmitted_responses == 2  # INIT and AUTH
    b_sent = [d for n, d, *_ in pair.sent if n == "node-b"]
    assert b_sent[0] == b_sent[1] and b_sent[2] == b_sent[3]
    assert pair.a.engine.stats.dropped["unexpected_response"] == 2
    assert len(pair.b.engine.snapshot()) == 1


def test_dpd_probe_is_answered():
    pair = Pair()
    ike_sa = pair.connect()
    pair.a.engine.dpd(ike_sa, pair.now)
    pair.pump()
    assert pair.a.engine.stats.exchanges[("INFORMATIONAL", "initiator", "ok")] == 1
    assert pair.b.engine.stats.exchanges[("INFORMATIONAL", "responder", "ok")] == 1
    assert not pair.a.of(ike.PeerDead)


def test_dead_peer_is_detected_after_retransmits_run_out():
    pair = Pair()
    ike_sa = pair.connect()
    pair.drop = lambda *_: True  # the peer vanished
    pair.a.engine.dpd(ike_sa, pair.now)
    pair.pump()
    start = pair.now
    pair.advance(60)
    [dead] = pair.a.of(ike.PeerDead)
    assert dead.ike_sa == ike_sa
    assert [e.reason for e in pair.a.of(ike.ChildSaDeleted)] == [ike.Reason.IKE_DELETED]
    assert [e.reason for e in pair.a.of(ike.IkeSaDeleted)] == [ike.Reason.DEAD_PEER]
    assert pair.a.engine.stats.retransmits == 3
    # 1 + 1.8 + 3.24 s of retransmits, then the last wait of 5.832 s
    probes = [d for n, d, *_ in pair.sent if n == "node-a"][-4:]
    assert len(probes) == 4 and len(set(probes)) == 1
    assert pair.a.engine.snapshot() == [] and start < pair.now


def test_idle_sa_probes_by_itself_after_dpd_delay():
    pair = Pair(a_peer={"dpd_delay": 10}, b_peer={"dpd_delay": 0})
    pair.connect()
    pair.advance(11)
    assert pair.a.engine.stats.exchanges[("INFORMATIONAL", "initiator", "ok")] == 1
    pair.advance(10)
    assert pair.a.engine.stats.exchanges[("INFORMATIONAL", "initiator", "ok")] == 2


def test_empty_spi_pool_defers_the_child_until_spis_arrive():
    pair = Pair()
    pair.a.auto_spis = False
    pair.a.engine._spis.clear()
    pair.connect()
    [need] = pair.a.of(ike.SpisNeeded)
    assert need.count == 8 and not pair.a.of(ike.IkeSaEstablished)
    pair.advance(0.5)  # waiting for SPIs arms no timer of its own
    assert not pair.a.of(ike.IkeSaEstablished)
    pair.a.engine.provide_spis([0xC0000100], pair.now)
    pair.pump()
    [ca] = pair.a.of(ike.ChildSaEstablished)
    assert ca.child.spi_in == 0xC0000100


def inject_auth(pair: Pair, payloads: list[pl.Payload]) -> None:
    """Replace A's IKE_AUTH request with one carrying ``payloads`` (valid encryption)."""
    pair.a.engine.initiate(pair.a.peer, pair.now)
    pair.drop = lambda name, data, *_: exchange_of(data) == (ExchangeType.IKE_AUTH, False)
    pair.pump()
    [sa_a] = [s for s in pair.a.engine._by_id.values()]
    msg = message.Message(ExchangeType.IKE_AUTH, False, True, 1, sa_a.spi_i, sa_a.spi_r,
                          payloads)
    data = message.encode(msg, sa_a.cipher_out)
    pair.b.engine.receive_datagram(data, ("192.0.2.1", 500), ("192.0.2.2", 500), pair.now)


def test_eap_without_auth_payload_is_refused_with_authentication_failed():
    pair = Pair()
    inject_auth(pair, [pl.IDi(2, b"node-a")])
    pair.pump()
    [fb] = pair.b.of(ike.AuthenticationFailed)
    [fa] = pair.a.of(ike.AuthenticationFailed)
    assert fa.by_peer and not fb.by_peer
    assert pair.a.engine.snapshot() == pair.b.engine.snapshot() == []


def test_unknown_critical_payload_is_refused():
    pair = Pair()
    inject_auth(pair, [pl.IDi(2, b"node-a"), pl.Unknown(48, b"eap", critical=True)])
    assert pair.b.engine.stats.exchanges[("IKE_AUTH", "responder",
                                          "UNSUPPORTED_CRITICAL_PAYLOAD")] == 1
    assert pair.b.engine.snapshot() == []


def test_unknown_non_critical_payloads_are_ignored():
    pair = Pair()
    ike_sa = pair.connect()
    sa_a = pair.a.engine._by_id[ike_sa]
    msg = message.Message(ExchangeType.INFORMATIONAL, False, True, sa_a.mgr.mid_out,
                          sa_a.spi_i, sa_a.spi_r, [pl.Unknown(43 + 100, b"x"),
                                                   pl.Notify(NotifyType.INVALID_SPI)])
    pair.b.engine.receive_datagram(message.encode(msg, sa_a.cipher_out), ("192.0.2.1", 500),
                                   ("192.0.2.2", 500), pair.now)
    assert pair.b.engine.stats.exchanges[("INFORMATIONAL", "responder", "ok")] == 1


def test_informational_authentication_failed_from_the_peer_tears_the_sa_down():
    pair = Pair()
    ike_sa = pair.connect()
    sa_b = next(iter(pair.b.engine._by_id.values()))
    msg = message.Message(ExchangeType.INFORMATIONAL, False, False, sa_b.mgr.mid_out,
                          sa_b.spi_i, sa_b.spi_r, [pl.Notify(NotifyType.AUTHENTICATION_FAILED)])
    pair.a.engine.receive_datagram(message.encode(msg, sa_b.cipher_out), ("192.0.2.2", 500),
                                   ("192.0.2.1", 500), pair.now)
    pair.pump()
    [fa] = pair.a.of(ike.AuthenticationFailed)
    assert fa.by_peer and fa.ike_sa == ike_sa
    assert [e.reason for e in pair.a.of(ike.IkeSaDeleted)] == [ike.Reason.AUTH_FAILED]
