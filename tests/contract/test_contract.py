"""We test these aspects of the operator<->agent contract:

- the key Secret layout is pinned by a fixture, so operator and agent cannot drift;
- malformed Secrets are rejected with messages that never contain key bytes;
- the pair PSK is HKDF-SHA256 as specified (recomputed here from RFC 5869 with plain HMAC),
  order-independent, and distinct per pair, tunnel and generation;
- spec parsing applies the CRD's defaults and reports semantic problems by field path.
"""

import base64
import hashlib
import hmac
import json
import pathlib

import pytest

from kube_ipsec import contract as c

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
GEN1, GEN2 = bytes(range(32)), bytes(range(32, 64))


def pinned_keyset() -> c.KeySet:
    return c.KeySet(
        current=2,
        generations=(
            c.KeyGeneration(1, "2026-12-01T00:00:00Z", GEN1),
            c.KeyGeneration(2, "2026-12-02T00:00:00Z", GEN2),
        ),
        peer_psks={"office-gw": b"gateway-secret"},
    )


def test_secret_layout_matches_the_pinned_fixture():
    data = json.loads((FIXTURES / "keyset-v1.json").read_text())
    assert pinned_keyset().to_secret_data() == data
    manifest = json.loads(base64.b64decode(data["manifest.json"]))
    assert manifest == {
        "current": 2,
        "generations": [
            {"generation": 1, "createdAt": "2026-12-01T00:00:00Z"},
            {"generation": 2, "createdAt": "2026-12-02T00:00:00Z"},
        ],
    }


def test_secret_round_trips():
    parsed = c.KeySet.from_secret_data(pinned_keyset().to_secret_data())
    assert parsed == pinned_keyset()
    assert parsed.get(1).key == GEN1 and parsed.newest == 2 and parsed.numbers == [1, 2]
    assert parsed.peer_psks == {"office-gw": b"gateway-secret"}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("manifest.json"), "missing 'manifest.json'"),
        (lambda d: d.update({"manifest.json": "!!!"}), "unreadable manifest.json"),
        (lambda d: d.pop("gen-1.key"), "generation 1 listed but gen-1.key missing"),
        (lambda d: d.update({"gen-2.key": base64.b64encode(b"short").decode()}), "5 bytes"),
        (lambda d: d.update({"gen-2.key": "not base64!"}), "gen-2.key is not base64"),
        (
            lambda d: d.update(
                {"manifest.json": base64.b64encode(b'{"current": 7, "generations": []}').decode()}
            ),
            "current generation 7",
        ),
    ],
)
def test_broken_secrets_are_rejected_without_leaking_keys(mutate, message):
    data = pinned_keyset().to_secret_data()
    mutate(data)
    with pytest.raises(c.KeyFormatError) as err:
        c.KeySet.from_secret_data(data)
    text = str(err.value)
    assert message in text
    for key in (GEN1, GEN2):
        assert key.hex() not in text and base64.b64encode(key).decode() not in text


def test_keys_never_appear_in_repr():
    text = repr(pinned_keyset())
    for key in (GEN1, GEN2):
        assert key.hex() not in text and repr(key) not in text
    assert "gateway-secret" not in text


