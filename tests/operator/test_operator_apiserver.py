"""We test the operator process end to end on the real apiserver, with simulated agents:

keys appear within seconds of applying a tunnel; acknowledged rotation retires the old key;
a withholding node keeps it and is named; an operator killed mid-rotation is finished by its
successor without a second rotation; deleted or corrupted Secrets are restored with Events;
an invalid spec is reported while other tunnels keep being served; deletion cleans up;
metrics and liveness answer.
"""

from __future__ import annotations

import base64

import pytest

from kube_ipsec import contract
from kube_ipsec.operator import secrets
from tests.operator.conftest import Cluster, apply_peering_crd, wait_for

pytestmark = pytest.mark.apiserver

KD = contract.Condition.KEYS_DISTRIBUTED


def keys_distributed(cluster: Cluster, name: str) -> bool:
    return cluster.condition(name, KD).get("status") == "True"


def generations(cluster: Cluster, name: str) -> tuple[int, list[int]] | None:
    keys = cluster.keyset(name)
    return (keys.current, keys.numbers) if keys else None


def test_apply_gives_one_generation_and_keys_distributed(cluster: Cluster) -> None:
    cluster.operator("--standalone")
    name = cluster.create_tunnel("mesh")
    wait_for(lambda: keys_distributed(cluster, name), 30, "KeysDistributed=True")

    secret = cluster.secret(name)
    assert secret is not None
    assert secret["metadata"]["labels"] == {
        contract.LABEL_MANAGED_BY: contract.MANAGED_BY, contract.LABEL_TUNNEL: name,
        contract.LABEL_COMPONENT: contract.COMPONENT_KEYS,
    }
    assert generations(cluster, name) == (1, [1])
    tunnel = cluster.tunnel(name)
    assert contract.FINALIZER in tunnel["metadata"]["finalizers"]
    assert tunnel["status"]["observedGeneration"] == tunnel["metadata"]["generation"]
    assert tunnel["status"]["keyGeneration"] == 1
    assert tunnel["status"]["nodes"]["summary"] == "0/0"
    wait_for(lambda: "KeysCreated" in cluster.event_reasons(name), 15, "KeysCreated Event")


def test_acknowledged_rotation_retires_the_old_generation(cluster: Cluster) -> None:
    a, b = cluster.add_node("a"), cluster.add_node("b")
    cluster.operator("--standalone")
    name = cluster.create_tunnel("mesh")
    wait_for(lambda: generations(cluster, name) == (1, [1]), 30, "generation 1")
    for node in (a, b):
        cluster.report(node, name, [1], 1)
    wait_for(lambda: cluster.condition(name, contract.Condition.READY).get("status") == "True",
             15, "Ready with both nodes")

    cluster.rotate_now(name, "first")
    wait_for(lambda: generations(cluster, name) == (1, [1, 2]), 15, "generation 2 staged")
    assert cluster.condition(name, contract.Condition.ROTATING)["reason"] == "Staging"
    for node in (a, b):
        cluster.report(node, name, [1, 2], 1)
    wait_for(lambda: generations(cluster, name) == (2, [1, 2]), 15, "generation 2 current")
    for node in (a, b):
        cluster.report(node, name, [1, 2], 2)
    wait_for(lambda: generations(cluster, name) == (2, [2]), 15, "generation 1 retired")

    wait_for(lambda: cluster.condition(name, contract.Condition.ROTATING).get("status")
             == "False", 15, "Rotating=False")
    status = cluster.tunnel(name)["status"]
    assert status["keyGeneration"] == 2
    assert status["rotation"]["phase"] == "Idle" and status["rotation"]["lastRotation"]
    assert status["nodes"] == {"selected": 2, "ready": 2, "acknowledged": 2, "summary": "2/2"}
    assert cluster.condition(name, contract.Condition.DEGRADED)["status"] == "False"
    wait_for(lambda: "RotationCompleted" in cluster.event_reasons(name), 15, "Events")
    assert cluster.event_reasons(name).count("RotationStarted") == 1


