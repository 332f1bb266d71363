"""We test these aspects of the translations (agent/translate.py):

- the IKE peer configuration follows the tunnel spec: identities are the node names (FQDN),
  lifetimes and DPD come from spec.ike, transport mode leaves selectors dynamic, tunnel mode
  carries the pod CIDRs;
- the pair's policies: out and in (plus fwd in tunnel mode), one template with our reqid,
  optional only under allow-plaintext, all in kube-ipsec's ownership range;
- the API server bypass is template-less, higher priority, TCP in both directions.
"""

from kube_ipsec import ike
from kube_ipsec.agent import desired, translate
from kube_ipsec.xfrm import model as xm
from tests.agent import helpers

NODES = {n.name: n for n in map(desired.NodeInfo.from_object, [
    helpers.node("node-a", "10.0.0.1", "10.244.0.0/24"),
    helpers.node("node-b", "10.0.0.2", "10.244.1.0/24")])}


def peer(**spec):
    want = desired.compute("node-a", NODES, [desired.TunnelInfo.from_object(
        helpers.tunnel("t", **spec))], {"t": helpers.keyset()})
    return want.peers[("t", "node-b")]


def test_peer_config_follows_the_spec():
    cfg = translate.peer_config(peer(ike={"lifetime": "2h", "childLifetime": "30m",
                                          "dpdInterval": "10s", "dhGroup": "ecp384"}))
    assert cfg.local_id == ike.Identity.fqdn("node-a")
    assert cfg.remote_id == ike.Identity.fqdn("node-b")
    assert cfg.remote_host == "10.0.0.2"
    assert (cfg.ike_rekey_time, cfg.child.rekey_time, cfg.dpd_delay) == (7200, 1800, 10)
    assert cfg.child.life_time > cfg.child.rekey_time
    assert cfg.child.mode is ike.Mode.TRANSPORT and cfg.child.local_ts == ()
    assert cfg.child.replay_window == 1024


def test_tunnel_mode_config_carries_pod_cidrs():
    cfg = translate.peer_config(peer(mode="tunnel"))
    assert cfg.child.mode is ike.Mode.TUNNEL
    assert [str(ts) for ts in cfg.child.local_ts] == ["10.244.0.0-10.244.0.255"]
    assert [str(ts) for ts in cfg.child.remote_ts] == ["10.244.1.0-10.244.1.255"]


def test_pair_policies_transport_and_tunnel():
    reqid = translate.FIRST_PEER_REQID
    out, inbound = translate.pair_policies(peer(), reqid)
    assert (out.dir, inbound.dir) == (xm.Dir.OUT, xm.Dir.IN)
    assert str(out.selector.src) == "10.0.0.1/32" and str(out.selector.dst) == "10.0.0.2/32"
    assert out.templates[0].reqid == reqid and not out.templates[0].optional
    assert all(xm.owned_policy(p) for p in (out, inbound))
    tunnel = translate.pair_policies(peer(mode="tunnel"), reqid)
    assert [p.dir for p in tunnel] == [xm.Dir.OUT, xm.Dir.IN, xm.Dir.FWD]
    assert all(p.templates[0].mode is xm.Mode.TUNNEL for p in tunnel)
    assert str(tunnel[0].templates[0].dst) == "10.0.0.2"  # node IPs outside
    relaxed = translate.pair_policies(peer(enforcement="allow-plaintext"), reqid)
    assert all(p.templates[0].optional for p in relaxed)


def test_api_server_bypass():
    policies = translate.bypass_policies("10.0.0.1", "10.0.0.2", [6443, 443, 6443])
    assert len(policies) == 8
    assert all(not p.templates and p.action is xm.Action.ALLOW for p in policies)
    assert all(p.priority < translate.PAIR_PRIORITY and xm.owned_policy(p) for p in policies)
    assert {(p.dir, p.selector.sport, p.selector.dport) for p in policies if 6443 in (
        p.selector.sport, p.selector.dport)} == {
        (xm.Dir.OUT, 0, 6443), (xm.Dir.IN, 6443, 0), (xm.Dir.OUT, 6443, 0), (xm.Dir.IN, 0, 6443)}
