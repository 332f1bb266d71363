"""We test these aspects of establishing SAs between two engines (no sockets, fake clock):

- IKE_SA_INIT + IKE_AUTH with the first Child SA, initiated from either side: mirrored SPIs and
  keys, kernel algorithm names, transport mode, ESN, the PSK generation that authenticated;
- PSK rotation: a responder holding generations [1, 2] accepts an initiator on 2 and says so;
- tunnel mode with subnet selectors narrowed by the responder; AH; PFS on CREATE_CHILD_SA;
- NAT between the peers: detection, the float to 4500 with the non-ESP marker, and UDP
  encapsulation ports in the Child SA parameters; forced encapsulation without a NAT;
- INVALID_KE_PAYLOAD retry, cookies under load, reauthentication (make-before-break).
"""

from kube_ipsec import ike
from kube_ipsec.ike.config import ChildConfig, Mode
from kube_ipsec.ike.constants import ProtocolId
from kube_ipsec.ike.proposals import ChildProposal, IkeProposal
from tests.ike.harness import PSK, DetRandom, Pair


def assert_mirrored(a: ike.ChildSa, b: ike.ChildSa) -> None:
    assert a.outbound.spi == b.inbound.spi and a.inbound.spi == b.outbound.spi
    assert a.outbound.key == b.inbound.key and a.inbound.key == b.outbound.key
    assert a.outbound.key != a.inbound.key
    assert (a.outbound.src, a.outbound.dst) == (b.inbound.src, b.inbound.dst)


def test_initiator_and_responder_establish_ike_and_child_sa():
    pair = Pair()
    ike_sa = pair.connect()
    [ea] = pair.a.of(ike.IkeSaEstablished)
    [eb] = pair.b.of(ike.IkeSaEstablished)
    assert ea.ike_sa == ike_sa and ea.initiator and not eb.initiator
    assert (ea.local_spi, ea.remote_spi) == (eb.remote_spi, eb.local_spi)
    assert str(ea.remote_id) == "node-b" and str(eb.remote_id) == "node-a"
    assert ea.psk_generation == eb.psk_generation == 1
    assert ea.proposal == "AES_GCM_16_256/HMAC_SHA2_256/CURVE25519"
    [ca] = pair.a.of(ike.ChildSaEstablished)
    [cb] = pair.b.of(ike.ChildSaEstablished)
    assert_mirrored(ca.child, cb.child)
    out = ca.child.outbound
    assert (out.src, out.dst, out.algorithm, out.aead, out.icv_bits, len(out.key)) == (
        "192.0.2.1", "192.0.2.2", "rfc4106(gcm(aes))", True, 128, 36)
    assert out.encap_sport is None
    assert ca.child.mode == Mode.TRANSPORT and ca.child.esn and ca.child.replay_window == 1024
    assert [str(t) for t in ca.child.local_ts] == ["192.0.2.1-192.0.2.1"]
    assert [str(t) for t in ca.child.remote_ts] == ["192.0.2.2-192.0.2.2"]
    assert ca.child.inbound.key.hex() not in repr(ca)
    assert pair.a.engine.stats.exchanges[("IKE_AUTH", "initiator", "ok")] == 1
    assert pair.b.engine.stats.exchanges[("IKE_SA_INIT", "responder", "ok")] == 1
    assert not pair.a.engine.stats.dropped and not pair.b.engine.stats.dropped


def test_ipv6_peers_with_address_identities():
    ids = {"local_id": ike.Identity.parse("2001:db8::1"),
           "remote_id": ike.Identity.parse("2001:db8::2")}
    pair = Pair(v6=True, a_peer=ids, b_peer={"local_id": ids["remote_id"],
                                            "remote_id": ids["local_id"]})
    pair.b.psks["2001:db8::1"] = pair.b.psks["node-a"]
    pair.a.psks["2001:db8::2"] = pair.a.psks["node-b"]
    pair.connect()
    [ca] = pair.a.of(ike.ChildSaEstablished)
    [cb] = pair.b.of(ike.ChildSaEstablished)
    assert_mirrored(ca.child, cb.child)
    assert [str(t) for t in ca.child.remote_ts] == ["2001:db8::2-2001:db8::2"]
    assert str(pair.b.of(ike.IkeSaEstablished)[0].remote_id) == "2001:db8::1"


def test_responder_side_can_initiate_too():
    pair = Pair()
    pair.b.engine.initiate(pair.b.peer, pair.now)
    pair.pump()
    [eb] = pair.b.of(ike.IkeSaEstablished)
    assert eb.initiator
    assert_mirrored(pair.a.of(ike.ChildSaEstablished)[0].child,
                    pair.b.of(ike.ChildSaEstablished)[0].child)


