"""We test these aspects of the rotation planner (pure, no I/O):

the step taken in each phase, due times derived from the Secret (so a restart never rotates
twice), on-demand requests handled once, acknowledgement timeouts that never retire a key,
and generation numbers that never go backwards.
"""

from __future__ import annotations

import datetime

import pytest

from kube_ipsec import contract
from kube_ipsec.operator import rotation
from kube_ipsec.operator.rotation import NodeReport, Phase, Step, Trigger

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
SPEC = contract.RotationSpec(interval=datetime.timedelta(hours=1),
                             overlap=datetime.timedelta(minutes=5))
KEY = bytes(range(32))


def keyset(*numbers: int, current: int, at: datetime.datetime = T0) -> contract.KeySet:
    gens = tuple(
        contract.KeyGeneration(n, contract.utcnow_rfc3339(at + datetime.timedelta(minutes=n)), KEY)
        for n in numbers
    )
    return contract.KeySet(current, gens)


def at(minutes: float) -> datetime.datetime:
    return T0 + datetime.timedelta(minutes=minutes)


def node(name: str, loaded: tuple[int, ...] = (), in_use: int | None = None) -> NodeReport:
    return NodeReport(name, frozenset(loaded), in_use)


def test_no_secret_means_create() -> None:
    p = rotation.plan(None, rotation=SPEC, nodes=[], now=T0)
    assert p.step is Step.CREATE


def test_idle_before_interval_does_nothing_and_tells_next_rotation() -> None:
    keys = keyset(1, current=1)
    p = rotation.plan(keys, rotation=SPEC, nodes=[node("a", (1,), 1)], now=at(30))
    assert (p.step, p.phase) == (None, Phase.IDLE)
    assert p.next_rotation == at(61)


def test_interval_elapsed_stages_a_new_generation() -> None:
    keys = keyset(1, current=1)
    p = rotation.plan(keys, rotation=SPEC, nodes=[], now=at(61))
    assert (p.step, p.trigger) == (Step.STAGE, Trigger.INTERVAL)


def test_on_demand_request_is_handled_once() -> None:
    keys = keyset(1, current=1)
    due = rotation.plan(keys, rotation=SPEC, nodes=[], now=at(2), rotate_request="x")
    assert (due.step, due.trigger) == (Step.STAGE, Trigger.ON_DEMAND)
    done = rotation.plan(keys, rotation=SPEC, nodes=[], now=at(2), rotate_request="x",
                         rotate_handled="x")
    assert done.step is None
    again = rotation.plan(keys, rotation=SPEC, nodes=[], now=at(2), rotate_request="y",
                          rotate_handled="x")
    assert again.step is Step.STAGE


def test_staged_generation_switches_only_when_every_node_loaded_it() -> None:
    keys = keyset(1, 2, current=1)
    nodes = [node("a", (1, 2), 1), node("b", (1,), 1)]
    p = rotation.plan(keys, rotation=SPEC, nodes=nodes, now=at(3))
    assert (p.step, p.phase, p.pending) == (None, Phase.STAGING, ("b",))
    assert p.started == at(2)
    nodes[1] = node("b", (1, 2), 1)
    assert rotation.plan(keys, rotation=SPEC, nodes=nodes, now=at(3)).step is Step.SWITCH


def test_previous_generation_retires_only_when_every_node_uses_current() -> None:
    keys = keyset(1, 2, current=2)
    nodes = [node("a", (1, 2), 2), node("b", (1, 2), 1)]
    p = rotation.plan(keys, rotation=SPEC, nodes=nodes, now=at(3))
    assert (p.step, p.phase, p.pending) == (None, Phase.SWITCHING, ("b",))
    nodes[1] = node("b", (1, 2), 2)
    assert rotation.plan(keys, rotation=SPEC, nodes=nodes, now=at(3)).step is Step.RETIRE


def test_no_new_rotation_while_one_is_in_progress() -> None:
    for keys in (keyset(1, 2, current=1), keyset(1, 2, current=2)):
        p = rotation.plan(keys, rotation=SPEC, nodes=[node("a")], now=at(500),
                          rotate_request="now")
        assert p.step is None and p.phase is not Phase.IDLE


def test_acknowledgement_timeout_keeps_waiting() -> None:
    keys = keyset(1, 2, current=1)
    before = rotation.plan(keys, rotation=SPEC, nodes=[node("b", (1,))], now=at(6))
    assert not before.timed_out
    after = rotation.plan(keys, rotation=SPEC, nodes=[node("b", (1,))], now=at(7.5))
    assert after.timed_out and after.step is None and after.pending == ("b",)


def test_without_selected_nodes_a_rotation_runs_through() -> None:
    keys = keyset(1, current=1)
    steps = []
    for _ in range(4):
        p = rotation.plan(keys, rotation=SPEC, nodes=[], now=at(61))
        if p.step is None:
            break
        steps.append(p.step)
        if p.step is Step.STAGE:
            keys = rotation.stage(keys, rotation.next_number(keys, 0), now=at(61), key=KEY)
        elif p.step is Step.SWITCH:
            keys = rotation.switch(keys)
        else:
            keys = rotation.retire(keys)
        assert len(keys.generations) <= contract.MAX_GENERATIONS
    assert steps == [Step.STAGE, Step.SWITCH, Step.RETIRE]
    assert (keys.current, keys.numbers) == (2, [2])


def test_a_restarted_operator_derives_the_due_time_from_the_secret() -> None:
    """Right after a rotation completes, the due time is one interval after the new key."""
    keys = keyset(2, current=2)  # created at T0 + 2 min
    assert rotation.plan(keys, rotation=SPEC, nodes=[], now=at(61)).step is None
    assert rotation.plan(keys, rotation=SPEC, nodes=[], now=at(62)).step is Step.STAGE


@pytest.mark.parametrize(("newest", "seen", "expected"), [(1, 0, 2), (1, 5, 6), (7, 3, 8)])
def test_generation_numbers_never_go_backwards(newest: int, seen: int, expected: int) -> None:
    assert rotation.next_number(keyset(newest, current=newest), seen) == expected
    assert rotation.next_number(None, seen) == seen + 1
