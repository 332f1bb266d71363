"""What the agent knows of the cluster: IPsecTunnels, Nodes and the tunnels' key Secrets.

One ``Reflector`` per resource runs client-go's informer loop: list, then watch from the
list's resourceVersion; on any error keep the last known objects, back off (0.5 s doubling to
30 s) and start over with a fresh list, which also drops objects deleted while we were away;
a 410 Gone (our resourceVersion was compacted) is just another reason to relist. Why not kopf
embedded: kopf's value is handler bookkeeping (finalizers, progress annotations, peering),
which the agent must not do — it only reads these objects and may only get/list/watch Secrets
in one namespace; a 60-line informer on ``kube.Api`` is simpler to reason about under outage.

``Watchers`` merges the three caches into a ``Snapshot`` for ``desired.compute`` and calls
``on_change`` after every change. Key Secrets are parsed here: a Secret that breaks the
contract (``KeyFormatError``) keeps the tunnel's last good KeySet in use and is reported
(``errors`` and a metric), never drops keys — a bad write must not cut a running mesh.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter

from kube_ipsec import contract
from kube_ipsec.agent import desired, kube, metrics

log = logging.getLogger(__name__)

KEY_SECRET_ERRORS = Counter(f"{metrics.PREFIX}_key_secret_errors_total",
                            "Key Secrets that could not be parsed (last good keys stay in use)",
                            ["tunnel"], registry=metrics.REGISTRY)

BACKOFF_MIN, BACKOFF_MAX = 0.5, 30.0


class Reflector:
    """A local cache of one resource kept by list+watch; survives API outages."""

    def __init__(self, api: kube.Api, path: str, on_change: Callable[[], None], *,
                 label_selector: str | None = None, watch_timeout: int = 300) -> None:
        self.api, self.path, self.on_change = api, path, on_change
        self.label_selector = label_selector
        self.watch_timeout = watch_timeout
        self.objects: dict[str, dict[str, Any]] = {}
        self.synced = asyncio.Event()
        self.error: str | None = None

    async def run(self) -> None:
        backoff = BACKOFF_MIN
        while True:
            try:
                version = await self._list()
                backoff = BACKOFF_MIN
                while True:
                    version = await self._watch(version)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                gone = isinstance(exc, kube.ApiError) and exc.status == 410
                if not gone:
                    self.error = f"{self.path}: {type(exc).__name__}: {exc}"[:300]
                    log.warning("watch %s failed (%s); keeping %d known objects, retry in %.1fs",
                                self.path, self.error, len(self.objects), backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX)

    async def _list(self) -> str:
        params = {"labelSelector": self.label_selector} if self.label_selector else {}
        listing = await self.api.get(self.path, **params)
        self.objects = {item["metadata"]["name"]: item for item in listing.get("items") or []}
        self.error = None
        self.synced.set()
        self.on_change()
        return str(listing["metadata"]["resourceVersion"])

    async def _watch(self, version: str) -> str:
        async for event in self.api.watch(self.path, version, label_selector=self.label_selector,
                                          timeout_seconds=self.watch_timeout):
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                raise kube.ApiError(int(obj.get("code") or 500), str(obj.get("message")))
            version = str(obj["metadata"]["resourceVersion"])
            if kind == "BOOKMARK":
                continue
            name = obj["metadata"]["name"]
            if kind == "DELETED":
                self.objects.pop(name, None)
            else:
                self.objects[name] = obj
            self.on_change()
        return version


@dataclass(frozen=True)
class Snapshot:
    nodes: Mapping[str, desired.NodeInfo]
    tunnels: tuple[desired.TunnelInfo, ...]
    keys: Mapping[str, contract.KeySet]
    errors: Mapping[str, str]  # tunnel -> key Secret problem


class Watchers:
    """The three reflectors plus key parsing; ``snapshot()`` is the cluster as last seen."""

    def __init__(self, api: kube.Api, namespace: str, on_change: Callable[[], None], *,
                 watch_timeout: int = 300) -> None:
        def reflector(path: str, selector: str | None = None) -> Reflector:
            return Reflector(api, path, self._changed, label_selector=selector,
                             watch_timeout=watch_timeout)

        self.on_change = on_change
        self.tunnels = reflector(f"/apis/{contract.API_VERSION}/{contract.TUNNEL_PLURAL}")
        self.nodes = reflector("/api/v1/nodes")
        self.secrets = reflector(f"/api/v1/namespaces/{namespace}/secrets",
                                 f"{contract.LABEL_COMPONENT}={contract.COMPONENT_KEYS}")
        self.reflectors = (self.tunnels, self.nodes, self.secrets)
        self._keys: dict[str, contract.KeySet] = {}
        self._key_errors: dict[str, str] = {}
        self._parsed: dict[str, str] = {}  # tunnel -> resourceVersion parsed

    @property
    def synced(self) -> bool:
        return all(r.synced.is_set() for r in self.reflectors)

    @property
    def api_error(self) -> str | None:
        return next((r.error for r in self.reflectors if r.error), None)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            for r in self.reflectors:
                group.create_task(r.run())

    def _changed(self) -> None:
        self._parse_secrets()
        self.on_change()

    def _parse_secrets(self) -> None:
        seen = set()
        for name, secret in self.secrets.objects.items():
            meta = secret.get("metadata") or {}
            tunnel = (meta.get("labels") or {}).get(contract.LABEL_TUNNEL) or name.removeprefix(
                contract.secret_name(""))
            seen.add(tunnel)
            version = str(meta.get("resourceVersion"))
            if self._parsed.get(tunnel) == version:
                continue
            self._parsed[tunnel] = version
            try:
                self._keys[tunnel] = contract.KeySet.from_secret_data(secret.get("data"))
                self._key_errors.pop(tunnel, None)
            except contract.KeyFormatError as exc:
                kept = self._keys.get(tunnel)
                self._key_errors[tunnel] = (
                    f"key Secret {name}: {exc}; keeping generations "
                    f"{kept.numbers if kept else []}")
                KEY_SECRET_ERRORS.labels(tunnel).inc()
                log.error("%s", self._key_errors[tunnel])
        for tunnel in set(self._keys) - seen:  # Secret deleted (tunnel gone): drop its keys
            self._keys.pop(tunnel)
            self._key_errors.pop(tunnel, None)
            self._parsed.pop(tunnel, None)

    def snapshot(self) -> Snapshot:
        nodes = [desired.NodeInfo.from_object(o) for o in self.nodes.objects.values()]
        tunnels = tuple(desired.TunnelInfo.from_object(o) for o in self.tunnels.objects.values())
        return Snapshot({n.name: n for n in nodes}, tunnels, dict(self._keys),
                        dict(self._key_errors))
