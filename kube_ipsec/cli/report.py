"""Pure reports over the cluster's objects: ``status`` and ``diagnose``.

Everything here takes plain dicts (and the current time) and returns plain dicts, so the same
data renders as tables or JSON and tests need no API server.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from kube_ipsec import contract
from kube_ipsec.cli import xfrmstat

Obj = Mapping[str, Any]
DEFAULT_STALE_AFTER = datetime.timedelta(minutes=2)
XFRM_METRIC = "kube_ipsec_agent_xfrm_stat_total"


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """The objects one report is computed from, read once."""

    tunnels: list[dict[str, Any]]
    ipsec_nodes: list[dict[str, Any]]
    nodes: list[dict[str, Any]]
    now: datetime.datetime

    def ipsec_node(self, name: str) -> Obj | None:
        return next((n for n in self.ipsec_nodes if _name(n) == name), None)

    def node(self, name: str) -> Obj | None:
        return next((n for n in self.nodes if _name(n) == name), None)

    def selected(self, tunnel: Obj) -> list[str]:
        selector = (tunnel.get("spec") or {}).get("nodeSelector") or {}
        return sorted(
            _name(n) for n in self.nodes
            if contract.selector_matches(selector, (n.get("metadata") or {}).get("labels") or {})
        )


def _name(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def _condition(tunnel: Obj, kind: contract.Condition) -> Obj:
    for cond in (tunnel.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind.value:
            return dict(cond)
    return {}


def _parse_time(value: Any) -> datetime.datetime | None:
    if not value:
        return None
    try:
        return datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def age(value: Any, now: datetime.datetime) -> float | None:
    """Seconds since an RFC 3339 timestamp (None if absent or unreadable)."""
    then = _parse_time(value)
    return None if then is None else (now - then).total_seconds()


def _tunnel_entry(ipsec_node: Obj, tunnel: str) -> Obj | None:
    for entry in (ipsec_node.get("status") or {}).get("tunnels") or []:
        if entry.get("name") == tunnel:
            return dict(entry)
    return None


def _established(peer: Obj) -> bool:
    return bool(
        peer.get("ikeState") == contract.IKE_ESTABLISHED
        and peer.get("childState") == contract.CHILD_INSTALLED
    )


# --- status -------------------------------------------------------------------------------------


def status(snap: Snapshot, stale_after: datetime.timedelta = DEFAULT_STALE_AFTER) -> dict[str, Any]:
    return {
        "tunnels": [_tunnel_row(snap, t) for t in snap.tunnels],
        "nodes": [_node_row(snap, n, stale_after) for n in snap.ipsec_nodes],
        "peers": [
            _peer_row(_name(n), entry.get("name", ""), peer)
            for n in snap.ipsec_nodes
            for entry in (n.get("status") or {}).get("tunnels") or []
            for peer in entry.get("peers") or []
        ],
        "keyGenerations": [_skew(snap, t) for t in snap.tunnels],
    }


def _tunnel_row(snap: Snapshot, tunnel: Obj) -> dict[str, Any]:
    spec, st = tunnel.get("spec") or {}, tunnel.get("status") or {}
    ready = _condition(tunnel, contract.Condition.READY)
    rotation = st.get("rotation") or {}
    nodes = st.get("nodes") or {}
    return {
        "name": _name(tunnel),
        "mode": spec.get("mode", "transport"),
        "cipher": spec.get("cipher") or spec.get("integrity") or "",
        "enforcement": spec.get("enforcement", "require"),
        "ready": ready.get("status", "Unknown"),
        "reason": ready.get("reason", ""),
        "selected": len(snap.selected(tunnel)),
        "nodesReady": nodes.get("ready"),
        "keyGeneration": st.get("keyGeneration"),
        "rotationPhase": rotation.get("phase", ""),
        "lastRotation": rotation.get("lastRotation"),
        "nextRotation": rotation.get("nextRotation"),
    }


def _node_row(snap: Snapshot, ipsec_node: Obj, stale_after: datetime.timedelta) -> dict[str, Any]:
    st = ipsec_node.get("status") or {}
    heartbeat_age = age(st.get("heartbeat"), snap.now)
    peers = [p for e in st.get("tunnels") or [] for p in e.get("peers") or []]
    return {
        "name": _name(ipsec_node),
        "address": st.get("address", ""),
        "heartbeatAge": heartbeat_age,
        "stale": heartbeat_age is None or heartbeat_age > stale_after.total_seconds(),
        "peersEstablished": sum(_established(p) for p in peers),
        "peers": len(peers),
        "generationsInUse": {
            e.get("name"): e.get("keyGenerationInUse") for e in st.get("tunnels") or []
        },
        "mtu": {e.get("name"): e["mtu"] for e in st.get("tunnels") or [] if "mtu" in e},
        "lastError": st.get("lastError", ""),
    }


def _peer_row(node: str, tunnel: str, peer: Obj) -> dict[str, Any]:
    return {
        "node": node,
        "tunnel": tunnel,
        "peer": peer.get("name", ""),
        "address": peer.get("address", ""),
        "ikeState": peer.get("ikeState", ""),
        "childState": peer.get("childState", ""),
        "keyGeneration": peer.get("keyGeneration"),
        "spisIn": list(peer.get("spisIn") or []),
        "spisOut": list(peer.get("spisOut") or []),
        "established": peer.get("established"),
        "lastError": peer.get("lastError", ""),
    }


def _skew(snap: Snapshot, tunnel: Obj) -> dict[str, Any]:
    """Which key generation each node uses; more than one (or not the current) is skew."""
    name = _name(tunnel)
    current = (tunnel.get("status") or {}).get("keyGeneration")
    in_use: dict[str, list[str]] = {}
    for ipsec_node in snap.ipsec_nodes:
        gen = contract.node_generation_in_use(ipsec_node, name)
        if gen is not None:
            in_use.setdefault(str(gen), []).append(_name(ipsec_node))
    behind = sorted(
        n for g, nodes in in_use.items() if current is not None and int(g) != current
        for n in nodes
    )
    rotating = _condition(tunnel, contract.Condition.ROTATING).get("status") == "True"
    return {
        "tunnel": name,
        "current": current,
        "inUse": {g: sorted(n) for g, n in sorted(in_use.items())},
        "skewed": len(in_use) > 1 or bool(behind),
        "behind": behind,
        "rotating": rotating,
    }


def xfrm_counters(metrics_by_node: Mapping[str, str]) -> list[dict[str, Any]]:
    """Non-zero xfrm_stat counters from each agent's /metrics, with their known causes."""
    rows: list[dict[str, Any]] = []
    for node, text in sorted(metrics_by_node.items()):
        if text.startswith("# error:"):
            rows.append({"node": node, "counter": "", "value": None, "error": text[9:].strip()})
            continue
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name != XFRM_METRIC or not sample.value:
                    continue
                info = xfrmstat.explain(sample.labels.get("counter", ""))
                rows.append({
                    "node": node, "counter": info.name, "value": int(sample.value),
                    "meaning": info.meaning, "cause": info.cause, "fix": info.fix,
                })
    return rows


