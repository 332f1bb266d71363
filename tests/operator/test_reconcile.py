"""We test these aspects of one reconciliation, against an in-memory Secret store:

creating, restoring and replacing the key Secret with Events and never-decreasing numbers;
on-demand rotation handled once even by a fresh operator; invalid specs reported without
touching keys; external peer PSKs copied in; status conditions and node summaries.
"""

from __future__ import annotations

import base64
import copy
import datetime
import itertools
from typing import Any

import pytest

from kube_ipsec import contract
from kube_ipsec.operator import reconcile, secrets, status

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
NS = "kube-ipsec"


class FakeStore:
    """SecretStore's behaviour: resourceVersion preconditions, AlreadyExists, 404s."""

    namespace = NS

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.versions = itertools.count(1)
        self.writes = 0

    def get(self, tunnel: str) -> dict[str, Any] | None:
        obj = self.objects.get(contract.secret_name(tunnel))
        return copy.deepcopy(obj) if obj else None

    def _store(self, body: dict[str, Any]) -> dict[str, Any]:
        body["metadata"]["resourceVersion"] = str(next(self.versions))
        self.objects[body["metadata"]["name"]] = body
        self.writes += 1
        return copy.deepcopy(body)

    def create(self, tunnel: str, keys: contract.KeySet, *, handled: str | None,
               owner_uid: str | None) -> dict[str, Any]:
        if contract.secret_name(tunnel) in self.objects:
            raise secrets.Conflict("exists")
        return self._store(secrets.manifest(tunnel, NS, keys, handled=handled,
                                            owner_uid=owner_uid))

    def replace(self, tunnel: str, keys: contract.KeySet, *, handled: str | None,
                owner_uid: str | None, resource_version: str) -> dict[str, Any]:
        now = self.objects.get(contract.secret_name(tunnel))
        if now is None or now["metadata"]["resourceVersion"] != resource_version:
            raise secrets.Conflict("changed")
        return self._store(secrets.manifest(tunnel, NS, keys, handled=handled,
                                            owner_uid=owner_uid))

    def delete(self, tunnel: str) -> bool:
        return self.objects.pop(contract.secret_name(tunnel), None) is not None

    def peer_psk(self, peer: contract.PeerSpec) -> bytes | None:
        obj = self.objects.get(peer.psk_secret_name)
        value = (obj or {}).get("data", {}).get(peer.psk_secret_key)
        return base64.b64decode(value) if value else None


class FakeStatus:
    def __init__(self) -> None:
        self.status: dict[str, Any] = {}
        self.patches: list[dict[str, Any]] = []

    def patch(self, name: str, patch: dict[str, Any]) -> None:
        self.patches.append(copy.deepcopy(patch))
        self.status = _merge(self.status, patch)