def test_withholding_node_keeps_the_old_key_and_is_named(cluster: Cluster) -> None:
    a, b = cluster.add_node("a"), cluster.add_node("b")
    cluster.operator("--standalone")
    name = cluster.create_tunnel("mesh", rotation={"interval": "1h", "overlap": "2s"})
    wait_for(lambda: generations(cluster, name) == (1, [1]), 30, "generation 1")
    for node in (a, b):
        cluster.report(node, name, [1], 1)
    cluster.rotate_now(name, "first")
    wait_for(lambda: generations(cluster, name) == (1, [1, 2]), 15, "generation 2 staged")
    cluster.report(a, name, [1, 2], 1)  # b never loads generation 2

    def degraded() -> dict[str, object]:
        cond = cluster.condition(name, contract.Condition.DEGRADED)
        return cond if cond.get("reason") == "AcknowledgementTimeout" else {}

    cond = wait_for(degraded, 20, "Degraded=AcknowledgementTimeout")
    assert cond["status"] == "True" and b in str(cond["message"]) and a not in str(cond["message"])
    status = cluster.tunnel(name)["status"]
    assert status["rotation"]["pendingNodes"] == [b]
    assert generations(cluster, name) == (1, [1, 2])
    wait_for(lambda: "AcknowledgementTimeout" in cluster.event_reasons(name), 15, "Event")

    cluster.report(b, name, [1, 2], 1)  # b comes back: the rotation carries on
    wait_for(lambda: generations(cluster, name) == (2, [1, 2]), 15, "generation 2 current")
    for node in (a, b):
        cluster.report(node, name, [1, 2], 2)
    wait_for(lambda: generations(cluster, name) == (2, [2]), 15, "generation 1 retired")
    wait_for(lambda: cluster.condition(name, contract.Condition.DEGRADED).get("status")
             == "False", 15, "Degraded cleared")


def test_operator_killed_mid_rotation_is_finished_by_its_successor(cluster: Cluster) -> None:
    a = cluster.add_node("a")
    first = cluster.operator("--standalone")
    name = cluster.create_tunnel("mesh")
    wait_for(lambda: generations(cluster, name) == (1, [1]), 30, "generation 1")
    cluster.report(a, name, [1], 1)
    cluster.rotate_now(name, "once")
    wait_for(lambda: generations(cluster, name) == (1, [1, 2]), 15, "generation 2 staged")
    first.kill()

    cluster.report(a, name, [1, 2], 1)
    second = cluster.operator("--standalone")
    wait_for(lambda: generations(cluster, name) == (2, [1, 2]), 30, "generation 2 current")
    cluster.report(a, name, [1, 2], 2)
    wait_for(lambda: generations(cluster, name) == (2, [2]), 15, "generation 1 retired")
    secret = cluster.secret(name)
    assert secret is not None
    assert secret["metadata"]["annotations"][secrets.ANNOTATION_ROTATE_HANDLED] == "once"
    # The killed operator may not have logged or posted its Event; the successor must not stage.
    assert "staged key generation" not in second.output
    assert "key generation 2 is current" in second.output
    assert cluster.tunnel(name)["status"]["highestKeyGeneration"] == 2


def test_deleted_secret_is_recreated_with_a_new_generation(cluster: Cluster) -> None:
    cluster.operator("--standalone")
    name = cluster.create_tunnel("mesh")
    wait_for(lambda: generations(cluster, name) == (1, [1]), 30, "generation 1")
    cluster.core.delete_namespaced_secret(contract.secret_name(name), cluster.namespace)
    wait_for(lambda: generations(cluster, name) == (2, [2]), 15, "Secret restored")
    wait_for(lambda: "KeySecretRecreated" in cluster.event_reasons(name), 15, "Warning Event")
    warning = next(e for e in cluster.events(name) if e.reason == "KeySecretRecreated")
    assert warning.type == "Warning"


def test_corrupted_secret_is_replaced_and_reported(cluster: Cluster) -> None:
    cluster.operator("--standalone")
    name = cluster.create_tunnel("mesh")
    wait_for(lambda: generations(cluster, name) == (1, [1]), 30, "generation 1")
    cluster.core.patch_namespaced_secret(
        contract.secret_name(name), cluster.namespace,
        {"data": {"gen-1.key": base64.b64encode(b"too short").decode()}})
    wait_for(lambda: generations(cluster, name) == (2, [2]), 15, "Secret replaced")
    wait_for(lambda: "KeySecretCorrupted" in cluster.event_reasons(name), 15, "Warning Event")


