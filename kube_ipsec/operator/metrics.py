"""Prometheus metrics of the operator, on a registry of its own.

Gauges are recomputed from what the reconciler last saw of each tunnel, so a deleted tunnel
drops out of them. Nothing here ever carries key material: generation numbers, counts and
condition states only.
"""

from __future__ import annotations

from collections import Counter as Tally

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from kube_ipsec import contract

ROTATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.tunnels = Gauge(
            "kube_ipsec_operator_tunnels", "Tunnels by condition and status.",
            ["condition", "status"], registry=self.registry,
        )
        self.rotations = Counter(
            "kube_ipsec_operator_rotations", "Key rotations by result.",
            ["result"], registry=self.registry,
        )
        self.rotation_duration = Histogram(
            "kube_ipsec_operator_rotation_duration_seconds",
            "From staging a key generation to retiring the previous one.",
            buckets=ROTATION_BUCKETS, registry=self.registry,
        )
        self.key_generation = Gauge(
            "kube_ipsec_operator_key_generation", "Current key generation per tunnel.",
            ["tunnel"], registry=self.registry,
        )
        self.nodes_acknowledged = Gauge(
            "kube_ipsec_operator_nodes_acknowledged",
            "Selected nodes that loaded every usable key generation of the tunnel.",
            ["tunnel"], registry=self.registry,
        )
        self.reconcile_errors = Counter(
            "kube_ipsec_operator_reconcile_errors", "Reconciliations that failed.",
            registry=self.registry,
        )
        self._conditions: dict[str, dict[str, str]] = {}

    def serve(self, port: int, address: str = "0.0.0.0") -> None:
        start_http_server(port, addr=address, registry=self.registry)

    def observe_tunnel(self, tunnel: str, *, conditions: dict[str, str],
                       key_generation: int | None, acknowledged: int) -> None:
        self._conditions[tunnel] = conditions
        if key_generation is not None:
            self.key_generation.labels(tunnel).set(key_generation)
        self.nodes_acknowledged.labels(tunnel).set(acknowledged)
        self._refresh_tunnels()

    def forget_tunnel(self, tunnel: str) -> None:
        self._conditions.pop(tunnel, None)
        for gauge in (self.key_generation, self.nodes_acknowledged):
            try:
                gauge.remove(tunnel)
            except KeyError:
                pass
        self._refresh_tunnels()

    def _refresh_tunnels(self) -> None:
        tally = Tally(
            (ctype, status)
            for conditions in self._conditions.values()
            for ctype, status in conditions.items()
        )
        for ctype in contract.Condition:
            for status in ("True", "False", "Unknown"):
                self.tunnels.labels(ctype.value, status).set(tally[(ctype.value, status)])