def test_simultaneous_initiation_from_both_sides_keeps_one_ike_sa():
    pair = Pair()
    pair.a.engine.initiate(pair.a.peer, pair.now)
    pair.b.engine.initiate(pair.b.peer, pair.now)
    pair.pump()
    [sa_a], [sa_b] = pair.a.engine.snapshot(), pair.b.engine.snapshot()
    assert (sa_a.local_spi, sa_a.remote_spi) == (sa_b.remote_spi, sa_b.local_spi)
    assert len(sa_a.children) == len(sa_b.children) == 1
    dups = [n.engine.stats.failures["duplicate_ike_sa"] for n in pair.nodes()]
    assert sorted(dups) == [0, 1]  # only the initiator of the redundant SA deleted it
    deleter, other = pair.nodes() if dups[0] else pair.nodes()[::-1]
    assert [e.reason for e in deleter.of(ike.IkeSaDeleted)] == [ike.Reason.REDUNDANT]
    assert [e.reason for e in other.of(ike.IkeSaDeleted)] == [ike.Reason.PEER]


def test_psk_rotation_responder_accepts_either_generation_and_reports_it():
    new = bytes(range(100, 132))
    pair = Pair(a_psks=[(2, new)], b_psks=[(1, PSK), (2, new)])
    pair.connect()
    assert [e.psk_generation for e in pair.a.of(ike.IkeSaEstablished)] == [2]
    assert [e.psk_generation for e in pair.b.of(ike.IkeSaEstablished)] == [2]
    old = Pair(a_psks=[(1, PSK)], b_psks=[(1, PSK), (2, new)])
    old.connect()
    assert [e.psk_generation for e in old.b.of(ike.IkeSaEstablished)] == [1]


def test_tunnel_mode_selectors_are_narrowed_by_the_responder():
    a_child = ChildConfig(mode=Mode.TUNNEL,
                          local_ts=(ike.TrafficSelector.from_network("10.1.0.0/16"),),
                          remote_ts=(ike.TrafficSelector.from_network("10.2.0.0/16"),))
    b_child = ChildConfig(mode=Mode.TUNNEL,
                          local_ts=(ike.TrafficSelector.from_network("10.2.3.0/24"),),
                          remote_ts=(ike.TrafficSelector.from_network("10.1.0.0/16"),))
    pair = Pair(a_peer={"child": a_child}, b_peer={"child": b_child})
    pair.connect()
    [ca] = pair.a.of(ike.ChildSaEstablished)
    assert ca.child.mode == Mode.TUNNEL
    assert [str(t) for t in ca.child.remote_ts] == ["10.2.3.0-10.2.3.255"]
    [cb] = pair.b.of(ike.ChildSaEstablished)
    assert cb.child.local_ts == ca.child.remote_ts and cb.child.remote_ts == ca.child.local_ts


def test_ah_child_sa_uses_hmac_sha256_128():
    child = ChildConfig(proposals=(ChildProposal.parse("sha256-noesn", ProtocolId.AH),))
    pair = Pair(a_peer={"child": child}, b_peer={"child": child})
    pair.connect()
    [ca] = pair.a.of(ike.ChildSaEstablished)
    assert ca.child.protocol == "ah" and not ca.child.esn
    assert (ca.child.outbound.algorithm, ca.child.outbound.aead, ca.child.outbound.icv_bits,
            len(ca.child.outbound.key)) == ("hmac(sha256)", False, 128, 32)


def test_chacha20poly1305_esp():
    child = ChildConfig(proposals=(ChildProposal.parse("chacha20poly1305-esn"),))
    pair = Pair(a_peer={"child": child}, b_peer={"child": child})
    pair.connect()
    [ca] = pair.a.of(ike.ChildSaEstablished)
    assert ca.child.outbound.algorithm == "rfc7539esp(chacha20,poly1305)"
    assert len(ca.child.outbound.key) == 36
    assert ca.child.proposal == "ESP:CHACHA20_POLY1305/ESN"
    # RFC 7634: the transform carries no Key Length attribute (strongSwan rejects one)
    assert child.proposals[0].transforms(False)[0].key_length is None


def test_nat_is_detected_and_ike_floats_to_4500_with_udp_encapsulated_esp():
    pair = Pair(nat=True)
    pair.connect()
    [na] = pair.a.of(ike.NatDetected)
    [nb] = pair.b.of(ike.NatDetected)
    assert na.local_nat and not na.remote_nat
    assert nb.remote_nat and not nb.local_nat
    assert na.local_addr == ("10.0.0.1", 4500) and na.remote_addr == ("192.0.2.2", 4500)
    auth = [d for name, d, src, _ in pair.sent if name == "node-a"][1]
    assert auth[:4] == b"\x00\x00\x00\x00"  # non-ESP marker on 4500
    [ca] = pair.a.of(ike.ChildSaEstablished)
    [cb] = pair.b.of(ike.ChildSaEstablished)
    assert (ca.child.outbound.encap_sport, ca.child.outbound.encap_dport) == (4500, 4500)
    mapped = cb.child.inbound.encap_sport
    assert mapped is not None and mapped >= 40000  # the NAT's port, as B sees it
    assert (cb.child.outbound.encap_sport, cb.child.outbound.encap_dport) == (4500, mapped)
    assert ca.child.outbound.spi == cb.child.inbound.spi
    assert ca.child.outbound.key == cb.child.inbound.key
    pair.a.engine.dpd(na.ike_sa, pair.now)  # later exchanges keep working through the NAT
    pair.pump()
    assert pair.a.engine.stats.exchanges[("INFORMATIONAL", "initiator", "ok")] == 1


