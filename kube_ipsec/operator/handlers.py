"""kopf registrations. Handlers only gather inputs and delegate.

Watches feed four in-memory indexes (tunnels, Nodes' labels, IPsecNodes, key Secrets), so a
reconciliation costs no reads in the steady state. Every cause that may move a tunnel forward
funnels into :meth:`Operator.trigger`:

* kopf's change handlers on IPsecTunnel (create, spec/annotation update, resume at start-up),
* a per-tunnel timer (``--resync-interval``): due rotations, acknowledgement timeouts,
* Node label changes, for the tunnels that selected the node before or select it now,
* IPsecNode changes to a tunnel's entry (acknowledgements advance a rotation at once rather
  than at the next tick; heartbeats alone trigger nothing),
* key Secret changes (a deleted or damaged Secret is restored at once).

Triggers are serialised per tunnel and coalesced: while one reconciliation runs, any number of
new triggers queue a single follow-up, which reads the state afresh. Deletion goes through the
same lock, after which kopf drops the finalizer.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import datetime
import logging
from collections.abc import Mapping
from typing import Any

import kopf
import kubernetes

from kube_ipsec import contract
from kube_ipsec.operator import reconcile, secrets
from kube_ipsec.operator.metrics import Metrics

logger = logging.getLogger(__name__)

TUNNELS = (contract.GROUP, contract.VERSION, contract.TUNNEL_PLURAL)
IPSEC_NODES = (contract.GROUP, contract.VERSION, contract.NODE_PLURAL)
NODES = ("v1", "nodes")
SECRETS = ("v1", "secrets")
KEY_SECRET_LABELS = {
    contract.LABEL_MANAGED_BY: contract.MANAGED_BY,
    contract.LABEL_COMPONENT: contract.COMPONENT_KEYS,
}
PEERING_GROUP, PEERING_VERSION, PEERING_PLURAL = "kopf.dev", "v1", "clusterkopfpeerings"


@dataclasses.dataclass(frozen=True)
class Config:
    namespace: str
    resync_interval: float = 10.0
    peering_name: str = "kube-ipsec"
    standalone: bool = False
    priority: int = 0
    peering_lifetime: int = 60


class Operator:
    """The operator's state between handler calls: indexes, locks, the reconciler."""

    def __init__(self, config: Config, reconciler: reconcile.Reconciler, metrics: Metrics,
                 api_client: Any) -> None:
        self.config = config
        self.reconciler = reconciler
        self.metrics = metrics
        self.api_client = api_client
        self.indexes: dict[str, Any] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._queued: set[str] = set()
        self._highest: dict[str, int] = {}
        self._reports: dict[str, dict[str, Any]] = {}  # IPsecNode -> its tunnel entries
        self._labels: dict[str, dict[str, str]] = {}  # Node -> its labels
        # Tunnel -> (resourceVersion reconciled from, status written): a stale cache entry
        # would otherwise cost a redundant status patch.
        self._status: dict[str, tuple[str | None, dict[str, Any]]] = {}

    async def trigger(self, name: str) -> None:
        """Reconcile tunnel ``name`` soon; coalesces with a run already waiting."""
        if name in self._queued:
            return
        self._queued.add(name)
        async with self._locks.setdefault(name, asyncio.Lock()):
            self._queued.discard(name)
            await self._reconcile(name)

    async def remove(self, name: str) -> None:
        async with self._locks.setdefault(name, asyncio.Lock()):
            deleted = await asyncio.to_thread(self.reconciler.store.delete, name)
            logger.info("Tunnel %s deleted; key Secret %s.", name,
                        "deleted" if deleted else "was already gone")
            self.reconciler.forget(name)
            self.metrics.forget_tunnel(name)
            self._highest.pop(name, None)
            self._status.pop(name, None)
        self._locks.pop(name, None)

    async def _reconcile(self, name: str) -> None:
        body = self._one("tunnels_index", name)
        meta = (body or {}).get("metadata") or {}
        if contract.FINALIZER not in (meta.get("finalizers") or []) or meta.get(
                "deletionTimestamp"):
            return  # no keys before kopf's finalizer guarantees their cleanup; none after
        version = meta.get("resourceVersion")
        written = self._status.get(name)
        if written is not None and written[0] == version:
            body = {**body, "status": written[1]}  # the cache has not seen our last patch yet
        inputs = reconcile.Inputs(
            body=body,
            secret=self._one("keysecrets_index", name),
            node_labels=self._all("nodes_index"),
            ipsec_nodes=self._all("ipsecnodes_index"),
            now=datetime.datetime.now(datetime.UTC),
            highest_seen=self._highest.get(name, 0),
        )
        try:
            outcome = await asyncio.to_thread(self.reconciler.reconcile, inputs)
        except Exception as exc:  # reported, then retried by the timer: never a crash loop
            self.metrics.reconcile_errors.inc()
            logger.error("Tunnel %s: reconciliation failed: %s", name, secrets.describe(exc))
            return
        self._highest[name] = max(self._highest.get(name, 0), outcome.highest)
        self._status[name] = (version, outcome.status)
        for notice in outcome.notices:
            kopf.event(body, type=notice.type, reason=notice.reason, message=notice.message)
        for duration in outcome.rotations_completed:
            self.metrics.rotations.labels("completed").inc()
            self.metrics.rotation_duration.observe(duration)
        if outcome.timed_out:
            self.metrics.rotations.labels("timeout").inc()
        self.metrics.observe_tunnel(
            name, conditions=outcome.conditions,
            key_generation=outcome.status.get("keyGeneration"),
            acknowledged=int(outcome.status.get("nodes", {}).get("acknowledged", 0)),
        )

    def reported_tunnels_changed(self, node: str, body: Mapping[str, Any] | None) -> set[str]:
        """Tunnels whose entry in IPsecNode ``node`` changed (agent heartbeats alone do not)."""
        entries = {e.get("name"): e for e in ((body or {}).get("status") or {}).get("tunnels")
                   or [] if e.get("name")}
        before = self._reports.pop(node, {})
        if body is not None:
            self._reports[node] = copy.deepcopy(entries)
        return {t for t in entries.keys() | before.keys() if entries.get(t) != before.get(t)}

    def tunnels_selecting(self, node: str, labels: Mapping[str, str] | None) -> set[str]:
        """Tunnels whose membership may change with Node ``node``'s new ``labels``."""
        before = self._labels.pop(node, None)
        now = dict(labels) if labels is not None else None
        if now is not None:
            self._labels[node] = now
        if before == now:
            return set()
        selected = set()
        for name, body in self._all("tunnels_index").items():
            selector = (body.get("spec") or {}).get("nodeSelector") or {}
            try:
                if any(contract.selector_matches(selector, lb) for lb in (before, now)
                       if lb is not None):
                    selected.add(name)
            except (KeyError, TypeError, AttributeError):  # a malformed selector: let resync see
                continue
        return selected

    def _one(self, index: str, key: str) -> Any:
        store = self.indexes[index].get(key)
        return next(iter(store), None) if store is not None else None

    def _all(self, index: str) -> dict[str, Any]:
        return {key: next(iter(store)) for key, store in list(self.indexes[index].items())
                if len(store)}

    def ensure_peering_object(self) -> None:
        """kopf waits for its peering object; create it rather than stall on a fresh cluster."""
        api = kubernetes.client.CustomObjectsApi(self.api_client)
        body = {"apiVersion": f"{PEERING_GROUP}/{PEERING_VERSION}", "kind": "ClusterKopfPeering",
                "metadata": {"name": self.config.peering_name}}
        try:
            api.get_cluster_custom_object(PEERING_GROUP, PEERING_VERSION, PEERING_PLURAL,
                                          self.config.peering_name)
            return  # the usual case: the chart made it (and need not grant "create")
        except kubernetes.client.ApiException as exc:
            if exc.status != 404:
                logger.warning("Cannot read ClusterKopfPeering %s: %s",
                               self.config.peering_name, secrets.describe(exc))
                return
        try:
            api.create_cluster_custom_object(PEERING_GROUP, PEERING_VERSION, PEERING_PLURAL, body)
        except kubernetes.client.ApiException as exc:
            if exc.status != 409:
                logger.warning("Cannot create ClusterKopfPeering %s: %s",
                               self.config.peering_name, secrets.describe(exc))


