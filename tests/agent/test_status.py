"""We test these aspects of the IPsecNode status rendering (agent/status.py):

- keyGenerationsLoaded lists the parsed generations; keyGenerationInUse is the generation of
  all established IKE SAs, the oldest while they disagree, current when none is up, and
  ignores external gateways;
- per-peer fields (states, SPIs as hex, generation) and the summary;
- the rendered status validates against the IPsecNode CRD schema and carries no key bytes.
"""

import json
import pathlib

import jsonschema
import yaml

from kube_ipsec import contract
from kube_ipsec.agent import desired, status
from tests.agent import helpers

CRD = pathlib.Path(__file__).resolve().parents[2] / "crds" / "ipsecnodes.yaml"


def want_for(node_name="node-a", keys=None):
    nodes = {n.name: n for n in (desired.NodeInfo.from_object(o) for o in (
        helpers.node("node-a", "10.0.0.1"), helpers.node("node-b", "10.0.0.2"),
        helpers.node("node-c", "10.0.0.3")))}
    keys = keys if keys is not None else {"mesh": helpers.keyset(2, (1, 2))}
    return desired.compute(node_name, nodes, [desired.TunnelInfo.from_object(
        helpers.tunnel("mesh"))], keys), keys


def state(name, gen=None, up=False, external=False):
    return status.PeerState(
        "mesh", name, "10.0.0.9", external=external,
        ike_state=contract.IKE_ESTABLISHED if up else status.IKE_CONNECTING,
        child_state=contract.CHILD_INSTALLED if up else status.CHILD_NONE,
        key_generation=gen, spis_in=[0xD0000001] if up else [], spis_out=[0xC1] if up else [])


def render(peers, keys_current=2):
    want, _ = want_for()
    return status.render(want=want, currents={"mesh": keys_current}, peers=peers, errors=[],
                         heartbeat="2026-01-01T00:00:00Z", version="0.1.0")


def test_generation_in_use_is_the_one_all_ike_sas_share():
    peers = {("mesh", "node-b"): state("node-b", 2, True),
             ("mesh", "node-c"): state("node-c", 2, True)}
    out = render(peers)
    assert out["tunnels"][0]["keyGenerationInUse"] == 2
    assert out["tunnels"][0]["keyGenerationsLoaded"] == [1, 2]
    assert contract.node_generation_in_use({"status": out}, "mesh") == 2
    assert contract.node_generations_loaded({"status": out}, "mesh") == [1, 2]


def test_generation_in_use_is_the_oldest_while_reauth_is_in_flight():
    peers = {("mesh", "node-b"): state("node-b", 2, True),
             ("mesh", "node-c"): state("node-c", 1, True)}
    assert render(peers)["tunnels"][0]["keyGenerationInUse"] == 1


def test_generation_in_use_ignores_peers_not_up_and_external_gateways():
    peers = {("mesh", "node-b"): state("node-b", 1, False),
             ("mesh", "gw"): state("gw", 0, True, external=True)}
    assert render(peers)["tunnels"][0]["keyGenerationInUse"] == 2


def test_no_keys_means_no_generation_in_use():
    want, _ = want_for(keys={})
    out = status.render(want=want, currents={}, peers={}, errors=["x"], heartbeat="h",
                        version="v")
    assert "keyGenerationInUse" not in out["tunnels"][0]
    assert out["tunnels"][0]["keyGenerationsLoaded"] == []
    assert "no key Secret" in out["lastError"] and out["lastError"].endswith("x")


def test_peer_fields_and_summary():
    peers = {("mesh", "node-b"): state("node-b", 2, True), ("mesh", "node-c"): state("node-c")}
    out = render(peers)
    b, c = out["tunnels"][0]["peers"]
    assert b == {"name": "node-b", "address": "10.0.0.9", "ikeState": "ESTABLISHED",
                 "childState": "INSTALLED", "keyGeneration": 2,
                 "spisIn": ["d0000001"], "spisOut": ["000000c1"]}
    assert c["ikeState"] == status.IKE_CONNECTING and "keyGeneration" not in c
    assert out["peersSummary"] == "1/2"
    assert out["address"] == "10.0.0.1"


def test_status_matches_the_crd_schema_and_holds_no_keys():
    peers = {("mesh", "node-b"): state("node-b", 2, True)}
    out = render(peers)
    crd = yaml.safe_load(CRD.read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    jsonschema.validate(out, schema)
    text = json.dumps(out)
    want, keys = want_for()
    for gen in keys["mesh"].generations:
        assert gen.key.hex() not in text
    for peer in want.peers.values():
        for _, psk in peer.psks:
            assert psk.hex() not in text
