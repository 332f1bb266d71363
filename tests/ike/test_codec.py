"""We test these aspects of the payload and message codec:

- every payload type survives serialise -> parse unchanged (SA with attributes, KE, ID, AUTH,
  Nonce, Notify, Delete, TS v4/v6, Vendor, unknown critical payloads);
- an IKE_SA_INIT request built with pinned randomness is byte-for-byte the golden vector, and
  its header and payload chain read as RFC 7296 §3 says;
- an SK{} message round-trips, and a wrong key is an integrity failure;
- truncations and inconsistent lengths raise ``MalformedMessage`` with a specific reason.
"""

import ipaddress
import pathlib
import struct

import pytest

from kube_ipsec.ike import message
from kube_ipsec.ike import payloads as pl
from kube_ipsec.ike.constants import EncrId, ExchangeType, NotifyType, PayloadType, ProtocolId
from kube_ipsec.ike.crypto import SkCipher
from kube_ipsec.ike.errors import MalformedMessage
from tests.ike.harness import Pair

GOLDEN = pathlib.Path(__file__).parent / "golden" / "ike_sa_init_request.hex"

SAMPLE = [
    pl.SA([pl.Proposal(1, ProtocolId.IKE, b"", (pl.Transform(1, 20, 256), pl.Transform(2, 5),
                                                pl.Transform(4, 31))),
           pl.Proposal(2, ProtocolId.ESP, b"\xc0\x00\x00\x01", (pl.Transform(1, 20, 128),
                                                                 pl.Transform(5, 1)))]),
    pl.KE(31, b"\x01" * 32),
    pl.IDi(2, b"node-a"),
    pl.IDr(1, bytes([192, 0, 2, 2])),
    pl.Auth(2, b"\x02" * 32),
    pl.Nonce(b"\x03" * 32),
    pl.Notify(NotifyType.REKEY_SA, ProtocolId.ESP, b"\xc0\x00\x00\x02", b""),
    pl.Notify(NotifyType.COOKIE, 0, b"", b"cookie"),
    pl.Delete(ProtocolId.ESP, [b"\x00\x00\x01\x00", b"\x00\x00\x01\x01"]),
    pl.Delete(ProtocolId.IKE, []),
    pl.TSi([pl.TrafficSelector.host("192.0.2.1"),
            pl.TrafficSelector(ipaddress.ip_address("2001:db8::"),
                               ipaddress.ip_address("2001:db8::ffff"), 6, 80, 443)]),
    pl.TSr([pl.TrafficSelector.from_network("10.0.0.0/24")]),
    pl.Vendor(b"vendor"),
    pl.Unknown(47, b"\x00\x00\x00\x00", critical=True),
]


def test_every_payload_round_trips():
    data = pl.serialize_chain(SAMPLE)
    assert pl.parse_chain(PayloadType.SA, data) == SAMPLE


def test_ike_sa_init_request_matches_the_golden_bytes():
    pair = Pair()
    pair.a.engine.initiate(pair.a.peer, pair.now)
    [(data, src, dst)] = pair.a.engine.datagrams_to_send()
    assert (src, dst) == (("192.0.2.1", 500), ("192.0.2.2", 500))
    assert data.hex() == GOLDEN.read_text().strip()
    spi_i, spi_r, nxt, version, exchange, flags, mid, length = struct.unpack_from(
        "!8s8sBBBBII", data)
    assert spi_r == bytes(8) and spi_i != bytes(8)
    assert (nxt, version, exchange, flags, mid, length) == (
        PayloadType.SA, 0x20, ExchangeType.IKE_SA_INIT, 0x08, 0, len(data))
    payloads = pl.parse_chain(nxt, data[28:])
    assert [pl.type_of(p) for p in payloads] == [
        PayloadType.SA, PayloadType.KE, PayloadType.NONCE, PayloadType.NOTIFY,
        PayloadType.NOTIFY]
    sa, ke = payloads[0], payloads[1]
    assert isinstance(sa, pl.SA) and isinstance(ke, pl.KE)
    assert (ke.group, len(ke.data)) == (31, 32)  # x25519 first, so no INVALID_KE round trip
    assert sa.proposals[0].transforms[0] == pl.Transform(1, EncrId.AES_GCM_16, 256)
    assert [p.type for p in payloads[3:]] == [NotifyType.NAT_DETECTION_SOURCE_IP,
                                              NotifyType.NAT_DETECTION_DESTINATION_IP]


