"""The CLI on the real API server: reads what agents and operator publish, writes one annotation."""

from __future__ import annotations

import contextlib
import datetime
import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import kubernetes
import pytest

from kube_ipsec import contract
from kube_ipsec.cli import app
from kube_ipsec.cli.cluster import KubeCluster
from tests.cli import fake
from tests.fixtures.apiserver import APIServer

pytestmark = pytest.mark.apiserver

TUNNEL = "cli-test-mesh"
NODES = {"cli-a": "10.9.0.1", "cli-b": "10.9.0.2"}


def _now_ts(seconds_ago: float = 0) -> str:
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=seconds_ago)
    return contract.utcnow_rfc3339(now)


@pytest.fixture
def mesh(apiserver: APIServer) -> Iterator[Any]:
    """Two labelled Nodes, a tunnel selecting them, and both agents' IPsecNode reports."""
    with apiserver.api_client() as client:
        core = kubernetes.client.CoreV1Api(client)
        custom = kubernetes.client.CustomObjectsApi(client)
        g, v = contract.GROUP, contract.VERSION
        for name in NODES:
            core.create_node({"metadata": {"name": name, "labels": {"cli-test": "yes"}}})
        body = fake.tunnel(TUNNEL, selector={"matchLabels": {"cli-test": "yes"}})
        status = body.pop("status")
        custom.create_cluster_custom_object(g, v, contract.TUNNEL_PLURAL, body)
        custom.patch_cluster_custom_object_status(
            g, v, contract.TUNNEL_PLURAL, TUNNEL, {"status": status}
        )
        for name, address in NODES.items():
            other = next(n for n in NODES if n != name)
            report = fake.ipsec_node(name, address, [fake.peer(other, NODES[other])],
                                     tunnel=TUNNEL)
            report["status"]["heartbeat"] = _now_ts(5)
            status = report.pop("status")
            custom.create_cluster_custom_object(g, v, contract.NODE_PLURAL, report)
            custom.patch_cluster_custom_object_status(
                g, v, contract.NODE_PLURAL, name, {"status": status}
            )
        try:
            yield client
        finally:
            for plural, names in ((contract.NODE_PLURAL, NODES), (contract.TUNNEL_PLURAL,
                                                                   [TUNNEL])):
                for name in names:
                    with contextlib.suppress(kubernetes.client.ApiException):
                        custom.delete_cluster_custom_object(g, v, plural, name)
            for name in NODES:
                with contextlib.suppress(kubernetes.client.ApiException):
                    core.delete_node(name)


def _run(client: Any, *argv: str) -> tuple[int, Any]:
    out: list[str] = []
    code = app.run(["-o", "json", *argv], KubeCluster(client), datetime.datetime.now(datetime.UTC),
                   out.append)
    return code, json.loads(out[0])


def test_status_diagnose_and_rotate_on_a_real_api(mesh: Any) -> None:
    code, report = _run(mesh, "status")
    assert code == 0
    tunnel = next(t for t in report["tunnels"] if t["name"] == TUNNEL)
    assert tunnel["selected"] == 2 and tunnel["ready"] == "True"
    assert {n["name"] for n in report["nodes"]} >= set(NODES)
    peers = {(p["node"], p["peer"]) for p in report["peers"] if p["tunnel"] == TUNNEL}
    assert peers == {("cli-a", "cli-b"), ("cli-b", "cli-a")}

    code, diagnosis = _run(mesh, "diagnose", "cli-a", "--tunnel", TUNNEL)
    assert (code, diagnosis["encrypted"]) == (0, True), diagnosis

    custom = kubernetes.client.CustomObjectsApi(mesh)
    custom.patch_cluster_custom_object_status(
        contract.GROUP, contract.VERSION, contract.NODE_PLURAL, "cli-b",
        {"status": {"tunnels": [{
            "name": TUNNEL, "keyGenerationsLoaded": [1, 2], "keyGenerationInUse": 2,
            "peers": [fake.peer("cli-a", NODES["cli-a"], ike="CONNECTING")],
        }]}},
    )
    code, diagnosis = _run(mesh, "diagnose", "cli-b", "--peer", "cli-a", "--tunnel", TUNNEL)
    assert code == 1
    assert any("CONNECTING" in f["message"] for f in diagnosis["findings"])

    code, result = _run(mesh, "rotate", TUNNEL)
    assert code == 0
    stored = custom.get_cluster_custom_object(
        contract.GROUP, contract.VERSION, contract.TUNNEL_PLURAL, TUNNEL
    )
    annotations = stored["metadata"]["annotations"]
    assert annotations[contract.ANNOTATION_ROTATE_NOW] == result["requestedAt"]


def test_console_script_with_kubeconfig(apiserver: APIServer, mesh: Any) -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import sys; from kube_ipsec.cli import main; sys.exit(main())",
         "--kubeconfig", str(apiserver.kubeconfig), "status", "-o", "json"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert TUNNEL in {t["name"] for t in json.loads(out.stdout)["tunnels"]}
    missing = subprocess.run(
        [sys.executable, "-c", "import sys; from kube_ipsec.cli import main; sys.exit(main())",
         "--kubeconfig", str(apiserver.kubeconfig), "rotate", "no-such-tunnel"],
        capture_output=True, text=True, timeout=60,
    )
    assert missing.returncode == 2
    assert "'no-such-tunnel' not found" in missing.stderr
