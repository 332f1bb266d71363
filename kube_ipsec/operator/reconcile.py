"""One reconciliation of one tunnel: read, plan, write the Secret, report the status.

Blocking code on the synchronous Kubernetes client, run in a worker thread by
:mod:`kube_ipsec.operator.handlers`, which serialises calls per tunnel and hands in snapshots
of its watch caches (:class:`Inputs`). The steps:

1. Parse the spec. An invalid one is reported (``Ready=False``, reason InvalidSpec, with a
   Warning Event once per distinct message) and nothing else is touched: no crash, no retry loop.
2. Read the key Secret (cache first; for a tunnel that had keys, a cache miss is confirmed
   with a GET, since the cache may lag; a first creation just tries, AlreadyExists re-reads).
   Missing: create one. Unreadable: replace it, with a Warning Event.
3. Ask :func:`kube_ipsec.operator.rotation.plan` for the next step and apply it, until no step
   is left (with no nodes selected a whole rotation completes at once). A write that lost a race
   re-plans from a fresh read.
4. Copy external peers' PSKs into the tunnel Secret, since agents read only that Secret.
5. Patch the status if it changed.

Generation numbers never go backwards: the highest one ever written is kept in
``status.highestKeyGeneration``, and it is written *before* a Secret carrying a higher number,
so a Secret lost right after an operator crash is still recreated with a higher number.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from collections.abc import Callable, Mapping
from typing import Any

import kubernetes

from kube_ipsec import contract
from kube_ipsec.operator import nodes, rotation, secrets, status
from kube_ipsec.operator.rotation import Step, Trigger

logger = logging.getLogger(__name__)

MAX_STEPS = 8  # create/stage/switch/retire plus a few lost races


@dataclasses.dataclass(frozen=True)
class Inputs:
    body: Mapping[str, Any]  # the tunnel
    secret: Mapping[str, Any] | None  # the cached key Secret (None: not in the cache)
    node_labels: Mapping[str, Mapping[str, str]]
    ipsec_nodes: Mapping[str, Mapping[str, Any]]
    now: datetime.datetime
    highest_seen: int = 0  # the highest generation this process wrote for the tunnel


@dataclasses.dataclass(frozen=True)
class Notice:
    """A Kubernetes Event to post on the tunnel."""

    type: str
    reason: str
    message: str


@dataclasses.dataclass
class Outcome:
    status: dict[str, Any]
    notices: list[Notice] = dataclasses.field(default_factory=list)
    highest: int = 0
    rotations_completed: list[float] = dataclasses.field(default_factory=list)
    timed_out: bool = False  # an acknowledgement timeout began now

    @property
    def conditions(self) -> dict[str, str]:
        return {c["type"]: c["status"] for c in self.status.get("conditions", [])}


class TunnelStatusApi:
    def __init__(self, api_client: Any) -> None:
        self.custom = kubernetes.client.CustomObjectsApi(api_client)

    def patch(self, name: str, patch: Mapping[str, Any]) -> None:
        try:
            self.custom.patch_cluster_custom_object_status(
                contract.GROUP, contract.VERSION, contract.TUNNEL_PLURAL, name,
                {"status": dict(patch)}, _content_type="application/merge-patch+json",
            )
        except kubernetes.client.ApiException as exc:
            if exc.status != 404:  # the tunnel is gone: nothing to report on
                raise


class Reconciler:
    def __init__(self, store: secrets.SecretStore, status_api: TunnelStatusApi, *,
                 new_key: Callable[[], bytes] = secrets.new_key) -> None:
        self.store = store
        self.status_api = status_api
        self.new_key = new_key
        # Problems already announced, per tunnel: the status read may lag our own last write.
        self._announced: dict[str, set[tuple[str, str]]] = {}

    def forget(self, name: str) -> None:
        self._announced.pop(name, None)

    def reconcile(self, inputs: Inputs) -> Outcome:
        body, now = inputs.body, inputs.now
        meta = body.get("metadata") or {}
        name, generation = meta["name"], meta.get("generation")
        previous: dict[str, Any] = dict(body.get("status") or {})
        highest = max(inputs.highest_seen, int(previous.get("highestKeyGeneration") or 0),
                      int(previous.get("keyGeneration") or 0))
        try:
            spec = contract.TunnelSpec.parse(body.get("spec") or {})
        except contract.SpecError as exc:
            return self._invalid(name, generation, previous, exc.problems, inputs, highest)

        reports = nodes.reports(name, spec.node_selector, node_labels=inputs.node_labels,
                                ipsec_nodes=inputs.ipsec_nodes)
        request = (meta.get("annotations") or {}).get(contract.ANNOTATION_ROTATE_NOW)
        secret_body = inputs.secret
        if secret_body is None and highest > 0:
            secret_body = self.store.get(name)  # a cache miss may only be lag: confirm it
        stored = secrets.parse(secret_body)
        outcome = Outcome(status={})
        peer_psks, peer_problems = self._peer_psks(spec, stored.keys)

        for _ in range(MAX_STEPS):
            plan = rotation.plan(stored.keys, rotation=spec.rotation, nodes=reports, now=now,
                                 rotate_request=request, rotate_handled=stored.handled)
            change = self._next_keys(name, plan, stored, highest, request, now, peer_psks,
                                     secret_body)
            if change is None:
                break
            keys, handled, notice = change
            if keys.newest > highest:
                highest = keys.newest
                self.status_api.patch(name, {"highestKeyGeneration": highest})
                previous["highestKeyGeneration"] = highest
            try:
                secret_body = self._write(name, meta.get("uid"), stored, keys, handled)
            except secrets.Conflict as exc:
                logger.info("Tunnel %s: %s; re-reading it.", name, exc)
                secret_body = self.store.get(name)
                stored = secrets.parse(secret_body)
                continue
            stored = secrets.parse(secret_body)
            if notice is not None:
                outcome.notices.append(notice)
                logger.info("Tunnel %s: %s", name, notice.message)
            if plan.step is Step.RETIRE and plan.started is not None:
                outcome.rotations_completed.append((now - plan.started).total_seconds())
        else:
            plan = rotation.plan(stored.keys, rotation=spec.rotation, nodes=reports, now=now,
                                 rotate_request=request, rotate_handled=stored.handled)

        last_rotation = status.last_rotation(previous, stored.keys)
        if outcome.rotations_completed:
            last_rotation = contract.utcnow_rfc3339(now)
        observation = status.Observation(
            generation=generation, now=now, keys=stored.keys,
            key_problem=stored.problem or ("" if stored.exists else "no key Secret yet"),
            plan=plan, reports=reports, overlap=spec.rotation.overlap,
            peer_problems=peer_problems, highest=highest, last_rotation=last_rotation,
        )
        outcome.status = status.desired(previous, observation)
        outcome.highest = highest
        self._announce(name, previous, outcome, observation)
        self._write_status(name, previous, outcome.status)
        return outcome

    # --- steps ----------------------------------------------------------------------------------

    def _next_keys(
            self, name: str, plan: rotation.Plan, stored: secrets.Stored, highest: int,
            request: str | None, now: datetime.datetime, peer_psks: dict[str, bytes],
            secret_body: Mapping[str, Any] | None,
    ) -> tuple[contract.KeySet, str | None, Notice | None] | None:
        """The KeySet to write next, the rotate-now value to record, and what to announce."""
        keys, sname = stored.keys, contract.secret_name(name)
        if plan.step is Step.CREATE:
            number = rotation.next_number(None, highest)
            fresh = rotation.fresh(number, now=now, key=self.new_key(), peer_psks=peer_psks)
            if stored.exists:
                notice = Notice("Warning", "KeySecretCorrupted",
                                f"key Secret {sname} was unreadable ({stored.problem}); "
                                f"replaced it with key generation {number}")
            elif highest > 0:
                notice = Notice("Warning", "KeySecretRecreated",
                                f"key Secret {sname} was missing; recreated it with key "
                                f"generation {number}")
            else:
                notice = Notice("Normal", "KeysCreated",
                                f"created key Secret {sname} with key generation {number}")
            return fresh, request, notice  # a fresh key answers any pending rotate-now
        assert keys is not None
        if plan.step is Step.STAGE:
            number = rotation.next_number(keys, highest)
            staged = rotation.stage(keys, number, now=now, key=self.new_key())
            on_demand = plan.trigger is Trigger.ON_DEMAND
            handled = request if on_demand else stored.handled
            why = "requested by annotation" if on_demand else "rotation interval elapsed"
            return (dataclasses.replace(staged, peer_psks=peer_psks), handled,
                    Notice("Normal", "RotationStarted", f"staged key generation {number} ({why})"))
        if plan.step is Step.SWITCH:
            return (dataclasses.replace(rotation.switch(keys), peer_psks=peer_psks),
                    stored.handled,
                    Notice("Normal", "RotationSwitched",
                           f"key generation {keys.newest} is current; every node loaded it"))
        if plan.step is Step.RETIRE:
            gone = ", ".join(str(n) for n in keys.numbers if n < keys.current)
            return (dataclasses.replace(rotation.retire(keys), peer_psks=peer_psks),
                    stored.handled,
                    Notice("Normal", "RotationCompleted",
                           f"retired key generation(s) {gone}; every node uses generation "
                           f"{keys.current}"))
        labels = ((secret_body or {}).get("metadata") or {}).get("labels") or {}
        if dict(keys.peer_psks) != peer_psks or labels.get(contract.LABEL_TUNNEL) != name:
            return dataclasses.replace(keys, peer_psks=peer_psks), stored.handled, None
        return None

    def _write(self, name: str, uid: str | None, stored: secrets.Stored,
               keys: contract.KeySet, handled: str | None) -> dict[str, Any]:
        if stored.exists and stored.resource_version:
            return self.store.replace(name, keys, handled=handled, owner_uid=uid,
                                      resource_version=stored.resource_version)
        return self.store.create(name, keys, handled=handled, owner_uid=uid)

    def _peer_psks(self, spec: contract.TunnelSpec,
                   keys: contract.KeySet | None) -> tuple[dict[str, bytes], list[str]]:
        """The PSKs to carry for external peers; a missing one keeps its last copy."""
        found: dict[str, bytes] = {}
        problems = []
        for peer in spec.peers:
            psk = self.store.peer_psk(peer)
            if psk is None:
                problems.append(
                    f"peer {peer.name}: Secret {peer.psk_secret_name} with key "
                    f"{peer.psk_secret_key} not found in namespace {self.store.namespace}"
                )
                kept = keys.peer_psks.get(peer.name) if keys else None
                if kept is not None:
                    found[peer.name] = kept
            else:
                found[peer.name] = psk
        return found, problems

    # --- reporting ------------------------------------------------------------------------------

    def _invalid(self, name: str, generation: int | None, previous: dict[str, Any],
                 problems: list[str], inputs: Inputs, highest: int) -> Outcome:
        secret_body = inputs.secret
        if secret_body is None and highest > 0:
            secret_body = self.store.get(name)
        stored = secrets.parse(secret_body)
        observation = status.Observation(
            generation=generation, now=inputs.now, spec_problems=problems, keys=stored.keys,
            key_problem="the spec is invalid", highest=highest,
            last_rotation=status.last_rotation(previous, stored.keys),
        )
        outcome = Outcome(status=status.desired(previous, observation), highest=highest)
        self._announce(name, previous, outcome, observation)
        self._write_status(name, previous, outcome.status)
        return outcome

    def _announce(self, name: str, previous: Mapping[str, Any], outcome: Outcome,
                  observation: status.Observation) -> None:
        """Warning Events for problems that appear or change (not on every pass)."""
        announced = self._announced.get(name, set())
        # A condition's message may join several problems (Degraded does).
        shown = [str(c.get("message")) for c in previous.get("conditions") or []
                 if c.get("status") == ("False" if c.get("type") == "Ready" else "True")]
        current = set(status.problems(observation))
        for problem in status.problems(observation):
            if problem not in announced and not any(problem[1] in m for m in shown):
                outcome.notices.append(Notice("Warning", *problem))
        timeout = "AcknowledgementTimeout"
        degraded = status.condition(previous, contract.Condition.DEGRADED)
        had = {reason for reason, _ in announced} | {degraded.get("reason")}
        outcome.timed_out = timeout not in had and any(r == timeout for r, _ in current)
        self._announced[name] = current

    def _write_status(self, name: str, previous: Mapping[str, Any],
                      wanted: Mapping[str, Any]) -> None:
        patch = status.merge_patch(previous, wanted)
        if patch is not None:
            logger.debug("Tunnel %s: status patch %s", name, patch)  # status holds no keys
            self.status_api.patch(name, patch)
