"""We test the handler layer's own logic: which IPsecNode changes wake which tunnels."""

from __future__ import annotations

from typing import Any

from kube_ipsec.operator import handlers


def ipsec_node(*entries: dict[str, Any], heartbeat: str = "t0") -> dict[str, Any]:
    return {"status": {"heartbeat": heartbeat, "tunnels": list(entries)}}


def operator() -> handlers.Operator:
    return handlers.Operator(handlers.Config(namespace="ns"), None, None, None)  # type: ignore[arg-type]


def test_only_changed_tunnel_entries_wake_their_tunnels() -> None:
    op = operator()
    a1, b1 = {"name": "a", "keyGenerationsLoaded": [1]}, {"name": "b", "keyGenerationsLoaded": [1]}
    assert op.reported_tunnels_changed("n1", ipsec_node(a1, b1)) == {"a", "b"}
    assert op.reported_tunnels_changed("n1", ipsec_node(a1, b1, heartbeat="t1")) == set()
    a2 = {"name": "a", "keyGenerationsLoaded": [1, 2]}
    assert op.reported_tunnels_changed("n1", ipsec_node(a2, b1)) == {"a"}
    assert op.reported_tunnels_changed("n1", ipsec_node(a2)) == {"b"}  # b dropped
    assert op.reported_tunnels_changed("n1", None) == {"a"}  # IPsecNode deleted
    assert op.reported_tunnels_changed("n2", ipsec_node()) == set()


def test_node_label_changes_wake_the_tunnels_that_select_the_node() -> None:
    op = operator()
    tunnels = {
        "web": {"spec": {"nodeSelector": {"matchLabels": {"role": "web"}}}},
        "all": {"spec": {}},
        "db": {"spec": {"nodeSelector": {"matchLabels": {"role": "db"}}}},
    }
    op.indexes = {"tunnels_index": {name: [body] for name, body in tunnels.items()}}
    assert op.tunnels_selecting("n1", {"role": "web"}) == {"web", "all"}
    assert op.tunnels_selecting("n1", {"role": "web"}) == set()  # unchanged labels
    assert op.tunnels_selecting("n1", {"role": "db"}) == {"web", "db", "all"}  # left and joined
    assert op.tunnels_selecting("n1", None) == {"db", "all"}  # Node deleted
