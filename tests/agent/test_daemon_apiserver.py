"""We test these aspects of the whole agent process (agent/daemon.py) against a real
kube-apiserver, with two daemons on loopback UDP (127.0.0.1 and 127.0.0.2) and FakeKernels:

- from an IPsecTunnel, its key Secret and two Nodes, the two daemons negotiate IKEv2 over real
  sockets, install matching SAs, and report ESTABLISHED/INSTALLED with the key generation in
  their IPsecNode objects; /readyz turns ready;
- stopping a daemon leaves its SAs in the kernel;
- ``python -m kube_ipsec.agent`` runs as a process, turns ready, and exits 0 on SIGTERM.
"""

import asyncio
import contextlib
import json
import signal
import socket
import sys

import aiohttp
import kubernetes
import pytest

from kube_ipsec import contract
from kube_ipsec.agent import daemon, mtu
from kube_ipsec.xfrm.fake import FakeKernel
from tests.agent import helpers
from tests.agent.test_watchers_apiserver import eventually

pytestmark = pytest.mark.apiserver

NODES = {"node-a": "127.0.0.1", "node-b": "127.0.0.2"}


def free_udp_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if all(_free(addr, port) for addr in NODES.values()) and port not in ports:
            ports.append(port)
    return ports


def _free(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((address, port))
        except OSError:
            return False
    return True


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cluster(apiserver, k8s_namespace):
    with apiserver.api_client() as client:
        core = kubernetes.client.CoreV1Api(client)
        custom = kubernetes.client.CustomObjectsApi(client)
        for name, address in NODES.items():
            core.create_node(helpers.node(name, address))
        custom.create_cluster_custom_object(contract.GROUP, contract.VERSION,
                                            contract.TUNNEL_PLURAL, helpers.tunnel("loop"))
        core.create_namespaced_secret(k8s_namespace, helpers.key_secret("loop", helpers.keyset()))
        yield custom, k8s_namespace
        for name in NODES:
            core.delete_node(name)
            with contextlib.suppress(kubernetes.client.ApiException):
                custom.delete_cluster_custom_object(contract.GROUP, contract.VERSION,
                                                    contract.NODE_PLURAL, name)
        custom.delete_cluster_custom_object(contract.GROUP, contract.VERSION,
                                            contract.TUNNEL_PLURAL, "loop")


def ipsec_node(custom, name):
    try:
        return custom.get_cluster_custom_object(contract.GROUP, contract.VERSION,
                                                contract.NODE_PLURAL, name)
    except kubernetes.client.ApiException:
        return {}


def peer_up(obj) -> bool:
    for tunnel in (obj.get("status") or {}).get("tunnels") or []:
        for peer in tunnel.get("peers") or []:
            if (peer.get("ikeState") == contract.IKE_ESTABLISHED
                    and peer.get("childState") == contract.CHILD_INSTALLED):
                return True
    return False


async def test_two_daemons_negotiate_over_loopback_and_report(apiserver, cluster):
    custom, namespace = cluster
    ike_port, natt_port = free_udp_ports(2)
    kernels = {name: FakeKernel() for name in NODES}
    metrics_ports = {name: free_tcp_port() for name in NODES}
    tasks = [
        asyncio.create_task(daemon.serve(daemon.Options(
            node_name=name, namespace=namespace, kubeconfig=str(apiserver.kubeconfig),
            metrics_address="127.0.0.1", metrics_port=metrics_ports[name],
            ike_port=ike_port, natt_port=natt_port, status_interval=1.0, linger=0.1),
            kernel=kernels[name]))
        for name in NODES
    ]
    try:
        await eventually(lambda: all(peer_up(ipsec_node(custom, n)) for n in NODES), 60)
        for name in NODES:
            obj = ipsec_node(custom, name)
            assert contract.node_generation_in_use(obj, "loop") == 1
            assert contract.node_generations_loaded(obj, "loop") == [1]
            assert obj["status"]["address"] == NODES[name]
            link = mtu.link_mtu(NODES[name]) or 1500  # 127.0.0.2 is on no interface
            assert obj["status"]["tunnels"][0]["mtu"] == mtu.inner_mtu(link, mode="transport")
        sas = {n: {(str(s.dst), s.spi) for s in k.sas.values() if s.aead}
               for n, k in kernels.items()}
        assert sas["node-a"] == sas["node-b"] and len(sas["node-a"]) == 2
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{metrics_ports['node-a']}/readyz") as r:
                assert r.status == 200
            async with http.get(f"http://127.0.0.1:{metrics_ports['node-a']}/metrics") as r:
                text = await r.text()
        assert 'kube_ipsec_agent_peers{state="ESTABLISHED",tunnel="loop"} 1.0' in text
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    # shutdown leaves the SAs in place
    assert all(len([s for s in k.sas.values() if s.aead]) == 2 for k in kernels.values())


async def test_the_command_runs_as_a_process_and_stops_on_sigterm(apiserver, cluster):
    _, namespace = cluster
    ike_port, natt_port = free_udp_ports(2)
    metrics_port = free_tcp_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kube_ipsec.agent", "--node-name", "node-a",
        "--namespace", namespace, "--kubeconfig", str(apiserver.kubeconfig),
        "--metrics-address", "127.0.0.1", "--metrics-port", str(metrics_port),
        "--ike-port", str(ike_port), "--natt-port", str(natt_port), "--fake-kernel",
        "--log-format", "json", stderr=asyncio.subprocess.PIPE)

    async def ready() -> bool:
        try:
            async with aiohttp.ClientSession() as http, http.get(
                    f"http://127.0.0.1:{metrics_port}/readyz") as r:
                return r.status == 200
        except aiohttp.ClientError:
            return False

    try:
        for _ in range(300):
            if await ready():
                break
            assert proc.returncode is None, "the agent exited early"
            await asyncio.sleep(0.1)
        assert await ready()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0
    lines = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    assert any("SAs and policies stay" in entry["message"] for entry in lines)
