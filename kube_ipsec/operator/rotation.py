"""Pure planning of a tunnel's key generations: the acknowledged rotation protocol.

Given what the key Secret holds, what the selected nodes report, the rotation spec and the
time, :func:`plan` names the one next write and describes where the rotation stands. The
functions below it turn a :class:`~kube_ipsec.contract.KeySet` into the next one. Nothing here
does I/O, reads a clock or draws random bytes (key bytes are passed in), so every decision is
tested as a table.

All rotation state lives in the Secret, so an operator restarted at any point resumes the same
rotation and can never start a second one:

* *Idle*: one generation (so staging makes two: never more than the contract's
  MAX_GENERATIONS). A rotation is due at ``createdAt(current) + interval`` or when the
  rotate-now annotation carries a value not yet recorded in the Secret as handled.
* *Staging*: a generation newer than ``current`` exists. Every node must report it loaded before
  ``current`` moves to it (a key reaches every node before any node depends on it).
* *Switching*: generations older than ``current`` remain. They are retired only once every node
  reports ``current`` in use, so no live node loses the key it uses.

A node that does not acknowledge within ``overlap`` of the rotation start (the new generation's
``createdAt``) makes the rotation *timed out*: the planner keeps waiting and keeps old keys; the
caller reports Degraded.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
from collections.abc import Sequence

from kube_ipsec import contract


class Phase(enum.StrEnum):
    IDLE = "Idle"
    STAGING = "Staging"
    SWITCHING = "Switching"


class Step(enum.StrEnum):
    """The writes the planner can ask for, one per reconcile iteration."""

    CREATE = "create"  # no usable Secret: a fresh one with a single generation
    STAGE = "stage"  # add generation N+1, current stays N
    SWITCH = "switch"  # current = N+1 (all nodes loaded it)
    RETIRE = "retire"  # drop generations < current (all nodes use current)


class Trigger(enum.StrEnum):
    INTERVAL = "interval"
    ON_DEMAND = "on-demand"


@dataclasses.dataclass(frozen=True)
class NodeReport:
    """What one selected node reports about one tunnel (from its IPsecNode)."""

    name: str
    loaded: frozenset[int] = frozenset()
    in_use: int | None = None
    ready: bool = False


@dataclasses.dataclass(frozen=True)
class Plan:
    step: Step | None
    phase: Phase
    trigger: Trigger | None = None  # why a STAGE is due
    started: datetime.datetime | None = None  # rotation start (the new generation's createdAt)
    pending: tuple[str, ...] = ()  # selected nodes holding the rotation up
    timed_out: bool = False
    next_rotation: datetime.datetime | None = None


def parse_time(text: str) -> datetime.datetime:
    """An RFC 3339 timestamp from the Secret manifest (ValueError if unreadable)."""
    value = datetime.datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError("timestamp without a time zone")
    return value.astimezone(datetime.UTC)


def created(keys: contract.KeySet, number: int) -> datetime.datetime:
    return parse_time(keys.get(number).created)


def plan(
        keys: contract.KeySet | None,
        *,
        rotation: contract.RotationSpec,
        nodes: Sequence[NodeReport],
        now: datetime.datetime,
        rotate_request: str | None = None,
        rotate_handled: str | None = None,
) -> Plan:
    """Decide the next write for a tunnel whose Secret holds ``keys`` (None: none usable)."""
    if keys is None:
        return Plan(step=Step.CREATE, phase=Phase.IDLE)
    current, newest = keys.current, keys.newest
    next_rotation = created(keys, newest) + rotation.interval

    if newest > current:
        pending = tuple(sorted(n.name for n in nodes if newest not in n.loaded))
        phase, started = Phase.STAGING, created(keys, newest)
        step = None if pending else Step.SWITCH
    elif min(keys.numbers) < current:
        pending = tuple(sorted(n.name for n in nodes if n.in_use != current))
        phase, started = Phase.SWITCHING, created(keys, current)
        step = None if pending else Step.RETIRE
    else:
        trigger = None
        if rotate_request is not None and rotate_request != rotate_handled:
            trigger = Trigger.ON_DEMAND
        elif now >= next_rotation:
            trigger = Trigger.INTERVAL
        return Plan(
            step=Step.STAGE if trigger else None, phase=Phase.IDLE, trigger=trigger,
            next_rotation=next_rotation,
        )
    timed_out = bool(pending) and now >= started + rotation.overlap
    return Plan(
        step=step, phase=phase, started=started, pending=pending, timed_out=timed_out,
        next_rotation=next_rotation,
    )


def next_number(keys: contract.KeySet | None, highest_seen: int) -> int:
    """Generation numbers never go backwards, even across a deleted Secret."""
    return max(highest_seen, keys.newest if keys else 0) + 1


def fresh(number: int, *, now: datetime.datetime, key: bytes,
          peer_psks: dict[str, bytes] | None = None) -> contract.KeySet:
    generation = contract.KeyGeneration(number, contract.utcnow_rfc3339(now), key)
    return contract.KeySet(number, (generation,), dict(peer_psks or {}))


def stage(keys: contract.KeySet, number: int, *, now: datetime.datetime,
          key: bytes) -> contract.KeySet:
    generation = contract.KeyGeneration(number, contract.utcnow_rfc3339(now), key)
    return dataclasses.replace(keys, generations=(*keys.generations, generation))


def switch(keys: contract.KeySet) -> contract.KeySet:
    return dataclasses.replace(keys, current=keys.newest)


def retire(keys: contract.KeySet) -> contract.KeySet:
    kept = tuple(g for g in keys.generations if g.number >= keys.current)
    return dataclasses.replace(keys, generations=kept)