def configure(settings: kopf.OperatorSettings, config: Config) -> None:
    settings.persistence.finalizer = contract.FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=contract.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=contract.GROUP, key="last-handled-configuration")
    settings.posting.loggers = False  # Events are written deliberately, never from log lines
    settings.peering.name = config.peering_name
    settings.peering.priority = config.priority
    settings.peering.lifetime = config.peering_lifetime
    settings.peering.stealth = True


def _snapshot(body: Mapping[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(dict(body))


def register(registry: kopf.OperatorRegistry, op: Operator) -> None:
    """Register every handler on ``registry``; they close over ``op``."""
    cfg = op.config

    kopf.on.login(id="login", registry=registry)(kopf.login_via_client)

    @kopf.on.startup(id="startup", registry=registry)
    async def startup(settings: kopf.OperatorSettings, **kwargs: Any) -> None:
        # kopf.operator() derives peering scope from the watch scope (namespaced here);
        # the peering object is cluster-wide so that replicas in any namespace see each other.
        settings.peering.clusterwide = True
        op.indexes = {k: kwargs[k] for k in
                      ("tunnels_index", "nodes_index", "ipsecnodes_index", "keysecrets_index")}
        if not settings.peering.standalone:
            await asyncio.to_thread(op.ensure_peering_object)

    @kopf.index(*TUNNELS, id="tunnels_index", registry=registry)
    def tunnels_index(name: str, body: kopf.Body, **_: Any) -> dict[str, Any]:
        return {name: _snapshot(body)}

    @kopf.index(*NODES, id="nodes_index", registry=registry)
    def nodes_index(name: str, labels: kopf.Labels, **_: Any) -> dict[str, Any]:
        return {name: dict(labels)}

    @kopf.index(*IPSEC_NODES, id="ipsecnodes_index", registry=registry)
    def ipsecnodes_index(name: str, body: kopf.Body, **_: Any) -> dict[str, Any]:
        return {name: {"status": copy.deepcopy(dict(body.get("status") or {}))}}

    @kopf.index(*SECRETS, id="keysecrets_index", labels=KEY_SECRET_LABELS, registry=registry)
    def keysecrets_index(name: str, labels: kopf.Labels, body: kopf.Body,
                         **_: Any) -> dict[str, Any]:
        tunnel = labels.get(contract.LABEL_TUNNEL, "")
        return {tunnel: _snapshot(body)} if name == contract.secret_name(tunnel) else {}

    @kopf.on.resume(*TUNNELS, id="reconcile-resume", registry=registry)
    @kopf.on.create(*TUNNELS, id="reconcile-create", registry=registry)
    @kopf.on.update(*TUNNELS, id="reconcile-update", registry=registry)
    async def changed(name: str, **_: Any) -> None:
        await op.trigger(name)

    @kopf.timer(*TUNNELS, id="resync", interval=cfg.resync_interval, registry=registry)
    async def resync(name: str, **_: Any) -> None:
        await op.trigger(name)

    @kopf.on.delete(*TUNNELS, id="cleanup", registry=registry)
    async def deleted(name: str, **_: Any) -> None:
        try:
            await op.remove(name)
        except kubernetes.client.ApiException as exc:
            raise kopf.TemporaryError(f"cannot delete the key Secret: {secrets.describe(exc)}",
                                      delay=cfg.resync_interval) from None

    @kopf.on.event(*IPSEC_NODES, id="ipsecnode-changed", registry=registry)
    async def ipsec_node_changed(name: str, type: str, body: kopf.Body, **_: Any) -> None:
        tunnels = op.reported_tunnels_changed(name, None if type == "DELETED" else body)
        known = op.indexes["tunnels_index"]
        await asyncio.gather(*(op.trigger(t) for t in tunnels if t in known))

    @kopf.on.event(*NODES, id="node-changed", registry=registry)
    async def node_changed(name: str, type: str | None, labels: kopf.Labels, **_: Any) -> None:
        tunnels = op.tunnels_selecting(name, None if type == "DELETED" else labels)
        if type is not None:  # the initial listing: resume handlers reconcile everything anyway
            await asyncio.gather(*(op.trigger(t) for t in tunnels))

    @kopf.on.event(*SECRETS, id="keysecret-changed", labels=KEY_SECRET_LABELS,
                   registry=registry)
    async def key_secret_changed(labels: kopf.Labels, **_: Any) -> None:
        tunnel = labels.get(contract.LABEL_TUNNEL)
        if tunnel and tunnel in op.indexes["tunnels_index"]:
            await op.trigger(tunnel)
