"""We test these aspects of the watchers and the status writer against a real kube-apiserver:

- tunnel + key Secret + Nodes become the desired peers, with the Secret's generations;
- with the API server stopped the agent keeps its last known state; after the restart it
  resyncs, seeing changes made while the watch was down (a node deleted, a generation added);
- a broken key Secret keeps the last good keys and is reported;
- the status writer creates this node's IPsecNode and patches its status.
"""

import asyncio
import contextlib

import kubernetes
import pytest

from kube_ipsec import contract
from kube_ipsec.agent import desired, kube, status, watchers
from tests.agent import helpers

pytestmark = pytest.mark.apiserver


async def eventually(predicate, timeout=60.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.1)


def desired_peers(w, node_name="node-a"):
    snap = w.snapshot()
    return desired.compute(node_name, snap.nodes, snap.tunnels, snap.keys)


@contextlib.asynccontextmanager
async def running_watchers(apiserver, namespace):
    api = kube.Api(kube.load_configuration(str(apiserver.kubeconfig)))
    w = watchers.Watchers(api, namespace, lambda: None, watch_timeout=30)
    task = asyncio.create_task(w.run())
    try:
        await eventually(lambda: w.synced)
        yield w, api
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await api.close()


@pytest.fixture
def cluster(apiserver, k8s_namespace):
    with apiserver.api_client() as client:
        core = kubernetes.client.CoreV1Api(client)
        custom = kubernetes.client.CustomObjectsApi(client)
        names = ("node-a", "node-b", "node-c")
        for i, name in enumerate(names, 1):
            core.create_node(helpers.node(name, f"10.0.0.{i}"))
        custom.create_cluster_custom_object(contract.GROUP, contract.VERSION,
                                            contract.TUNNEL_PLURAL, helpers.tunnel("mesh"))
        core.create_namespaced_secret(k8s_namespace, helpers.key_secret("mesh", helpers.keyset()))
        yield core, custom, k8s_namespace
        for name in names:
            with contextlib.suppress(kubernetes.client.ApiException):
                core.delete_node(name)
        custom.delete_cluster_custom_object(contract.GROUP, contract.VERSION,
                                            contract.TUNNEL_PLURAL, "mesh")
        with contextlib.suppress(kubernetes.client.ApiException):
            custom.delete_cluster_custom_object(contract.GROUP, contract.VERSION,
                                                contract.NODE_PLURAL, "node-a")


async def test_watchers_keep_state_through_an_outage_and_resync(apiserver, cluster):
    core, _, namespace = cluster
    async with running_watchers(apiserver, namespace) as (w, _):
        await eventually(lambda: set(desired_peers(w).peers) == {("mesh", "node-b"),
                                                                ("mesh", "node-c")})
        assert desired_peers(w).tunnels == {"mesh": (1,)}

        await asyncio.to_thread(apiserver.stop)
        await eventually(lambda: w.api_error is not None)
        assert set(desired_peers(w).peers) == {("mesh", "node-b"), ("mesh", "node-c")}
        await asyncio.to_thread(apiserver.start)

        # changes the watch could not see: made right after the restart, before it relisted
        core.delete_node("node-c")
        core.replace_namespaced_secret(contract.secret_name("mesh"), namespace,
                                       helpers.key_secret("mesh", helpers.keyset(1, (1, 2))))
        await eventually(lambda: set(desired_peers(w).peers) == {("mesh", "node-b")})
        await eventually(lambda: desired_peers(w).tunnels == {"mesh": (1, 2)})
        await eventually(lambda: w.api_error is None)


async def test_broken_secret_keeps_the_last_good_keys(apiserver, cluster):
    core, _, namespace = cluster
    async with running_watchers(apiserver, namespace) as (w, _):
        await eventually(lambda: "mesh" in w.snapshot().keys)
        good = w.snapshot().keys["mesh"]
        broken = helpers.key_secret("mesh", helpers.keyset())
        broken["data"][contract.SECRET_MANIFEST] = "bm90IGpzb24="  # "not json"
        core.replace_namespaced_secret(contract.secret_name("mesh"), namespace, broken)
        await eventually(lambda: "mesh" in w.snapshot().errors)
        assert w.snapshot().keys["mesh"] == good
        assert "keeping generations [1]" in w.snapshot().errors["mesh"]


async def test_status_writer_creates_and_patches_the_ipsecnode(apiserver, cluster):
    _, custom, namespace = cluster
    async with running_watchers(apiserver, namespace) as (w, api):
        await eventually(lambda: "mesh" in w.snapshot().keys)
        want = desired_peers(w)
        peers = {k: status.PeerState(k[0], k[1], p.remote_address)
                 for k, p in want.peers.items()}
        body = status.render(want=want, currents={"mesh": 1}, peers=peers, errors=[],
                             heartbeat=contract.utcnow_rfc3339(), version="test")
        writer = status.StatusWriter(api, "node-a")
        await writer.write(body)
        await writer.write(body)
    obj = custom.get_cluster_custom_object(contract.GROUP, contract.VERSION,
                                           contract.NODE_PLURAL, "node-a")
    assert obj["spec"]["nodeName"] == "node-a"
    assert contract.node_generations_loaded(obj, "mesh") == [1]
    assert contract.node_generation_in_use(obj, "mesh") == 1
    assert obj["status"]["peersSummary"] == "0/2"