# --- diagnose -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Finding:
    severity: str  # "ok", "info", "warning" or "error"
    tunnel: str
    peer: str
    message: str


def diagnose(snap: Snapshot, node: str, *, peer: str | None = None, tunnel: str | None = None,
             stale_after: datetime.timedelta = DEFAULT_STALE_AFTER) -> dict[str, Any]:
    """Why traffic between ``node`` and its peers is (not) encrypted, check by check."""
    findings: list[Finding] = []
    tunnels = [t for t in snap.tunnels if tunnel is None or _name(t) == tunnel]
    if snap.node(node) is None:
        findings.append(Finding("error", "", "", f"there is no Node named {node!r}"))
    elif not tunnels:
        what = f"IPsecTunnel {tunnel!r}" if tunnel else "IPsecTunnel"
        findings.append(Finding("error", "", "", f"no {what} exists: nothing is encrypted"))
    else:
        for t in tunnels:
            findings += _diagnose_tunnel(snap, node, t, peer, stale_after)
    errors = [f for f in findings if f.severity == "error"]
    return {
        "node": node,
        "peer": peer,
        "encrypted": not errors,
        "findings": [dataclasses.asdict(f) for f in findings],
    }


def _diagnose_tunnel(snap: Snapshot, node: str, tunnel: Obj, only_peer: str | None,
                     stale_after: datetime.timedelta) -> Iterable[Finding]:
    name = _name(tunnel)
    spec = tunnel.get("spec") or {}

    def f(severity: str, message: str, peer: str = "") -> Finding:
        return Finding(severity, name, peer, message)

    selected = snap.selected(tunnel)
    if node not in selected:
        yield f("error", f"node {node} is not selected by the tunnel's nodeSelector "
                         f"{spec.get('nodeSelector') or {}}")
        return
    yield f("ok", f"node is selected ({len(selected)} nodes in the mesh)")
    ipsec_node = snap.ipsec_node(node)
    if ipsec_node is None:
        yield f("error", f"no IPsecNode {node}: the agent never reported from this node "
                         "(is the agent pod running there?)")
        return
    st = ipsec_node.get("status") or {}
    heartbeat_age = age(st.get("heartbeat"), snap.now)
    if heartbeat_age is None or heartbeat_age > stale_after.total_seconds():
        seen = "never" if heartbeat_age is None else f"{int(heartbeat_age)}s ago"
        yield f("error", f"stale heartbeat (last {seen}): the agent is not running or "
                         "cannot reach the API server")
    if st.get("lastError"):
        yield f("warning", f"agent's last error: {st['lastError']}")
    entry = _tunnel_entry(ipsec_node, name)
    if entry is None:
        yield f("error", "the agent does not report this tunnel yet")
        return
    yield from _generation_findings(tunnel, entry, f)
    peers = {p.get("name"): p for p in entry.get("peers") or []}
    wanted = [n for n in selected if n != node] + [p["name"] for p in spec.get("peers") or []]
    if only_peer is not None:
        if only_peer not in wanted:
            yield f("error", f"{only_peer} is not a peer of {node} in this tunnel "
                             "(not selected, or not an external peer)", only_peer)
            return
        wanted = [only_peer]
    failing = []
    for peer_name in wanted:
        problems = list(_peer_findings(snap, peer_name, peers.get(peer_name), entry,
                                       stale_after))
        for severity, message in problems:
            yield f(severity, message, peer_name)
        if any(s == "error" for s, _ in problems):
            failing.append(peer_name)
        else:
            yield f("ok", "ESTABLISHED, SAs installed", peer_name)
    if failing:
        if spec.get("enforcement") == "allow-plaintext":
            yield f("info", f"enforcement allow-plaintext: traffic to {', '.join(failing)} "
                            "currently flows unencrypted")
        else:
            yield f("info", f"enforcement require: traffic to {', '.join(failing)} is dropped "
                            "until the SAs are up")


