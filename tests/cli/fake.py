"""A fake cluster for the CLI: the objects of a small mesh, built per test."""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any

from kube_ipsec import contract
from kube_ipsec.cli.cluster import ClusterError

NOW = datetime.datetime(2026, 5, 1, 12, 0, 0, tzinfo=datetime.UTC)


def ts(seconds_ago: float) -> str:
    return contract.utcnow_rfc3339(NOW - datetime.timedelta(seconds=seconds_ago))


def node(name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **labels}}}


def peer(name: str, address: str, *, ike: str = "ESTABLISHED", child: str = "INSTALLED",
         gen: int = 2, error: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": name, "address": address, "ikeState": ike, "childState": child,
        "keyGeneration": gen, "spisIn": ["c1a2b3c4"], "spisOut": ["d5e6f7a8"],
        "established": ts(600),
    }
    if error:
        out["lastError"] = error
    return out


def ipsec_node(name: str, address: str, peers: list[dict[str, Any]], *, tunnel: str = "mesh",
               loaded: tuple[int, ...] = (1, 2), in_use: int = 2, heartbeat_age: float = 10,
               error: str = "") -> dict[str, Any]:
    status: dict[str, Any] = {
        "address": address,
        "heartbeat": ts(heartbeat_age),
        "tunnels": [{"name": tunnel, "keyGenerationsLoaded": list(loaded),
                     "keyGenerationInUse": in_use, "peers": peers, "mtu": 1438}],
    }
    if error:
        status["lastError"] = error
    return {"apiVersion": contract.API_VERSION, "kind": contract.NODE_KIND,
            "metadata": {"name": name}, "status": status}


def tunnel(name: str = "mesh", *, selector: dict[str, Any] | None = None, gen: int = 2,
           ready: str = "True", rotating: str = "False",
           enforcement: str = "require", peers: list[dict[str, Any]] | None = None,
           ) -> dict[str, Any]:
    spec: dict[str, Any] = {"nodeSelector": selector or {}, "mode": "transport",
                            "cipher": "aes-gcm-256", "enforcement": enforcement}
    if peers:
        spec["peers"] = peers
    return {
        "apiVersion": contract.API_VERSION, "kind": contract.TUNNEL_KIND,
        "metadata": {"name": name},
        "spec": spec,
        "status": {
            "keyGeneration": gen,
            "conditions": [
                {"type": "Ready", "status": ready, "reason": "AllPeersUp" if ready == "True"
                 else "PeersDown"},
                {"type": "Rotating", "status": rotating},
            ],
            "nodes": {"selected": 3, "ready": 3 if ready == "True" else 2},
            "rotation": {"phase": "Idle", "lastRotation": ts(3600)},
        },
    }


def healthy_mesh() -> FakeCluster:
    """Three nodes a, b, c, all selected, all pairs ESTABLISHED on generation 2."""
    addresses = {"a": "10.0.0.1", "b": "10.0.0.2", "c": "10.0.0.3"}
    ipsec_nodes = [
        ipsec_node(n, addr, [peer(p, paddr) for p, paddr in addresses.items() if p != n])
        for n, addr in addresses.items()
    ]
    return FakeCluster([tunnel()], ipsec_nodes, [node(n) for n in addresses])


@dataclasses.dataclass
class FakeCluster:
    tunnel_objs: list[dict[str, Any]]
    ipsec_node_objs: list[dict[str, Any]]
    node_objs: list[dict[str, Any]]
    metrics: dict[str, str] = dataclasses.field(default_factory=dict)
    annotated: list[tuple[str, dict[str, str]]] = dataclasses.field(default_factory=list)

    def tunnels(self) -> list[dict[str, Any]]:
        return self.tunnel_objs

    def ipsec_nodes(self) -> list[dict[str, Any]]:
        return self.ipsec_node_objs

    def nodes(self) -> list[dict[str, Any]]:
        return self.node_objs

    def annotate_tunnel(self, name: str, annotations: dict[str, str]) -> dict[str, Any]:
        for t in self.tunnel_objs:
            if t["metadata"]["name"] == name:
                self.annotated.append((name, annotations))
                t["metadata"].setdefault("annotations", {}).update(annotations)
                return t
        raise ClusterError(f"IPsecTunnel {name!r} not found")

    def agent_metrics(self, namespace: str, port: int) -> dict[str, str]:
        return self.metrics

    def ipsec_node(self, name: str) -> dict[str, Any]:
        return next(n for n in self.ipsec_node_objs if n["metadata"]["name"] == name)