def rfc5869_hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    out, block = b"", b""
    for i in range(1, -(-length // 32) + 1):
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        out += block
    return out[:length]


def test_pair_psk_is_the_specified_hkdf():
    expected = rfc5869_hkdf_sha256(
        GEN1, b"kube-ipsec.dev psk v1", b"mesh\x001\x00node-a\x00node-b", 32
    )
    assert c.derive_pair_psk(GEN1, "mesh", "node-a", "node-b", 1) == expected
    assert expected.hex() == "3decebb8859c6b550fb04b4d3a97821072a0717a78dd7d9017ff4cad073364a5"


def test_pair_psk_is_order_independent_and_distinct():
    ab = c.derive_pair_psk(GEN1, "mesh", "node-a", "node-b", 1)
    assert c.derive_pair_psk(GEN1, "mesh", "node-b", "node-a", 1) == ab
    others = {
        c.derive_pair_psk(GEN1, "mesh", "node-a", "node-c", 1),
        c.derive_pair_psk(GEN1, "other", "node-a", "node-b", 1),
        c.derive_pair_psk(GEN1, "mesh", "node-a", "node-b", 2),
        c.derive_pair_psk(GEN2, "mesh", "node-a", "node-b", 1),
    }
    assert ab not in others and len(others) == 4
    with pytest.raises(ValueError):
        c.derive_pair_psk(GEN1, "mesh", "node-a", "node-a", 1)


def test_spec_defaults_match_the_crd():
    spec = c.TunnelSpec.parse({})
    assert spec.mode is c.Mode.TRANSPORT and spec.protocol is c.Protocol.ESP
    assert spec.cipher == "aes-gcm-256" and spec.replay_window == 1024 and spec.esn
    assert spec.enforcement is c.Enforcement.REQUIRE
    assert spec.ike.dh_group == "x25519" and spec.ike.lifetime.total_seconds() == 4 * 3600
    assert spec.rotation.interval.total_seconds() == 86400
    assert spec.rotation.overlap.total_seconds() == 600


def test_ah_spec_has_integrity_and_no_cipher():
    spec = c.TunnelSpec.parse({"protocol": "ah"})
    assert spec.cipher is None and spec.integrity == "hmac-sha256-128"


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"protocol": "ah", "cipher": "aes-gcm-128"}, "spec.cipher"),
        ({"integrity": "hmac-sha256-128"}, "spec.integrity"),
        ({"cipher": "des"}, "spec.cipher"),
        ({"replayWindow": 0}, "spec.replayWindow"),
        ({"ike": {"lifetime": "1h", "childLifetime": "2h"}}, "spec.ike.childLifetime"),
        ({"ike": {"lifetime": "soon"}}, "spec.ike.lifetime"),
        ({"rotation": {"interval": "30s", "overlap": "10s"}}, "spec.rotation.interval"),
        ({"rotation": {"interval": "1h", "overlap": "2h"}}, "spec.rotation.overlap"),
        ({"peers": [{"name": "gw", "address": "127.0.0.1", "pskSecretRef": {"name": "s"}}]},
         "spec.peers[0].address"),
        ({"peers": [{"name": "gw", "address": "10.0.0.300", "pskSecretRef": {"name": "s"}}]},
         "spec.peers[0].address"),
        ({"peers": [{"name": "a", "address": "10.0.0.1", "pskSecretRef": {"name": "s"}},
                    {"name": "b", "address": "10.0.0.1", "pskSecretRef": {"name": "s"}}]},
         "spec.peers[1].address"),
        ({"peers": [{"name": "gw", "address": "10.0.0.1", "pskSecretRef": {"name": "s"},
                     "remoteSubnets": ["10.1.0.0/16"]}]}, "spec.peers[0].remoteSubnets"),
        ({"nodeSelector": {"matchExpressions": [{"key": "k", "operator": "In"}]}},
         "spec.nodeSelector.matchExpressions[0].values"),
    ],
)
def test_semantic_problems_name_the_field(spec, field):
    with pytest.raises(c.SpecError) as err:
        c.TunnelSpec.parse(spec)
    assert any(p.startswith(field) for p in err.value.problems), err.value.problems


def test_selector_semantics():
    sel = {
        "matchLabels": {"zone": "a"},
        "matchExpressions": [
            {"key": "role", "operator": "In", "values": ["worker", "edge"]},
            {"key": "tainted", "operator": "DoesNotExist"},
        ],
    }
    assert c.selector_matches(sel, {"zone": "a", "role": "edge"})
    assert not c.selector_matches(sel, {"zone": "b", "role": "edge"})
    assert not c.selector_matches(sel, {"zone": "a", "role": "db"})
    assert not c.selector_matches(sel, {"zone": "a", "role": "edge", "tainted": ""})
    assert c.selector_matches({}, {"anything": "x"})


def test_node_status_readers():
    obj = {"status": {"tunnels": [{"name": "mesh", "keyGenerationsLoaded": [1, 2],
                                   "keyGenerationInUse": 2}]}}
    assert c.node_generation_in_use(obj, "mesh") == 2
    assert c.node_generations_loaded(obj, "mesh") == [1, 2]
    assert c.node_generation_in_use(obj, "other") is None
    assert c.node_generations_loaded({}, "mesh") == []