def test_invalid_spec_is_reported_and_other_tunnels_are_served(cluster: Cluster) -> None:
    op = cluster.operator("--standalone")
    peer = {"pskSecretRef": {"name": "gw-psk"}}
    bad = cluster.create_tunnel("bad", peers=[
        {"name": "gw1", "address": "192.0.2.1", **peer},
        {"name": "gw2", "address": "192.0.2.1", **peer},
    ])

    def invalid() -> dict[str, object]:
        cond = cluster.condition(bad, contract.Condition.READY)
        return cond if cond.get("reason") == "InvalidSpec" else {}

    cond = wait_for(invalid, 30, "Ready=False InvalidSpec")
    assert cond["status"] == "False" and "listed twice" in str(cond["message"])
    wait_for(lambda: "InvalidSpec" in cluster.event_reasons(bad), 15, "Warning Event")
    assert cluster.secret(bad) is None

    good = cluster.create_tunnel("good")
    wait_for(lambda: keys_distributed(cluster, good), 30, "the valid tunnel is served")
    assert op.proc is not None and op.proc.poll() is None
    assert cluster.event_reasons(bad).count("InvalidSpec") == 1  # once, not every resync


def test_external_peer_psk_is_copied_into_the_tunnel_secret(cluster: Cluster) -> None:
    cluster.operator("--standalone")
    name = cluster.create_tunnel("gw", mode="tunnel", peers=[
        {"name": "gw", "address": "192.0.2.10", "pskSecretRef": {"name": "gw-psk"}}])
    wait_for(lambda: cluster.condition(name, contract.Condition.DEGRADED).get("reason")
             == "PeerSecretMissing", 30, "Degraded=PeerSecretMissing")
    psk = b"external peer pre-shared key 0123456789"
    cluster.core.create_namespaced_secret(cluster.namespace, {
        "metadata": {"name": "gw-psk"}, "data": {"psk": base64.b64encode(psk).decode()}})
    wait_for(lambda: (cluster.keyset(name) or contract.KeySet(0, ())).peer_psks == {"gw": psk},
             15, "peer PSK copied")
    wait_for(lambda: cluster.condition(name, contract.Condition.DEGRADED).get("status")
             == "False", 15, "Degraded cleared")


def test_deleting_the_tunnel_deletes_its_secret(cluster: Cluster) -> None:
    cluster.operator("--standalone")
    name = cluster.create_tunnel("mesh")
    wait_for(lambda: cluster.secret(name) is not None, 30, "Secret")
    cluster.delete_tunnel(name)
    wait_for(lambda: cluster.tunnel_gone(name), 20, "tunnel gone (finalizer removed)")
    assert cluster.secret(name) is None


def test_tunnels_deleted_at_once_leave_no_secret_behind(cluster: Cluster) -> None:
    """Keys are made only once kopf's finalizer is on, so even a racing delete cleans up."""
    cluster.operator("--standalone")
    wait_for(lambda: cluster.operators[0].output.count("Initial authentication has finished"),
             30, "operator up")
    names = [cluster.create_tunnel(f"quick{i}") for i in range(5)]
    for name in names:
        cluster.delete_tunnel(name)
    wait_for(lambda: all(cluster.tunnel_gone(n) for n in names), 30, "tunnels gone")
    assert [n for n in names if cluster.secret(n) is not None] == []


def test_metrics_and_liveness(cluster: Cluster) -> None:
    op = cluster.operator("--standalone")
    name = cluster.create_tunnel("mesh")
    wait_for(lambda: keys_distributed(cluster, name), 30, "KeysDistributed")
    cluster.rotate_now(name, "m")
    wait_for(lambda: generations(cluster, name) == (2, [2]), 15, "rotation without nodes")

    def scraped() -> str:
        text = op.scrape()
        return text if f'kube_ipsec_operator_key_generation{{tunnel="{name}"}} 2.0' in text else ""

    text = wait_for(scraped, 15, "key generation metric")
    for line in (
        'kube_ipsec_operator_tunnels{condition="KeysDistributed",status="True"} 1.0',
        'kube_ipsec_operator_rotations_total{result="completed"} 1.0',
        "kube_ipsec_operator_rotation_duration_seconds_count 1.0",
        f'kube_ipsec_operator_nodes_acknowledged{{tunnel="{name}"}} 0.0',
        "kube_ipsec_operator_reconcile_errors_total 0.0",
    ):
        assert line in text
    assert op.scrape("/healthz", port=op.liveness_port)


