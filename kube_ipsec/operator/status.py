"""The tunnel's status: conditions and summaries computed from one observation.

Everything here is pure: the reconciler gathers an :class:`Observation` and gets back the
status it should show, and :func:`merge_patch` turns that into the smallest merge patch (None
when nothing changed, so an idle tunnel costs no writes). Conditions keep their
``lastTransitionTime`` while their status stays the same.

What the conditions mean:

* ``KeysDistributed``: the key Secret holds a valid current generation. It does not wait for
  agents, so a tunnel shows it seconds after it is applied, before any agent runs; what nodes
  acknowledged is in ``nodes.acknowledged`` and in ``Ready``.
* ``Ready``: the spec is valid, keys exist, at least one node is selected and every selected
  node reports every peer of the tunnel IKE-established with its Child SA installed.
* ``Rotating``: a rotation is staging or switching.
* ``Degraded``: a rotation is not acknowledged within the overlap, or a peer's PSK Secret is
  missing. The tunnel keeps working with the keys it has.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping, Sequence
from typing import Any

from kube_ipsec import contract
from kube_ipsec.operator import rotation
from kube_ipsec.operator.rotation import NodeReport, Phase, Plan

# The status fields this operator owns (a merge patch never touches others).
OWN_FIELDS = (
    "observedGeneration", "keyGeneration", "highestKeyGeneration", "conditions", "rotation",
    "nodes",
)
MAX_NAMES = 20  # node names listed in one message


@dataclasses.dataclass(frozen=True)
class Observation:
    generation: int | None
    now: datetime.datetime
    spec_problems: Sequence[str] = ()
    keys: contract.KeySet | None = None
    key_problem: str = ""  # why there are no keys (when keys is None)
    plan: Plan | None = None
    reports: Sequence[NodeReport] = ()
    overlap: datetime.timedelta | None = None
    peer_problems: Sequence[str] = ()
    highest: int = 0
    last_rotation: str | None = None


def names(items: Sequence[str]) -> str:
    shown = ", ".join(items[:MAX_NAMES])
    more = len(items) - MAX_NAMES
    return f"{shown} and {more} more" if more > 0 else shown


def acknowledged(keys: contract.KeySet | None, reports: Sequence[NodeReport]) -> int:
    """Nodes that loaded every generation a node may be asked to use (current and staged)."""
    if keys is None:
        return 0
    usable = {n for n in keys.numbers if n >= keys.current}
    return sum(1 for r in reports if usable <= r.loaded)


def desired(previous: Mapping[str, Any], obs: Observation) -> dict[str, Any]:
    """The status to show for ``obs``; ``previous`` supplies transition times."""
    keys, plan, reports = obs.keys, obs.plan, obs.reports
    ready = sum(1 for r in reports if r.ready)
    conds = [
        _ready(obs, ready),
        _keys_distributed(obs),
        _rotating(obs),
        _degraded(obs),
    ]
    old = {c.get("type"): c for c in previous.get("conditions") or []}
    now = contract.utcnow_rfc3339(obs.now)
    conditions = []
    for ctype, state, reason, message in conds:
        before = old.get(ctype.value) or {}
        since = before.get("lastTransitionTime") if before.get("status") == state else None
        entry = {
            "type": ctype.value, "status": state, "reason": reason, "message": message,
            "lastTransitionTime": since or now,
        }
        if obs.generation is not None:
            entry["observedGeneration"] = obs.generation
        conditions.append(entry)

    rot: dict[str, Any] = {"phase": (plan.phase if plan else Phase.IDLE).value}
    if obs.last_rotation:
        rot["lastRotation"] = obs.last_rotation
    if plan and plan.next_rotation:
        rot["nextRotation"] = contract.utcnow_rfc3339(plan.next_rotation)
    if plan and plan.started:
        rot["startedAt"] = contract.utcnow_rfc3339(plan.started)
    rot["pendingNodes"] = list(plan.pending) if plan else []

    status: dict[str, Any] = {
        "conditions": conditions,
        "rotation": rot,
        "nodes": {
            "selected": len(reports),
            "ready": ready,
            "acknowledged": acknowledged(keys, reports),
            "summary": f"{ready}/{len(reports)}",
        },
        "highestKeyGeneration": obs.highest,
    }
    if obs.generation is not None:
        status["observedGeneration"] = obs.generation
    if keys is not None:
        status["keyGeneration"] = keys.current
    return status


def _ready(obs: Observation, ready: int) -> tuple[contract.Condition, str, str, str]:
    kind, selected = contract.Condition.READY, len(obs.reports)
    if obs.spec_problems:
        return kind, "False", "InvalidSpec", "; ".join(obs.spec_problems)
    if obs.keys is None:
        return kind, "False", "KeysUnavailable", obs.key_problem or "no key Secret yet"
    if selected == 0:
        return kind, "False", "NoNodesSelected", "spec.nodeSelector matches no Node"
    if ready < selected:
        waiting = [r.name for r in obs.reports if not r.ready]
        return kind, "False", "NodesNotReady", (
            f"{ready}/{selected} nodes ready; waiting for {names(waiting)}"
        )
    return kind, "True", "AllNodesReady", f"{ready}/{selected} nodes ready"


def _keys_distributed(obs: Observation) -> tuple[contract.Condition, str, str, str]:
    kind = contract.Condition.KEYS_DISTRIBUTED
    if obs.keys is None:
        reason = "InvalidSpec" if obs.spec_problems else "KeySecretMissing"
        return kind, "False", reason, obs.key_problem or "no key Secret yet"
    numbers = ", ".join(str(n) for n in obs.keys.numbers)
    return kind, "True", "KeysAvailable", (
        f"generation {obs.keys.current} is current; the Secret holds generations {numbers}"
    )


def _rotating(obs: Observation) -> tuple[contract.Condition, str, str, str]:
    kind, plan, keys = contract.Condition.ROTATING, obs.plan, obs.keys
    if plan is None or keys is None or plan.phase is Phase.IDLE:
        when = f"; next rotation at {contract.utcnow_rfc3339(plan.next_rotation)}" if (
            plan and plan.next_rotation) else ""
        return kind, "False", "Idle", f"no rotation in progress{when}"
    if plan.phase is Phase.STAGING:
        what = f"generation {keys.newest} staged; waiting for nodes to load it"
    else:
        what = f"generation {keys.current} current; waiting for nodes to use it"
    if plan.pending:
        what += f": {names(list(plan.pending))}"
    return kind, "True", plan.phase.value, what


def problems(obs: Observation) -> list[tuple[str, str]]:
    """Everything wrong, as (reason, message), worst first: what Warning Events announce."""
    found: list[tuple[str, str]] = []
    if obs.spec_problems:
        found.append(("InvalidSpec", "; ".join(obs.spec_problems)))
    return found + _degradations(obs)


def _degraded(obs: Observation) -> tuple[contract.Condition, str, str, str]:
    kind, found = contract.Condition.DEGRADED, _degradations(obs)
    if not found:
        return kind, "False", "AsExpected", "nothing degraded"
    return kind, "True", found[0][0], "; ".join(message for _, message in found)


def _degradations(obs: Observation) -> list[tuple[str, str]]:
    plan = obs.plan
    problems: list[tuple[str, str]] = []
    if plan is not None and plan.timed_out and obs.keys is not None:
        generation = obs.keys.newest
        overlap = int(obs.overlap.total_seconds()) if obs.overlap else 0
        problems.append((
            "AcknowledgementTimeout",
            f"nodes have not acknowledged key generation {generation} within the "
            f"{overlap}s overlap: {names(list(plan.pending))}; old keys are kept",
        ))
    if obs.peer_problems:
        problems.append(("PeerSecretMissing", "; ".join(obs.peer_problems)))
    return problems


def condition(status: Mapping[str, Any], ctype: contract.Condition) -> Mapping[str, Any]:
    for entry in status.get("conditions") or []:
        if entry.get("type") == ctype.value:
            return dict(entry)
    return {}


def last_rotation(previous: Mapping[str, Any], keys: contract.KeySet | None) -> str | None:
    """Kept from the status; before any rotation, when the current key was made."""
    kept = (previous.get("rotation") or {}).get("lastRotation")
    if kept:
        return str(kept)
    if keys is not None:
        return contract.utcnow_rfc3339(rotation.created(keys, keys.current))
    return None


def merge_patch(previous: Mapping[str, Any], wanted: Mapping[str, Any]) -> dict[str, Any] | None:
    """A JSON merge patch of our own fields turning ``previous`` into ``wanted``, or None."""
    patch: dict[str, Any] = {}
    for name in OWN_FIELDS:
        if name in wanted:
            if previous.get(name) != wanted[name]:
                patch[name] = _diff(previous.get(name), wanted[name])
        elif name in previous:
            patch[name] = None
    return patch or None


def _diff(old: Any, new: Any) -> Any:
    if not (isinstance(old, Mapping) and isinstance(new, Mapping)):
        return new
    out = {k: _diff(old.get(k), v) for k, v in new.items() if old.get(k) != v}
    out.update({k: None for k in old if k not in new})
    return out
