"""This node's IPsecNode: what the agent reports, rendered purely, and the writer that keeps it.

The operator drives acknowledged rotation from two fields per tunnel, so their meaning is the
contract (``contract.node_generations_loaded`` / ``node_generation_in_use`` read them):

- ``keyGenerationsLoaded``: every generation in the tunnel's key Secret as this agent parsed
  it — the ones it *accepts* from peers;
- ``keyGenerationInUse``: the generation that authenticated *all* of this node's current IKE
  SAs with the tunnel's cluster peers. While they disagree (a re-authentication in flight) it
  is the oldest one still in use, so the operator never retires a generation something still
  depends on. With no IKE SA up it is the Secret's current generation: nothing depends on an
  older one, and the next IKE SA will use current. External gateways have static PSKs and do
  not count. Absent (None) when no keys are loaded.

Only names, addresses, states, generation numbers and SPIs (hex) are written — never keys.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kube_ipsec import contract
from kube_ipsec.agent import desired, kube

log = logging.getLogger(__name__)

IKE_CONNECTING = "CONNECTING"
IKE_FAILED = "FAILED"
IKE_WAITING = "WAITING"  # no keys yet, or the peer initiates
CHILD_NONE = "NONE"
MAX_ERROR = 1024


@dataclass
class PeerState:
    """What the peer worker knows about one peer; the renderer reads it."""

    tunnel: str
    name: str
    address: str
    external: bool = False
    ike_state: str = IKE_WAITING
    child_state: str = CHILD_NONE
    key_generation: int | None = None
    spis_in: list[int] = field(default_factory=list)
    spis_out: list[int] = field(default_factory=list)
    established: str | None = None  # RFC 3339
    last_rekey: str | None = None
    last_error: str | None = None
    mtu: int | None = None


def generation_in_use(keys_current: int | None, peers: Iterable[PeerState]) -> int | None:
    """``keyGenerationInUse`` for one tunnel (see the module docstring)."""
    if keys_current is None:
        return None
    used = [p.key_generation for p in peers
            if not p.external and p.ike_state == contract.IKE_ESTABLISHED
            and p.key_generation is not None]
    return min(used) if used else keys_current


def _peer(p: PeerState) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": p.name, "address": p.address, "ikeState": p.ike_state,
        "childState": p.child_state,
        "spisIn": [f"{s:08x}" for s in p.spis_in], "spisOut": [f"{s:08x}" for s in p.spis_out],
    }
    for key, value in (("keyGeneration", p.key_generation), ("established", p.established),
                       ("lastRekey", p.last_rekey), ("lastError", _clip(p.last_error))):
        if value is not None:
            out[key] = value
    return out


def _clip(text: str | None) -> str | None:
    return None if text is None else text[:MAX_ERROR]


def render(*, want: desired.Desired, currents: Mapping[str, int],
           peers: Mapping[tuple[str, str], PeerState], errors: Iterable[str], heartbeat: str,
           version: str, mtus: Mapping[str, int] | None = None) -> dict[str, Any]:
    """The ``status`` of this node's IPsecNode. ``currents``: tunnel -> KeySet.current."""
    tunnels = []
    for name in sorted(want.tunnels):
        mine = [peers[k] for k in sorted(peers) if k[0] == name]
        entry: dict[str, Any] = {
            "name": name,
            "keyGenerationsLoaded": list(want.tunnels[name]),
            "peers": [_peer(p) for p in mine],
        }
        in_use = generation_in_use(currents.get(name), mine)
        if in_use is not None:
            entry["keyGenerationInUse"] = in_use
        if mtus and name in mtus:
            entry["mtu"] = mtus[name]
        tunnels.append(entry)
    up = sum(1 for p in peers.values() if p.child_state == contract.CHILD_INSTALLED)
    problems = [*(f"{t}: {e}" for t, e in sorted(want.errors.items())), *errors]
    return {
        "address": want.local_address or "",
        "heartbeat": heartbeat,
        "agentVersion": version,
        "peersSummary": f"{up}/{len(peers)}",
        "lastError": _clip("; ".join(problems)) or "",
        "tunnels": tunnels,
    }


class StatusWriter:
    """Creates this node's IPsecNode if missing and merge-patches its status."""

    def __init__(self, api: kube.Api, node_name: str) -> None:
        self.api = api
        self.name = contract.node_object_name(node_name)
        self.node_name = node_name
        self.path = f"/apis/{contract.API_VERSION}/{contract.NODE_PLURAL}/{self.name}"
        self._exists = False
        self._lock = asyncio.Lock()

    async def write(self, status: dict[str, Any]) -> None:
        async with self._lock:
            if not self._exists:
                await self._ensure()
            # a merge patch replaces lists whole; null clears a field we no longer report
            await self.api.merge_patch(f"{self.path}/status", {"status": status})

    async def _ensure(self) -> None:
        try:
            await self.api.get(self.path)
        except kube.ApiError as exc:
            if exc.status != 404:
                raise
            body = {
                "apiVersion": contract.API_VERSION, "kind": contract.NODE_KIND,
                "metadata": {"name": self.name,
                             "labels": {contract.LABEL_MANAGED_BY: contract.MANAGED_BY}},
                "spec": {"nodeName": self.node_name},
            }
            try:
                await self.api.create(f"/apis/{contract.API_VERSION}/{contract.NODE_PLURAL}", body)
                log.info("created IPsecNode %s", self.name)
            except kube.ApiError as create_exc:
                if create_exc.status != 409:
                    raise
        self._exists = True

    def forget(self) -> None:
        """After an error the object may have been deleted: check again on the next write."""
        self._exists = False
