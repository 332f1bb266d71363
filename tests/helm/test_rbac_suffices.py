"""The chart's least-privilege RBAC is enough for the real operator and agent.

Both run as processes on the host with the chart's ServiceAccount tokens (TokenRequest; the
agent's token is bound to a Pod on its Node, as the kubelet would mount it, so the admission
policy sees the node name). One tunnel goes through key creation, the agent's acknowledgement
and deletion; any permission the chart forgot shows up as a 403 in a log or a missing step.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from kube_ipsec import contract
from tests.fixtures.apiserver import APIServer
from tests.helm.install import Release, installed

pytestmark = pytest.mark.apiserver

RELEASE = "rbactest"
TUNNEL = "rbac-test"
NODE = "rbac-node"
G, V = contract.GROUP, contract.VERSION


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(what: str, check: Callable[[], Any], logs: list[Path], timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    tails = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in logs if p.exists())
    raise AssertionError(f"timed out waiting for {what}\n{tails}")


@contextlib.contextmanager
def _process(args: list[str], log: Path, env: dict[str, str]) -> Iterator[None]:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _token(apiserver: APIServer, release: Release, component: str,
           pod: Any | None = None) -> str:
    spec: dict[str, Any] = {"expirationSeconds": 3600}
    if pod is not None:
        spec["boundObjectRef"] = {"kind": "Pod", "apiVersion": "v1",
                                  "name": pod.metadata.name, "uid": pod.metadata.uid}
    with apiserver.api_client() as client:
        result = kubernetes.client.CoreV1Api(client).create_namespaced_service_account_token(
            release.account(component), release.namespace, {"spec": spec}
        )
    return str(result.status.token)


def _forbidden(log: Path) -> list[str]:
    """Log lines that report a denied request (the one tolerated case excepted)."""
    lines = log.read_text(errors="replace").splitlines()
    return [
        line for line in lines
        if "orbidden" in line  # "Forbidden"/"forbidden": every 403 says so; a bare 403
        # could be a timestamp's milliseconds
        # The operator tries to create its peering object and carries on if it may not:
        # the chart creates that object, so the operator needs no create permission.
        and "ClusterKopfPeering" not in line
    ]


@pytest.fixture
def release(apiserver: APIServer) -> Iterator[Release]:
    with installed(apiserver, RELEASE) as rel:
        yield rel


def test_operator_and_agent_run_with_the_charts_permissions(
    apiserver: APIServer, release: Release, tmp_path: Path
) -> None:
    with apiserver.api_client() as admin_client:
        core = kubernetes.client.CoreV1Api(admin_client)
        custom = kubernetes.client.CustomObjectsApi(admin_client)
        core.create_node({"metadata": {"name": NODE, "labels": {"rbac-test": "yes"}}})
        core.patch_node_status(NODE, {"status": {"addresses": [
            {"type": "InternalIP", "address": "127.0.0.1"}]}})
        pod = core.create_namespaced_pod(release.namespace, {
            "metadata": {"name": "agent-on-rbac-node"},
            "spec": {"nodeName": NODE, "serviceAccountName": release.account("agent"),
                     "containers": [{"name": "agent", "image": "kube-ipsec"}]},
        })
        operator_kc = apiserver.kubeconfig_for(
            apiserver.url, token=_token(apiserver, release, "operator"), name="rbac-operator")
        agent_kc = apiserver.kubeconfig_for(
            apiserver.url, token=_token(apiserver, release, "agent", pod), name="rbac-agent")
        env = {k: v for k, v in os.environ.items() if k != contract.NAMESPACE_ENV}
        op_log, agent_log = tmp_path / "operator.log", tmp_path / "agent.log"
        logs = [op_log, agent_log]
        operator = [
            sys.executable, "-m", "kube_ipsec.operator", "--namespace", release.namespace,
            "--metrics-port", "0", "--liveness", "", "--resync-interval", "2",
        ]
        agent = [
            sys.executable, "-m", "kube_ipsec.agent", "--node-name", NODE,
            "--namespace", release.namespace, "--kubeconfig", str(agent_kc),
            "--metrics-address", "127.0.0.1", "--metrics-port", str(_free_port()),
            "--ike-port", str(_free_port()), "--natt-port", str(_free_port()),
            "--fake-kernel", "--no-socket-bypass", "--status-interval", "2",
        ]
        try:
            with _process(operator, op_log, {**env, "KUBECONFIG": str(operator_kc)}), \
                    _process(agent, agent_log, env):
                custom.create_cluster_custom_object(G, V, contract.TUNNEL_PLURAL, {
                    "apiVersion": contract.API_VERSION, "kind": contract.TUNNEL_KIND,
                    "metadata": {"name": TUNNEL},
                    "spec": {"nodeSelector": {"matchLabels": {"rbac-test": "yes"}}},
                })

                def secret() -> Any:
                    with contextlib.suppress(kubernetes.client.ApiException):
                        return core.read_namespaced_secret(
                            contract.secret_name(TUNNEL), release.namespace)
                    return None

                _wait("the operator to create the key Secret", secret, logs)

                def loaded() -> list[int]:
                    with contextlib.suppress(kubernetes.client.ApiException):
                        node = custom.get_cluster_custom_object(
                            G, V, contract.NODE_PLURAL, NODE)
                        return contract.node_generations_loaded(node, TUNNEL)
                    return []

                _wait("the agent to report the key generation loaded", loaded, logs)

                def acknowledged() -> bool:
                    tunnel = custom.get_cluster_custom_object(
                        G, V, contract.TUNNEL_PLURAL, TUNNEL)
                    nodes = (tunnel.get("status") or {}).get("nodes") or {}
                    return bool(nodes.get("selected") == 1 and nodes.get("acknowledged") == 1)

                _wait("the operator to count the node's acknowledgement", acknowledged, logs)

                custom.delete_cluster_custom_object(G, V, contract.TUNNEL_PLURAL, TUNNEL)

                def gone() -> bool:
                    try:
                        custom.get_cluster_custom_object(G, V, contract.TUNNEL_PLURAL, TUNNEL)
                    except kubernetes.client.ApiException as exc:
                        return exc.status == 404
                    return False

                _wait("the finalizer to delete the Secret and release the tunnel", gone, logs)
                assert secret() is None
            assert _forbidden(op_log) == []
            assert _forbidden(agent_log) == []
            # The agent's real, pod-bound token names its node: the admission policy keeps it
            # to its own IPsecNode.
            agent_client = kubernetes.config.new_client_from_config(config_file=str(agent_kc))
            with agent_client, pytest.raises(kubernetes.client.ApiException) as denied:
                kubernetes.client.CustomObjectsApi(agent_client).create_cluster_custom_object(
                    G, V, contract.NODE_PLURAL,
                    {"apiVersion": contract.API_VERSION, "kind": contract.NODE_KIND,
                     "metadata": {"name": "rbac-other-node"}},
                )
            assert denied.value.status == 403
            assert f"may only write IPsecNode {NODE}" in str(denied.value.body)
        finally:
            with contextlib.suppress(kubernetes.client.ApiException):
                custom.delete_cluster_custom_object(G, V, contract.NODE_PLURAL, NODE)
            with contextlib.suppress(kubernetes.client.ApiException):
                core.delete_node(NODE)