def _generation_findings(tunnel: Obj, entry: Obj, f: Any) -> Iterable[Finding]:
    current = (tunnel.get("status") or {}).get("keyGeneration")
    loaded = [int(g) for g in entry.get("keyGenerationsLoaded") or []]
    in_use = entry.get("keyGenerationInUse")
    rotating = _condition(tunnel, contract.Condition.ROTATING).get("status") == "True"
    if current is None:
        yield f("warning", "the tunnel has no key generation yet (operator not running?)")
        return
    if current not in loaded:
        yield f("error", f"key generation skew: the node has not loaded the current "
                         f"generation {current} (loaded: {loaded or 'none'})")
    elif in_use != current:
        severity = "info" if rotating else "warning"
        yield f(severity, f"key generation skew: the node uses generation {in_use}, "
                          f"current is {current}" + (" (rotation in progress)" if rotating else ""))
    else:
        yield f("ok", f"key generation {current} loaded and in use")


def _peer_findings(snap: Snapshot, name: str, peer: Obj | None, entry: Obj,
                   stale_after: datetime.timedelta) -> Iterable[tuple[str, str]]:
    other = snap.ipsec_node(name)
    if snap.node(name) is not None:  # a cluster node, not an external peer
        if other is None:
            yield "error", f"no IPsecNode {name}: the peer's agent never reported"
        else:
            other_age = age((other.get("status") or {}).get("heartbeat"), snap.now)
            if other_age is None or other_age > stale_after.total_seconds():
                yield "error", "the peer's agent has a stale heartbeat"
    if peer is None:
        yield "error", "no IKE SA with this peer (not negotiated yet, or IKE keeps failing)"
        return
    if peer.get("ikeState") != contract.IKE_ESTABLISHED:
        yield "error", f"IKE SA is {peer.get('ikeState') or 'absent'}, not ESTABLISHED"
    elif peer.get("childState") != contract.CHILD_INSTALLED:
        yield "error", f"Child SA is {peer.get('childState') or 'absent'}, not INSTALLED"
    in_use = entry.get("keyGenerationInUse")
    if peer.get("keyGeneration") is not None and in_use is not None \
            and peer["keyGeneration"] != in_use:
        yield "warning", (f"authenticated with key generation {peer['keyGeneration']}, "
                          f"node uses {in_use}")
    if peer.get("lastError"):
        yield "warning", f"last error: {peer['lastError']}"
