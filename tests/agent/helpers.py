"""Builders for Node, IPsecTunnel and key Secret objects as the API server returns them."""

from __future__ import annotations

from typing import Any

from kube_ipsec import contract


def node(name: str, address: str, pod_cidr: str | None = None, **labels: str) -> dict[str, Any]:
    spec = {"podCIDRs": [pod_cidr]} if pod_cidr else {}
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": spec,
        "status": {"addresses": [{"type": "Hostname", "address": name},
                                 {"type": "InternalIP", "address": address}]},
    }


def tunnel(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": contract.API_VERSION, "kind": contract.TUNNEL_KIND,
            "metadata": {"name": name}, "spec": spec}


def keyset(current: int = 1, generations: tuple[int, ...] = (1,),
           peer_psks: dict[str, bytes] | None = None) -> contract.KeySet:
    gens = tuple(
        contract.KeyGeneration(n, "2026-01-01T00:00:00Z", bytes([n]) * contract.KEY_BYTES)
        for n in generations
    )
    return contract.KeySet(current, gens, peer_psks or {})


def key_secret(tunnel_name: str, keys: contract.KeySet) -> dict[str, Any]:
    return {
        "metadata": {
            "name": contract.secret_name(tunnel_name),
            "labels": {contract.LABEL_COMPONENT: contract.COMPONENT_KEYS,
                       contract.LABEL_TUNNEL: tunnel_name},
        },
        "data": keys.to_secret_data(),
    }