def test_encrypted_message_round_trips_and_needs_the_right_key():
    key = bytes(range(36))
    msg = message.Message(ExchangeType.INFORMATIONAL, False, True, 5, b"\x01" * 8, b"\x02" * 8,
                          [pl.Delete(ProtocolId.ESP, [b"\x00\x00\x10\x00"])])
    data = message.encode(msg, SkCipher(EncrId.AES_GCM_16, key))
    header = message.parse_header(data)
    assert header.next_payload == PayloadType.SK and header.message_id == 5
    assert message.decode(data, header, SkCipher(EncrId.AES_GCM_16, key)) == msg
    with pytest.raises(MalformedMessage) as e:
        message.decode(data, header, SkCipher(EncrId.AES_GCM_16, bytes(36)))
    assert e.value.reason == "integrity_check_failed"
    with pytest.raises(MalformedMessage) as e:
        message.decode(data, header, None)
    assert e.value.reason == "no_keys"


def test_empty_informational_is_an_empty_sk_payload():
    key = bytes(20)
    msg = message.Message(ExchangeType.INFORMATIONAL, True, False, 0, b"\x01" * 8, b"\x02" * 8)
    data = message.encode(msg, SkCipher(EncrId.AES_GCM_16, key))
    assert len(data) == 28 + 4 + 8 + 1 + 16
    assert message.decode(data, message.parse_header(data), SkCipher(EncrId.AES_GCM_16, key)) == msg


@pytest.mark.parametrize("data,reason", [
    (b"\x00" * 10, "short_header"),
    (b"\x00" * 17 + b"\x10" + b"\x00" * 10, "unsupported_version"),
    (b"\x00" * 17 + b"\x20\x22\x08" + b"\x00" * 4 + struct.pack("!I", 99), "length_mismatch"),
    (b"\x00" * 17 + b"\x20\x99\x08" + b"\x00" * 4 + struct.pack("!I", 28), "unknown_exchange"),
])
def test_bad_headers_are_malformed(data, reason):
    with pytest.raises(MalformedMessage) as e:
        message.parse_header(data)
    assert e.value.reason == reason


@pytest.mark.parametrize("first,body,reason", [
    (PayloadType.NONCE, b"\x00\x00", "truncated_payload"),
    (PayloadType.NONCE, b"\x00\x00\x00\x09abc", "bad_payload_length"),
    (PayloadType.NONCE, b"\x00\x00\x00\x02", "bad_payload_length"),
    (PayloadType.NONCE, b"\x00\x00\x00\x04zz", "trailing_bytes"),
    (PayloadType.KE, b"\x00\x00\x00\x06\x00\x1f", "short_ke"),
    (PayloadType.DELETE, b"\x00\x00\x00\x0a\x03\x04\x00\x02\x00\x00", "bad_delete_length"),
    (PayloadType.TSi, b"\x00\x00\x00\x10\x01\x00\x00\x00\x09\x00\x00\x08\x00\x00\xff\xff",
     "unknown_ts_type"),
    (PayloadType.SA, b"\x00\x00\x00\x08\x00\x00\x00\x08", "short_proposal"),
    (PayloadType.SA, b"\x00\x00\x00\x0c\x00\x00\x00\x07\x00\x00\x00\x00", "bad_proposal_length"),
    (PayloadType.SK, b"", "unexpected_sk"),
])
def test_bad_payloads_are_malformed(first, body, reason):
    with pytest.raises(MalformedMessage) as e:
        pl.parse_chain(first, body)
    assert e.value.reason == reason


def test_unknown_transform_attributes_make_the_transform_unselectable():
    tlv = struct.pack("!BBHBBH", 0, 0, 14, 1, 0, 20) + struct.pack("!HH", 0x0001, 2) + b"zz"
    proposal = struct.pack("!BBHBBBB", 0, 0, 8 + len(tlv), 1, 1, 0, 1) + tlv
    [parsed] = pl.parse_chain(PayloadType.SA, struct.pack("!BBH", 0, 0, 4 + len(proposal))
                              + proposal)
    assert isinstance(parsed, pl.SA)
    assert parsed.proposals[0].transforms[0].unknown_attributes
