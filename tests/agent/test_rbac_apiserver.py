"""We test this aspect against a real kube-apiserver: the agent works with exactly the
permissions the Helm chart grants its ServiceAccount (RBAC rendered from the chart, a
TokenRequest token): it lists and watches tunnels, Nodes and the key Secrets of its namespace,
and creates and patches its own IPsecNode — nothing more is needed.
"""

import asyncio
import contextlib
import subprocess

import kubernetes
import pytest
import yaml

from kube_ipsec import contract
from kube_ipsec.agent import desired, kube, status, watchers
from tests.agent import helpers
from tests.agent.test_watchers_apiserver import eventually
from tests.helm import chart

pytestmark = pytest.mark.apiserver

RELEASE = "agentrbac"
RBAC_KINDS = {"ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}


@pytest.fixture
def agent_kubeconfig(apiserver, k8s_namespace):
    out = chart.helm("template", RELEASE, str(chart.CHART), "--namespace", k8s_namespace).stdout
    docs = [d for d in yaml.safe_load_all(out) if d and d["kind"] in RBAC_KINDS
            and d["metadata"]["name"] == f"{RELEASE}-kube-ipsec-agent"]
    assert {d["kind"] for d in docs} == RBAC_KINDS
    kubectl = [str(apiserver.kubectl), "--kubeconfig", str(apiserver.kubeconfig)]
    manifest = yaml.safe_dump_all(docs)
    subprocess.run([*kubectl, "apply", "-f", "-"], input=manifest, text=True, check=True,
                   capture_output=True, timeout=60)
    with apiserver.api_client() as client:
        token = kubernetes.client.CoreV1Api(client).create_namespaced_service_account_token(
            f"{RELEASE}-kube-ipsec-agent", k8s_namespace,
            {"spec": {"expirationSeconds": 3600}}).status.token
    yield apiserver.kubeconfig_for(apiserver.url, token=token, name="rbac-agent")
    subprocess.run([*kubectl, "delete", "--ignore-not-found", "-f", "-"], input=manifest,
                   text=True, capture_output=True, timeout=60)


@pytest.fixture
def cluster(apiserver, k8s_namespace):
    with apiserver.api_client() as client:
        core = kubernetes.client.CoreV1Api(client)
        custom = kubernetes.client.CustomObjectsApi(client)
        core.create_node(helpers.node("rbac-a", "10.9.0.1"))
        core.create_node(helpers.node("rbac-b", "10.9.0.2"))
        custom.create_cluster_custom_object(contract.GROUP, contract.VERSION,
                                            contract.TUNNEL_PLURAL, helpers.tunnel("rbac"))
        core.create_namespaced_secret(k8s_namespace, helpers.key_secret("rbac", helpers.keyset()))
        yield custom
        for name in ("rbac-a", "rbac-b"):
            core.delete_node(name)
        for plural, name in ((contract.TUNNEL_PLURAL, "rbac"), (contract.NODE_PLURAL, "rbac-a")):
            with contextlib.suppress(kubernetes.client.ApiException):
                custom.delete_cluster_custom_object(contract.GROUP, contract.VERSION, plural,
                                                    name)


async def test_agent_runs_with_the_charts_permissions(agent_kubeconfig, cluster, k8s_namespace):
    api = kube.Api(kube.load_configuration(str(agent_kubeconfig)))
    w = watchers.Watchers(api, k8s_namespace, lambda: None, watch_timeout=30)
    task = asyncio.create_task(w.run())
    try:
        await eventually(lambda: w.synced and "rbac" in w.snapshot().keys)
        assert w.api_error is None
        snap = w.snapshot()
        want = desired.compute("rbac-a", snap.nodes, snap.tunnels, snap.keys)
        assert set(want.peers) == {("rbac", "rbac-b")}
        peers = {k: status.PeerState(k[0], k[1], p.remote_address) for k, p in want.peers.items()}
        writer = status.StatusWriter(api, "rbac-a")
        await writer.write(status.render(want=want, currents={"rbac": 1}, peers=peers, errors=[],
                                         heartbeat=contract.utcnow_rfc3339(), version="t"))
        await writer.write(status.render(want=want, currents={"rbac": 1}, peers=peers, errors=[],
                                         heartbeat=contract.utcnow_rfc3339(), version="t"))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await api.close()
    obj = cluster.get_cluster_custom_object(contract.GROUP, contract.VERSION,
                                            contract.NODE_PLURAL, "rbac-a")
    assert contract.node_generations_loaded(obj, "rbac") == [1]
