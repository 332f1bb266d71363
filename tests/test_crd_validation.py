"""We test these aspects of the CRDs, on the real kube-apiserver:

- the example tunnels are accepted, and the schema's defaults are filled in by the server;
- invalid IPsecTunnels (wrong types, out-of-range values, unknown enums, missing required
  fields, cross-field CEL rules) are each rejected, and the message names the field;
- IPsecNode objects carry status through the status subresource.
"""

import copy
import pathlib
import uuid

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from kube_ipsec import contract

pytestmark = pytest.mark.apiserver

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
PEER = {"name": "gw", "address": "192.0.2.10", "pskSecretRef": {"name": "gw-psk"}}


def tunnel(spec, name=None):
    return {
        "apiVersion": contract.API_VERSION,
        "kind": contract.TUNNEL_KIND,
        "metadata": {"name": name or f"t-{uuid.uuid4().hex[:8]}"},
        **({"spec": spec} if spec is not None else {}),
    }


def create(api, body):
    return api.create_cluster_custom_object(
        contract.GROUP, contract.VERSION, contract.TUNNEL_PLURAL, body, field_validation="Strict"
    )


@pytest.fixture
def custom(apiserver):
    api = client.CustomObjectsApi(apiserver.api_client())
    created = []
    yield api, created
    for name in created:
        api.delete_cluster_custom_object(
            contract.GROUP, contract.VERSION, contract.TUNNEL_PLURAL, name
        )


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("tunnel*.yaml")), ids=lambda p: p.name)
def test_examples_are_accepted_and_parse(custom, example):
    api, created = custom
    body = yaml.safe_load(example.read_text())
    body["metadata"]["name"] += "-" + uuid.uuid4().hex[:6]
    stored = create(api, body)
    created.append(stored["metadata"]["name"])
    spec = contract.TunnelSpec.parse(stored["spec"])
    assert spec.cipher == body["spec"]["cipher"]


def test_server_fills_the_defaults_the_contract_assumes(custom):
    api, created = custom
    stored = create(api, tunnel({}))
    created.append(stored["metadata"]["name"])
    spec = stored["spec"]
    assert spec["mode"] == "transport" and spec["protocol"] == "esp"
    assert spec["replayWindow"] == 1024 and spec["esn"] is True and spec["pfs"] is True
    assert spec["enforcement"] == "require"
    assert spec["ike"] == {
        "dhGroup": "x25519", "prf": "sha256", "lifetime": "4h",
        "childLifetime": "1h", "dpdInterval": "30s",
    }
    assert spec["rotation"] == {"interval": "24h", "overlap": "10m"}
    parsed, defaults = contract.TunnelSpec.parse(spec), contract.TunnelSpec.parse({})
    assert parsed.ike == defaults.ike and parsed.rotation == defaults.rotation


INVALID = [
    ("missing spec", None, "spec"),
    ("unknown mode", {"mode": "bridge"}, "spec.mode"),
    ("unknown cipher", {"cipher": "des-cbc"}, "spec.cipher"),
    ("unknown protocol", {"protocol": "gre"}, "spec.protocol"),
    ("unknown enforcement", {"enforcement": "off"}, "spec.enforcement"),
    ("replay window too large", {"replayWindow": 5000}, "spec.replayWindow"),
    ("replay window negative", {"replayWindow": -1}, "spec.replayWindow"),
    ("replay window wrong type", {"replayWindow": "big"}, "spec.replayWindow"),
    ("esn wrong type", {"esn": "yes"}, "spec.esn"),
    ("pfs wrong type", {"pfs": 1}, "spec.pfs"),
    ("ah with a cipher", {"protocol": "ah", "cipher": "aes-gcm-128"}, "spec.cipher"),
    ("integrity with esp", {"integrity": "hmac-sha256-128"}, "spec.integrity"),
    ("esn without replay window", {"esn": True, "replayWindow": 0}, "spec.replayWindow"),
    ("unknown dh group", {"ike": {"dhGroup": "modp1024"}}, "spec.ike.dhGroup"),
    ("malformed lifetime", {"ike": {"lifetime": "4 hours"}}, "spec.ike.lifetime"),
    ("child outlives ike", {"ike": {"lifetime": "1h", "childLifetime": "8h"}},
     "spec.ike.childLifetime"),
    ("overlap not shorter than interval", {"rotation": {"interval": "1h", "overlap": "2h"}},
     "spec.rotation.overlap"),
    ("interval too short", {"rotation": {"interval": "30s", "overlap": "10s"}},
     "spec.rotation.interval"),
    ("peer without psk", {"peers": [{"name": "gw", "address": "192.0.2.10"}]},
     "spec.peers[0].pskSecretRef"),
    ("peer address not an ip", {"peers": [{**PEER, "address": "gateway.example"}]},
     "spec.peers[0].address"),
    ("peer subnet not a cidr",
     {"mode": "tunnel", "peers": [{**PEER, "remoteSubnets": ["10.0.0.0/33"]}]},
     "spec.peers[0].remoteSubnets[0]"),
    ("peer subnets in transport mode", {"peers": [{**PEER, "remoteSubnets": ["10.0.0.0/16"]}]},
     "spec.peers"),
    ("duplicate peer names", {"peers": [PEER, {**PEER, "address": "192.0.2.11"}]},
     "spec.peers[1]"),
    ("unknown selector operator",
     {"nodeSelector": {"matchExpressions": [{"key": "k", "operator": "Like", "values": ["v"]}]}},
     "spec.nodeSelector.matchExpressions[0].operator"),
    ("In without values", {"nodeSelector": {"matchExpressions": [{"key": "k", "operator": "In"}]}},
     "spec.nodeSelector.matchExpressions[0]"),
    ("unknown field", {"cipherSuite": "aes"}, "cipherSuite"),
]


@pytest.mark.parametrize(("case", "spec", "field"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_tunnel_is_rejected_naming_the_field(custom, case, spec, field):
    api, created = custom
    with pytest.raises(ApiException) as err:
        stored = create(api, tunnel(copy.deepcopy(spec)))
        created.append(stored["metadata"]["name"])
    assert err.value.status in (400, 422), err.value.body
    assert field in err.value.body, f"{case}: {err.value.body}"


def test_invalid_cases_are_many_and_distinct():
    assert len({case for case, _, _ in INVALID}) == len(INVALID) >= 15


def test_ipsecnode_status_goes_through_the_subresource(apiserver):
    api = client.CustomObjectsApi(apiserver.api_client())
    name = f"node-{uuid.uuid4().hex[:6]}"
    body = {"apiVersion": contract.API_VERSION, "kind": contract.NODE_KIND,
            "metadata": {"name": name}, "spec": {"nodeName": name}}
    api.create_cluster_custom_object(contract.GROUP, contract.VERSION, contract.NODE_PLURAL, body)
    try:
        status = {"status": {"address": "192.0.2.1", "tunnels": [
            {"name": "mesh", "keyGenerationsLoaded": [1, 2], "keyGenerationInUse": 2}]}}
        api.patch_cluster_custom_object_status(
            contract.GROUP, contract.VERSION, contract.NODE_PLURAL, name, status
        )
        stored = api.get_cluster_custom_object(
            contract.GROUP, contract.VERSION, contract.NODE_PLURAL, name
        )
        assert contract.node_generation_in_use(stored, "mesh") == 2
        assert contract.node_generations_loaded(stored, "mesh") == [1, 2]
    finally:
        api.delete_cluster_custom_object(
            contract.GROUP, contract.VERSION, contract.NODE_PLURAL, name
        )