def _merge(old: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return patch
    out = dict(old) if isinstance(old, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge(out.get(key), value)
    return out


class World:
    def __init__(self) -> None:
        self.store = FakeStore()
        self.status = FakeStatus()
        self.keys = iter(bytes([i]) * 32 for i in itertools.count(1))
        self.spec: dict[str, Any] = {"rotation": {"interval": "1h", "overlap": "10s"}}
        self.annotations: dict[str, str] = {}
        self.generation = 1
        self.node_labels: dict[str, dict[str, str]] = {}
        self.ipsec_nodes: dict[str, dict[str, Any]] = {}

    def operator(self) -> reconcile.Reconciler:
        """A fresh operator process: nothing in memory, the same API."""
        return reconcile.Reconciler(self.store, self.status,  # type: ignore[arg-type]
                                    new_key=lambda: next(self.keys))

    def body(self) -> dict[str, Any]:
        return {
            "apiVersion": contract.API_VERSION, "kind": contract.TUNNEL_KIND,
            "metadata": {"name": "mesh", "uid": "u1", "generation": self.generation,
                         "annotations": dict(self.annotations)},
            "spec": copy.deepcopy(self.spec), "status": copy.deepcopy(self.status.status),
        }

    def run(self, minutes: float = 0, op: reconcile.Reconciler | None = None) -> reconcile.Outcome:
        return (op or self.operator()).reconcile(reconcile.Inputs(
            body=self.body(), secret=self.store.get("mesh"), node_labels=self.node_labels,
            ipsec_nodes=self.ipsec_nodes, now=T0 + datetime.timedelta(minutes=minutes),
        ))

    def keyset(self) -> contract.KeySet:
        return contract.KeySet.from_secret_data(self.store.objects["ipsec-keys-mesh"]["data"])

    def report(self, node: str, loaded: list[int], in_use: int | None, ready: bool = True) -> None:
        self.node_labels.setdefault(node, {"kubernetes.io/os": "linux"})
        peer_state = ({"ikeState": contract.IKE_ESTABLISHED, "childState": contract.CHILD_INSTALLED}
                      if ready else {"ikeState": "CONNECTING"})
        self.ipsec_nodes[node] = {"status": {"tunnels": [{
            "name": "mesh", "keyGenerationsLoaded": loaded, "keyGenerationInUse": in_use,
            "peers": [{"name": "other", **peer_state}],
        }]}}


def cond(world: World, ctype: contract.Condition) -> dict[str, Any]:
    return dict(status.condition(world.status.status, ctype))


@pytest.fixture
def world() -> World:
    return World()


def test_apply_creates_one_generation_and_keys_distributed(world: World) -> None:
    outcome = world.run()
    keys = world.keyset()
    assert (keys.current, keys.numbers) == (1, [1])
    secret = world.store.objects["ipsec-keys-mesh"]
    assert secret["metadata"]["labels"] == {
        contract.LABEL_MANAGED_BY: contract.MANAGED_BY, contract.LABEL_TUNNEL: "mesh",
        contract.LABEL_COMPONENT: contract.COMPONENT_KEYS,
    }
    assert cond(world, contract.Condition.KEYS_DISTRIBUTED)["status"] == "True"
    assert cond(world, contract.Condition.READY)["reason"] == "NoNodesSelected"
    assert world.status.status["observedGeneration"] == 1
    assert world.status.status["keyGeneration"] == 1
    assert [n.reason for n in outcome.notices] == ["KeysCreated"]


def test_idle_reconcile_writes_nothing(world: World) -> None:
    world.run()
    writes, patches = world.store.writes, len(world.status.patches)
    outcome = world.run(minutes=1)
    assert (world.store.writes, len(world.status.patches), outcome.notices) == (writes, patches, [])


def test_deleted_secret_is_recreated_with_a_higher_generation(world: World) -> None:
    world.run()
    world.annotations[contract.ANNOTATION_ROTATE_NOW] = "r1"
    world.run()  # no nodes: the rotation runs through to generation 2
    assert world.keyset().numbers == [2]
    world.store.delete("mesh")
    outcome = world.run()
    assert world.keyset().numbers == [3]
    assert [(n.type, n.reason) for n in outcome.notices] == [("Warning", "KeySecretRecreated")]
    assert world.status.status["highestKeyGeneration"] == 3


def test_corrupted_secret_is_replaced_with_a_warning(world: World) -> None:
    world.run()
    data = world.store.objects["ipsec-keys-mesh"]["data"]
    data["gen-1.key"] = base64.b64encode(b"short").decode()
    outcome = world.run()
    assert world.keyset().numbers == [2]
    assert [(n.type, n.reason) for n in outcome.notices] == [("Warning", "KeySecretCorrupted")]
    assert "5 bytes" in outcome.notices[0].message


def test_valid_secret_is_never_replaced(world: World) -> None:
    world.run()
    before = copy.deepcopy(world.store.objects["ipsec-keys-mesh"]["data"])
    world.status.status = {}  # a fresh status (e.g. the tunnel was restored from a backup)
    world.run()
    assert world.store.objects["ipsec-keys-mesh"]["data"] == before


def test_acknowledged_rotation_with_nodes(world: World) -> None:
    world.report("a", [1], 1)
    world.report("b", [1], 1)
    world.run()
    world.annotations[contract.ANNOTATION_ROTATE_NOW] = "r1"
    world.run()
    keys = world.keyset()
    assert (keys.current, keys.numbers) == (1, [1, 2])
    assert cond(world, contract.Condition.ROTATING)["reason"] == "Staging"
    world.report("a", [1, 2], 1)
    world.report("b", [1, 2], 1)
    world.run()
    assert (world.keyset().current, world.keyset().numbers) == (2, [1, 2])
    world.report("a", [1, 2], 2)
    world.report("b", [1, 2], 2)
    outcome = world.run(minutes=1)
    assert world.keyset().numbers == [2]
    assert cond(world, contract.Condition.ROTATING)["status"] == "False"
    assert outcome.rotations_completed == [60.0]
    assert world.status.status["rotation"]["lastRotation"] == "2026-01-01T00:01:00Z"
    assert world.status.status["nodes"] == {
        "selected": 2, "ready": 2, "acknowledged": 2, "summary": "2/2"}
    assert cond(world, contract.Condition.READY)["status"] == "True"


def test_withholding_node_keeps_old_key_and_is_named(world: World) -> None:
    world.report("a", [1], 1)
    world.report("b", [1], 1)
    world.run()
    world.annotations[contract.ANNOTATION_ROTATE_NOW] = "r1"
    world.run()
    world.report("a", [1, 2], 1)
    outcome = world.run(minutes=1)  # overlap is 10s
    assert world.keyset().numbers == [1, 2] and world.keyset().current == 1
    degraded = cond(world, contract.Condition.DEGRADED)
    assert (degraded["status"], degraded["reason"]) == ("True", "AcknowledgementTimeout")
    assert "overlap: b;" in degraded["message"]
    assert world.status.status["rotation"]["pendingNodes"] == ["b"]
    assert outcome.timed_out and [n.reason for n in outcome.notices] == ["AcknowledgementTimeout"]
    assert world.run(minutes=2).notices == []  # reported once, not on every pass


def test_on_demand_rotation_is_not_repeated_by_a_restarted_operator(world: World) -> None:
    world.report("a", [1], 1)
    world.run()
    world.annotations[contract.ANNOTATION_ROTATE_NOW] = "r1"
    world.run()
    assert world.keyset().numbers == [1, 2]
    world.status.status = {}  # even if the status write after staging was lost
    world.report("a", [1, 2], 1)
    world.run()
    world.report("a", [1, 2], 2)
    world.run()
    world.run()
    assert world.keyset().numbers == [2]


def test_concurrent_writer_loses_with_a_conflict_and_replans(world: World) -> None:
    world.run()
    world.annotations[contract.ANNOTATION_ROTATE_NOW] = "r1"
    world.report("a", [1], 1)
    stale = world.store.get("mesh")
    world.run()  # another replica staged generation 2
    outcome = world.operator().reconcile(reconcile.Inputs(
        body=world.body(), secret=stale, node_labels=world.node_labels,
        ipsec_nodes=world.ipsec_nodes, now=T0))
    assert world.keyset().numbers == [1, 2]
    assert outcome.notices == []


def test_invalid_spec_is_reported_and_keys_are_left_alone(world: World) -> None:
    world.spec["peers"] = [
        {"name": "gw", "address": "127.0.0.1", "pskSecretRef": {"name": "gw-psk"}},
    ]
    outcome = world.run()
    ready = cond(world, contract.Condition.READY)
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert "127.0.0.1 cannot be an IPsec peer" in ready["message"]
    assert world.store.objects == {}
    assert [(n.type, n.reason) for n in outcome.notices] == [("Warning", "InvalidSpec")]
    assert world.run().notices == []


def test_external_peer_psk_is_copied_and_missing_one_degrades(world: World) -> None:
    world.spec["peers"] = [
        {"name": "gw", "address": "192.0.2.1", "pskSecretRef": {"name": "gw-psk"}},
    ]
    world.run()
    assert world.keyset().peer_psks == {}
    assert cond(world, contract.Condition.DEGRADED)["reason"] == "PeerSecretMissing"
    world.store.objects["gw-psk"] = {"data": {"psk": base64.b64encode(b"p" * 40).decode()}}
    world.run()
    assert world.keyset().peer_psks == {"gw": b"p" * 40}
    assert world.keyset().numbers == [1]
    assert cond(world, contract.Condition.DEGRADED)["status"] == "False"


def test_every_problem_is_announced_even_when_another_leads_degraded(world: World) -> None:
    world.report("a", [1], 1)
    world.run()
    world.annotations[contract.ANNOTATION_ROTATE_NOW] = "r1"
    world.run()
    world.spec["mode"] = "tunnel"
    world.spec["peers"] = [
        {"name": "gw", "address": "192.0.2.1", "pskSecretRef": {"name": "gw-psk"}},
    ]
    outcome = world.run(minutes=1)
    assert cond(world, contract.Condition.DEGRADED)["reason"] == "AcknowledgementTimeout"
    assert sorted(n.reason for n in outcome.notices) == [
        "AcknowledgementTimeout", "PeerSecretMissing"]
    assert world.run(minutes=2).notices == []