def test_leader_failover_without_double_rotation(cluster: Cluster) -> None:
    apply_peering_crd(cluster.apiserver)
    peering = ("--peering", f"{cluster.namespace}-peering", "--peering-lifetime", "6")
    high = cluster.operator(*peering, "--priority", "20")
    a = cluster.add_node("a")
    name = cluster.create_tunnel("mesh")
    wait_for(lambda: generations(cluster, name) == (1, [1]), 60, "generation 1")
    low = cluster.operator(*peering, "--priority", "10")
    wait_for(lambda: "Initial authentication has finished" in low.output, 30, "standby up")

    cluster.report(a, name, [1], 1)
    cluster.rotate_now(name, "failover")
    wait_for(lambda: generations(cluster, name) == (1, [1, 2]), 15, "generation 2 staged")
    assert "Resuming operations" not in low.output  # it starts paused while high is alive
    high.kill()
    cluster.report(a, name, [1, 2], 1)
    wait_for(lambda: generations(cluster, name) == (2, [1, 2]), 60, "standby switches")
    cluster.report(a, name, [1, 2], 2)
    wait_for(lambda: generations(cluster, name) == (2, [2]), 15, "standby retires")

    assert "staged key generation" not in low.output
    assert "created key Secret" not in low.output
    assert "key generation 2 is current" in low.output
    assert "Resuming operations" in low.output
    assert cluster.tunnel(name)["status"]["highestKeyGeneration"] == 2


def test_no_key_material_in_logs_events_or_status(cluster: Cluster) -> None:
    """The whole flow, verbose and in JSON; then look for every key in every encoding."""
    psk = b"peer-psk-" + bytes(range(200, 223))
    cluster.core.create_namespaced_secret(cluster.namespace, {
        "metadata": {"name": "gw-psk"}, "data": {"psk": base64.b64encode(psk).decode()}})
    op = cluster.operator("--standalone", "--verbose", "--log-format", "json")
    a = cluster.add_node("a")
    name = cluster.create_tunnel("mesh", mode="tunnel", peers=[
        {"name": "gw", "address": "192.0.2.10", "pskSecretRef": {"name": "gw-psk"}}])
    seen: set[bytes] = {psk}

    def step(expected: tuple[int, list[int]]) -> None:
        wait_for(lambda: generations(cluster, name) == expected, 30, f"generations {expected}")
        keys = cluster.keyset(name)
        assert keys is not None
        seen.update(g.key for g in keys.generations)
        seen.update(keys.peer_psks.values())

    step((1, [1]))
    cluster.report(a, name, [1], 1)
    cluster.rotate_now(name, "hygiene")
    step((1, [1, 2]))
    cluster.report(a, name, [1, 2], 1)
    step((2, [1, 2]))
    cluster.report(a, name, [1, 2], 2)
    step((2, [2]))
    cluster.core.delete_namespaced_secret(contract.secret_name(name), cluster.namespace)
    step((3, [3]))
    cluster.core.patch_namespaced_secret(
        contract.secret_name(name), cluster.namespace,
        {"data": {"manifest.json": base64.b64encode(b"{not json").decode()}})
    step((4, [4]))
    wait_for(lambda: "KeySecretCorrupted" in cluster.event_reasons(name), 15, "Event")
    cluster.delete_tunnel(name)
    wait_for(lambda: cluster.tunnel_gone(name), 20, "tunnel deleted")
    op.stop()

    output = op.log.read_bytes()
    assert b'"message"' in output and b"staged key generation 2" in output  # JSON, verbose
    events = " ".join(f"{e.reason} {e.message}" for e in cluster.events(name)).encode()
    assert b"KeySecretRecreated" in events
    metrics_and_status = str(cluster.custom.list_cluster_custom_object(
        contract.GROUP, contract.VERSION, contract.TUNNEL_PLURAL)).encode()
    assert len(seen) == 5
    for key in seen:
        for form in (key, key.hex().encode(), key.hex().upper().encode(),
                     base64.b64encode(key), base64.urlsafe_b64encode(key),
                     base64.b64encode(key).rstrip(b"=")):
            for where, text in (("log", output), ("events", events),
                                ("tunnels", metrics_and_status)):
                assert form not in text, f"key material in {where}"


def test_operator_rides_out_an_apiserver_restart(cluster: Cluster) -> None:
    op = cluster.operator("--standalone")
    name = cluster.create_tunnel("mesh")
    wait_for(lambda: generations(cluster, name) == (1, [1]), 30, "generation 1")
    cluster.apiserver.stop()
    try:
        wait_for(lambda: "failed; will retry" in op.output or "reconciliation failed"
                 in op.output, 30, "the operator notices the outage")
    finally:
        cluster.apiserver.start()
    cluster.rotate_now(name, "after-outage")
    wait_for(lambda: generations(cluster, name) == (2, [2]), 60, "rotation after the outage")
    assert op.proc is not None and op.proc.poll() is None
