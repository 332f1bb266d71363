"""From Nodes and IPsecNodes to what each selected node reports about one tunnel.

A tunnel's members are the core v1 Nodes its ``nodeSelector`` matches; what they say comes from
the IPsecNode their agent writes. A selected node without an IPsecNode (no agent yet) reports
nothing: it is neither ready nor acknowledging, so a rotation waits for it rather than retire a
key it might use.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kube_ipsec import contract
from kube_ipsec.operator.rotation import NodeReport


def tunnel_entry(ipsec_node: Mapping[str, Any], tunnel: str) -> Mapping[str, Any] | None:
    for entry in (ipsec_node.get("status") or {}).get("tunnels") or []:
        if entry.get("name") == tunnel:
            return dict(entry)
    return None


def is_ready(ipsec_node: Mapping[str, Any], tunnel: str) -> bool:
    """Every peer of the tunnel has its IKE SA established and its Child SA installed."""
    entry = tunnel_entry(ipsec_node, tunnel)
    if entry is None:
        return False
    return all(
        peer.get("ikeState") == contract.IKE_ESTABLISHED
        and peer.get("childState") == contract.CHILD_INSTALLED
        for peer in entry.get("peers") or []
    )


def reports(
        tunnel: str,
        selector: Mapping[str, Any],
        *,
        node_labels: Mapping[str, Mapping[str, str]],
        ipsec_nodes: Mapping[str, Mapping[str, Any]],
) -> list[NodeReport]:
    """One report per selected node, sorted by name."""
    result = []
    for name in sorted(node_labels):
        if not contract.selector_matches(selector, node_labels[name]):
            continue
        ipsec_node = ipsec_nodes.get(contract.node_object_name(name)) or {}
        result.append(NodeReport(
            name=name,
            loaded=frozenset(contract.node_generations_loaded(ipsec_node, tunnel)),
            in_use=contract.node_generation_in_use(ipsec_node, tunnel),
            ready=is_ready(ipsec_node, tunnel),
        ))
    return result

