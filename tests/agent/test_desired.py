"""We test these aspects of the desired-state computation (agent/desired.py):

- transport mode pairs node addresses, tunnel mode pairs pod CIDRs with node IPs outside;
- both ends of a pair derive the same PSK for every generation and agree on who initiates;
- node selectors pick members; non-members get nothing;
- external peers get the key Secret's peer PSK, and we always initiate;
- a tunnel without keys still yields peers (policies fail closed) but does not initiate;
- overlapping tunnels: the first by name owns a pair, the other reports it;
- an invalid spec is reported, not raised.
"""

from kube_ipsec.agent import desired
from tests.agent import helpers


def nodes(*objs):
    infos = [desired.NodeInfo.from_object(o) for o in objs]
    return {n.name: n for n in infos}


NODES = nodes(
    helpers.node("node-a", "10.0.0.1", "10.244.0.0/24", role="mesh"),
    helpers.node("node-b", "10.0.0.2", "10.244.1.0/24", role="mesh"),
    helpers.node("node-c", "10.0.0.3", "10.244.2.0/24"),
)


def tunnels(*objs):
    return [desired.TunnelInfo.from_object(o) for o in objs]


def test_transport_mode_pairs_node_addresses_and_lower_name_initiates():
    keys = {"mesh": helpers.keyset(current=2, generations=(1, 2, 3))}
    a = desired.compute("node-a", NODES, tunnels(helpers.tunnel("mesh")), keys)
    b = desired.compute("node-b", NODES, tunnels(helpers.tunnel("mesh")), keys)
    ab, ba = a.peers[("mesh", "node-b")], b.peers[("mesh", "node-a")]
    assert (ab.local_address, ab.remote_address) == ("10.0.0.1", "10.0.0.2")
    assert ab.selectors == (desired.Selector("10.0.0.1/32", "10.0.0.2/32"),)
    assert ab.initiator and not ba.initiator
    assert ab.initiate_generation == 2
    assert ab.generations == (1, 2, 3)
    assert ab.psks == ba.psks
    assert len({psk for _, psk in ab.psks}) == 3
    assert set(a.peers) == {("mesh", "node-b"), ("mesh", "node-c")}
    assert a.tunnels == {"mesh": (1, 2, 3)}
    assert a.local_address == "10.0.0.1"


def test_pair_psks_differ_between_pairs():
    keys = {"mesh": helpers.keyset()}
    a = desired.compute("node-a", NODES, tunnels(helpers.tunnel("mesh")), keys)
    assert a.peers[("mesh", "node-b")].psks != a.peers[("mesh", "node-c")].psks


def test_tunnel_mode_selects_pod_cidrs():
    t = helpers.tunnel("pods", mode="tunnel")
    a = desired.compute("node-a", NODES, tunnels(t), {"pods": helpers.keyset()})
    peer = a.peers[("pods", "node-b")]
    assert peer.selectors == (desired.Selector("10.244.0.0/24", "10.244.1.0/24"),)
    assert (peer.local_address, peer.remote_address) == ("10.0.0.1", "10.0.0.2")


def test_node_selector_limits_membership():
    t = helpers.tunnel("mesh", nodeSelector={"matchLabels": {"role": "mesh"}})
    a = desired.compute("node-a", NODES, tunnels(t), {"mesh": helpers.keyset()})
    assert set(a.peers) == {("mesh", "node-b")}
    c = desired.compute("node-c", NODES, tunnels(t), {"mesh": helpers.keyset()})
    assert c.peers == {} and c.tunnels == {}


def test_external_peer_uses_secret_psk_and_we_initiate():
    t = helpers.tunnel("gw", nodeSelector={"matchLabels": {"role": "mesh"}}, peers=[
        {"name": "gateway", "address": "192.0.2.10", "pskSecretRef": {"name": "gw-psk"}}])
    keys = {"gw": helpers.keyset(peer_psks={"gateway": b"g" * 32})}
    b = desired.compute("node-b", NODES, tunnels(t), keys)
    gw = b.peers[("gw", "gateway")]
    assert gw.external and gw.initiator
    assert gw.psks == ((desired.EXTERNAL_GENERATION, b"g" * 32),)
    assert gw.selectors == (desired.Selector("10.0.0.2/32", "192.0.2.10/32"),)
    assert (gw.local_id, gw.remote_id) == ("node-b", "gateway")


def test_without_keys_peers_exist_but_nobody_initiates():
    a = desired.compute("node-a", NODES, tunnels(helpers.tunnel("mesh")), {})
    peer = a.peers[("mesh", "node-b")]
    assert peer.initiate_generation is None and peer.psks == ()
    assert "no key Secret" in a.errors["mesh"]
    assert a.tunnels == {"mesh": ()}


def test_overlapping_tunnels_first_name_owns_the_pair():
    keys = {"a-mesh": helpers.keyset(), "b-mesh": helpers.keyset()}
    a = desired.compute("node-a", NODES, tunnels(helpers.tunnel("b-mesh"),
                                                 helpers.tunnel("a-mesh")), keys)
    assert {k[0] for k in a.peers} == {"a-mesh"}
    assert "already encrypted by tunnel a-mesh" in a.errors["b-mesh"]


def test_invalid_spec_is_reported():
    a = desired.compute("node-a", NODES, tunnels(helpers.tunnel("bad", cipher="rot13")), {})
    assert a.peers == {} and "spec.cipher" in a.errors["bad"]


def test_unknown_local_node_yields_nothing():
    a = desired.compute("node-x", NODES, tunnels(helpers.tunnel("mesh")), {})
    assert a.peers == {} and a.local_address is None


def test_ipv6_only_pair_uses_ipv6():
    ns = nodes(helpers.node("a", "fd00::1"), helpers.node("b", "fd00::2"))
    d = desired.compute("a", ns, tunnels(helpers.tunnel("m")), {"m": helpers.keyset()})
    assert d.peers[("m", "b")].selectors == (desired.Selector("fd00::1/128", "fd00::2/128"),)


def test_repr_never_shows_psks():
    keys = {"mesh": helpers.keyset()}
    a = desired.compute("node-a", NODES, tunnels(helpers.tunnel("mesh")), keys)
    peer = a.peers[("mesh", "node-b")]
    assert peer.psks[0][1].hex() not in repr(peer)
