"""Running the real operator as a subprocess against the real apiserver, and simulated agents.

Each test gets its own namespace (for key Secrets), its own label for the Nodes it creates and
its own tunnel names, so operators of earlier tests and tunnels of other suites never mix in.
The bare apiserver has no kubelets: tests create Node objects and write IPsecNode statuses the
way agents would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import kubernetes
import pytest
import yaml

from kube_ipsec import contract

REPO = Path(__file__).resolve().parents[2]
PEERING_CRD = REPO / "kube_ipsec" / "operator" / "peering-crd.yaml"
T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 30.0, what: str = "") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OperatorProcess:
    """``python -m kube_ipsec.operator`` with its output captured to a file."""

    def __init__(self, kubeconfig: Path, namespace: str, log: Path, *args: str) -> None:
        self.kubeconfig, self.namespace, self.log, self.args = kubeconfig, namespace, log, args
        self.metrics_port, self.liveness_port = free_port(), free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        env.pop(contract.NAMESPACE_ENV, None)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kube_ipsec.operator", "--namespace", self.namespace,
                 "--resync-interval", "1", "--metrics-port", str(self.metrics_port),
                 "--liveness", f"http://127.0.0.1:{self.liveness_port}/healthz", *self.args],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO,
            )
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup, no peering goodbye."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def scrape(self, path: str = "/metrics", port: int | None = None) -> str:
        url = f"http://127.0.0.1:{port or self.metrics_port}{path}"
        with urllib.request.urlopen(url, timeout=5) as rsp:
            return str(rsp.read().decode())


class Cluster:
    """The API as a test sees it, scoped to one test's namespace, nodes and tunnels."""

    def __init__(self, apiserver: Any, namespace: str, tmp: Path) -> None:
        self.apiserver, self.namespace, self.tmp = apiserver, namespace, tmp
        self.client = apiserver.api_client()
        self.core = kubernetes.client.CoreV1Api(self.client)
        self.custom = kubernetes.client.CustomObjectsApi(self.client)
        self.label = {"kube-ipsec-test": namespace}
        self.tunnels: list[str] = []
        self.nodes: list[str] = []
        self.operators: list[OperatorProcess] = []

    # --- operators ------------------------------------------------------------------------------

    def operator(self, *args: str, start: bool = True) -> OperatorProcess:
        log = self.tmp / f"operator-{len(self.operators)}.log"
        op = OperatorProcess(self.apiserver.kubeconfig, self.namespace, log, *args)
        self.operators.append(op)
        return op.start() if start else op

    # --- tunnels --------------------------------------------------------------------------------

    def name(self, suffix: str) -> str:
        return f"{self.namespace}-{suffix}"[:40]

    def create_tunnel(self, suffix: str, **spec: Any) -> str:
        name = self.name(suffix)
        spec.setdefault("nodeSelector", {"matchLabels": self.label})
        spec.setdefault("rotation", {"interval": "1h", "overlap": "3s"})
        self.custom.create_cluster_custom_object(
            contract.GROUP, contract.VERSION, contract.TUNNEL_PLURAL,
            {"apiVersion": contract.API_VERSION, "kind": contract.TUNNEL_KIND,
             "metadata": {"name": name}, "spec": spec},
        )
        self.tunnels.append(name)
        return name

    def tunnel(self, name: str) -> dict[str, Any]:
        return dict(self.custom.get_cluster_custom_object(
            contract.GROUP, contract.VERSION, contract.TUNNEL_PLURAL, name))

    def condition(self, name: str, ctype: contract.Condition) -> dict[str, Any]:
        for entry in (self.tunnel(name).get("status") or {}).get("conditions") or []:
            if entry["type"] == ctype.value:
                return dict(entry)
        return {}

    def rotate_now(self, name: str, value: str) -> None:
        self.custom.patch_cluster_custom_object(
            contract.GROUP, contract.VERSION, contract.TUNNEL_PLURAL, name,
            {"metadata": {"annotations": {contract.ANNOTATION_ROTATE_NOW: value}}},
            _content_type="application/merge-patch+json",
        )

    def delete_tunnel(self, name: str) -> None:
        with contextlib.suppress(kubernetes.client.ApiException):
            self.custom.delete_cluster_custom_object(
                contract.GROUP, contract.VERSION, contract.TUNNEL_PLURAL, name)

    def tunnel_gone(self, name: str) -> bool:
        try:
            self.tunnel(name)
        except kubernetes.client.ApiException as exc:
            return exc.status == 404
        return False

    # --- key Secrets ----------------------------------------------------------------------------

    def secret(self, tunnel: str) -> dict[str, Any] | None:
        try:
            obj = self.core.read_namespaced_secret(contract.secret_name(tunnel), self.namespace)
        except kubernetes.client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(self.client.sanitize_for_serialization(obj))

    def keyset(self, tunnel: str) -> contract.KeySet | None:
        secret = self.secret(tunnel)
        try:
            return contract.KeySet.from_secret_data(secret["data"]) if secret else None
        except contract.KeyFormatError:
            return None

    def events(self, tunnel: str) -> list[Any]:
        return list(self.core.list_event_for_all_namespaces(
            field_selector=f"involvedObject.name={tunnel}").items)

    def event_reasons(self, tunnel: str) -> list[str]:
        return [e.reason for e in sorted(self.events(tunnel), key=lambda e: e.metadata.name)]

    # --- simulated nodes and agents -------------------------------------------------------------

    def add_node(self, suffix: str) -> str:
        name = self.name(suffix)
        self.core.create_node({"metadata": {"name": name, "labels": self.label}})
        self.custom.create_cluster_custom_object(
            contract.GROUP, contract.VERSION, contract.NODE_PLURAL,
            {"apiVersion": contract.API_VERSION, "kind": contract.NODE_KIND,
             "metadata": {"name": contract.node_object_name(name)}, "spec": {"nodeName": name}},
        )
        self.nodes.append(name)
        return name

    def report(self, node: str, tunnel: str, loaded: list[int], in_use: int | None,
               ready: bool = True) -> None:
        """Write the IPsecNode status an agent would write for one tunnel."""
        peer = {"name": "peer", "ikeState": contract.IKE_ESTABLISHED if ready else "CONNECTING",
                "childState": contract.CHILD_INSTALLED if ready else "NONE"}
        entry: dict[str, Any] = {"name": tunnel, "keyGenerationsLoaded": loaded, "peers": [peer]}
        if in_use is not None:
            entry["keyGenerationInUse"] = in_use
        self.custom.patch_cluster_custom_object_status(
            contract.GROUP, contract.VERSION, contract.NODE_PLURAL,
            contract.node_object_name(node), {"status": {"tunnels": [entry]}},
            _content_type="application/merge-patch+json",
        )

    def close(self) -> None:
        for name in self.tunnels:
            self.delete_tunnel(name)
        if any(op.proc and op.proc.poll() is None for op in self.operators):
            with contextlib.suppress(AssertionError):
                wait_for(lambda: all(self.tunnel_gone(t) for t in self.tunnels), 20, "cleanup")
        for op in self.operators:
            op.stop()
        for name in self.nodes:
            with contextlib.suppress(kubernetes.client.ApiException):
                self.core.delete_node(name)
            with contextlib.suppress(kubernetes.client.ApiException):
                self.custom.delete_cluster_custom_object(
                    contract.GROUP, contract.VERSION, contract.NODE_PLURAL, name)
        self.client.close()


def apply_peering_crd(apiserver: Any) -> None:
    with apiserver.api_client() as client:
        api = kubernetes.client.ApiextensionsV1Api(client)
        doc = yaml.safe_load(PEERING_CRD.read_text())
        with contextlib.suppress(kubernetes.client.ApiException):
            api.create_custom_resource_definition(doc)

        def established() -> bool:
            crd = api.read_custom_resource_definition(doc["metadata"]["name"])
            return any(c.type == "Established" and c.status == "True"
                       for c in (crd.status.conditions or []))

        wait_for(established, 30, "peering CRD Established")


@pytest.fixture
def cluster(apiserver: Any, k8s_namespace: str, tmp_path: Path) -> Iterator[Cluster]:
    world = Cluster(apiserver, k8s_namespace, tmp_path)
    try:
        yield world
    finally:
        world.close()