def test_forced_encapsulation_without_a_nat():
    pair = Pair(a_peer={"force_encap": True})
    pair.connect()
    [na] = pair.a.of(ike.NatDetected)
    [nb] = pair.b.of(ike.NatDetected)
    assert na.local_nat and nb.remote_nat
    [cb] = pair.b.of(ike.ChildSaEstablished)
    assert (cb.child.outbound.encap_sport, cb.child.outbound.encap_dport) == (4500, 4500)


def test_invalid_ke_payload_makes_the_initiator_retry_with_the_responders_group():
    a_ike = (IkeProposal.parse("aes256gcm16-prfsha256-ecp256-x25519"),)
    b_ike = (IkeProposal.parse("aes256gcm16-prfsha256-x25519"),)
    pair = Pair(a_peer={"ike_proposals": a_ike}, b_peer={"ike_proposals": b_ike})
    pair.connect()
    [ea] = pair.a.of(ike.IkeSaEstablished)
    assert ea.proposal.endswith("CURVE25519")
    assert pair.a.engine.stats.exchanges[("IKE_SA_INIT", "initiator", "INVALID_KE_PAYLOAD")] == 1
    assert pair.b.of(ike.ChildSaEstablished)


def test_modp2048_and_ecp384_groups_negotiate():
    for group in ("modp2048", "ecp384", "ecp256"):
        props = (IkeProposal.parse(f"aes128gcm16-prfsha384-{group}"),)
        pair = Pair(a_peer={"ike_proposals": props}, b_peer={"ike_proposals": props})
        pair.connect()
        [ea] = pair.a.of(ike.IkeSaEstablished)
        assert "HMAC_SHA2_384" in ea.proposal
        assert pair.b.of(ike.ChildSaEstablished)


def test_cookies_engage_above_the_half_open_threshold_and_the_peer_still_connects():
    pair = Pair(b_kw={"cookie_threshold": 2})
    for i in range(2):  # two half-open SAs whose initiators never answer
        junk = ike.Engine(pair.a.engine.config, DetRandom(b"junk%d" % i))
        junk.initiate(pair.a.peer, pair.now)
        for data, src, dst in junk.datagrams_to_send():
            pair.b.engine.receive_datagram(data, src, dst, pair.now)
        pair.b.engine.datagrams_to_send()
    pair.connect()
    assert pair.b.engine.stats.cookies_sent == 1
    assert pair.a.engine.stats.exchanges[("IKE_SA_INIT", "initiator", "COOKIE")] == 1
    assert pair.a.of(ike.IkeSaEstablished) and pair.b.of(ike.ChildSaEstablished)
    pair.advance(31)  # the half-open SAs expire
    assert pair.b.engine.stats.failures["half_open_timeout"] == 2
    assert len(pair.b.ike_sas()) == 1


def test_pfs_child_sa_with_its_own_key_exchange():
    child = ChildConfig(proposals=(ChildProposal.parse("aes128gcm16-x25519-esn"),))
    pair = Pair(a_peer={"child": child}, b_peer={"child": child})
    pair.connect()
    [ca] = pair.a.of(ike.ChildSaEstablished)
    pair.a.engine.rekey_child(ca.child.spi_in, pair.now)
    pair.pump()
    [ra] = pair.a.of(ike.ChildSaRekeyed)
    [rb] = pair.b.of(ike.ChildSaRekeyed)
    assert "CURVE25519" in ra.new.proposal
    assert_mirrored(ra.new, rb.new)
    assert ra.new.outbound.key != ca.child.outbound.key


def test_reauthentication_brings_up_a_new_ike_sa_before_deleting_the_old():
    pair = Pair()
    old = pair.connect()
    new = pair.a.engine.reauthenticate(old, pair.now)
    pair.pump()
    est = pair.a.of(ike.IkeSaEstablished)
    assert [e.ike_sa for e in est] == [old, new] and est[1].replaces == old
    kinds = [type(e).__name__ for e in pair.a.events]
    assert kinds.index("IkeSaDeleted") > kinds.index("ChildSaEstablished", 2)
    assert [e.reason for e in pair.a.of(ike.IkeSaDeleted)] == [ike.Reason.REPLACED]
    assert [e.reason for e in pair.b.of(ike.IkeSaDeleted)] == [ike.Reason.PEER]
    assert len(pair.a.ike_sas()) == len(pair.b.ike_sas()) == 1
    assert len(pair.a.children()) == len(pair.b.children()) == 1


def test_key_log_is_off_by_default_and_feeds_a_debug_sink_when_set():
    lines: list[str] = []
    pair = Pair(a_kw={"key_log": lines.append})
    pair.connect()
    assert pair.b.engine.config.key_log is None
    [line] = lines
    spi_i, spi_r, sk_ei, sk_er = line.split(",")[:4]
    [ea] = pair.a.of(ike.IkeSaEstablished)
    assert (spi_i, spi_r) == (ea.local_spi.hex(), ea.remote_spi.hex())
    assert len(bytes.fromhex(sk_ei)) == len(bytes.fromhex(sk_er)) == 36
