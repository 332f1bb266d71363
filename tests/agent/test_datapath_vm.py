"""We test these aspects in the VM (real kernel with ESP), two namespaces on a veth wire, two
agents' peer managers talking IKEv2 over the in-process link and programming the real kernels
through NetlinkKernel:

- the kernel accepts every policy and SA the agent derives (transport and tunnel mode, ESN,
  replay window 1024) and ping crosses the wire as ESP with exactly the negotiated SPIs;
- before the pair is up, the policies fail closed: ping does not get through in plaintext;
- re-authentication under a new key generation moves traffic to new SPIs with no lost ping;
- tunnel mode encrypts pod-CIDR traffic (node IPs outside) and leaves node traffic alone;
- an agent restart (adopting the kernel state) under ping loses nothing;
- AH and ChaCha20-Poly1305 (without ESN) SAs are accepted and used on the wire;
- IPv6-only nodes get IPv6 transport SAs that carry ping;
- with real IKE sockets in each namespace, IKE crosses the wire through the per-socket bypass
  although the pair's policies cover (and block) all other traffic between the nodes; with
  NAT-T forced, IKE floats to 4500 and ESP travels in UDP through the UDP_ENCAP socket.
"""

import asyncio
import contextlib
import dataclasses

import pytest
from pyroute2 import netns as pr_netns

from kube_ipsec.agent import desired, ikesocket, peers, status, translate
from kube_ipsec.xfrm import NetlinkKernel
from tests.agent import helpers
from tests.agent.pair import Agent, eventually
from tests.agent.test_peers import up
from tests.netns import capture, veth_pair

pytestmark = pytest.mark.vm


@contextlib.asynccontextmanager
async def agents(pair, tunnel, ipv6=False):
    link: dict = {}
    left, right = (pair.left_ip6, pair.right_ip6) if ipv6 else (pair.left_ip, pair.right_ip)
    nodes = [helpers.node("node-a", left, "10.244.0.0/24"),
             helpers.node("node-b", right, "10.244.1.0/24")]
    a = Agent("node-a", link, NetlinkKernel(pair.left), address=left, linger=0.5)
    b = Agent("node-b", link, NetlinkKernel(pair.right), address=right, linger=0.5)
    await a.start()
    await b.start()
    try:
        yield a, b, lambda keys: [agent.apply([tunnel], keys, nodes) for agent in (a, b)]
    finally:
        await a.stop()
        await b.stop()


async def ping(pair, ns, dst, count=3) -> bool:
    return await asyncio.to_thread(pair.ping, ns, dst, count)


async def test_transport_pair_encrypts_and_fails_closed_before(tmp_path):
    with veth_pair() as pair:
        tunnel = helpers.tunnel("mesh", cipher="aes-gcm-128")
        async with agents(pair, tunnel) as (a, b, apply):
            a.link.pop(b.address)  # no IKE yet: policies only
            apply({"mesh": helpers.keyset()})
            await eventually(lambda: ("mesh", "node-b") in a.manager.peers
                             and ("mesh", "node-a") in b.manager.peers)
            await asyncio.sleep(0.5)
            assert not await ping(pair, pair.left, pair.right_ip, 2), "fail closed"
            a.link[b.address] = b  # the next IKE retransmission gets through
            await eventually(lambda: up(a, "node-b") and up(b, "node-a"), 60)
            with capture(pair.right, pair.right_if, tmp_path / "t.pcap", direction="in") as cap:
                assert await ping(pair, pair.left, pair.right_ip)
            spis = set(cap.esp_spis())
            assert spis and spis <= set(b.state("node-a").spis_in)


async def test_reauthentication_under_ping_loses_nothing(tmp_path):
    with veth_pair() as pair:
        tunnel = helpers.tunnel("mesh")
        async with agents(pair, tunnel) as (a, b, apply):
            apply({"mesh": helpers.keyset(1, (1,))})
            await eventually(lambda: up(a, "node-b") and up(b, "node-a"), 60)
            old = set(b.state("node-a").spis_in)
            pinger = asyncio.create_task(ping(pair, pair.left, pair.right_ip, 25))
            await asyncio.sleep(1)
            apply({"mesh": helpers.keyset(2, (1, 2))})
            await eventually(lambda: status.generation_in_use(2, [a.state("node-b")]) == 2
                             and a.state("node-b").key_generation == 2, 60)
            assert await pinger, "a ping was lost during re-authentication"
            assert set(b.state("node-a").spis_in) - old


async def test_tunnel_mode_encrypts_pod_cidr_traffic(tmp_path):
    with veth_pair() as pair:
        for ns, mine, peer_net, via in ((pair.left, "10.244.0.1", "10.244.1.0/24", pair.right_ip),
                                        (pair.right, "10.244.1.1", "10.244.0.0/24", pair.left_ip)):
            pair.run(ns, "ip", "addr", "add", f"{mine}/32", "dev", "lo")
            pair.run(ns, "ip", "route", "add", peer_net, "via", via, "src", mine)
        tunnel = helpers.tunnel("pods", mode="tunnel")
        async with agents(pair, tunnel) as (a, b, apply):
            apply({"pods": helpers.keyset()})
            await eventually(lambda: up(a, "node-b", "pods") and up(b, "node-a", "pods"), 60)
            with capture(pair.right, pair.right_if, tmp_path / "p.pcap", direction="in") as cap:
                assert await ping(pair, pair.left, "10.244.1.1")
            spis = set(cap.esp_spis())
            assert spis and spis <= set(b.state("node-a", "pods").spis_in)
            # node-to-node traffic is not part of a pod-CIDR tunnel: it stays plaintext
            with capture(pair.right, pair.right_if, tmp_path / "n.pcap", direction="in") as cap:
                assert await ping(pair, pair.left, pair.right_ip)
            assert not cap.esp()


async def test_agent_restart_under_ping_loses_nothing():
    with veth_pair() as pair:
        tunnel = helpers.tunnel("mesh")
        async with agents(pair, tunnel) as (a, b, apply):
            keys = {"mesh": helpers.keyset()}
            apply(keys)
            await eventually(lambda: up(a, "node-b") and up(b, "node-a"), 60)
            old = set(b.state("node-a").spis_in)
            pinger = asyncio.create_task(ping(pair, pair.left, pair.right_ip, 25))
            await asyncio.sleep(1)
            await b.stop()  # SAs and policies stay in the kernel
            await asyncio.sleep(1)
            b2 = Agent("node-b", a.link, NetlinkKernel(pair.right), address=pair.right_ip,
                       linger=0.5)
            await b2.start()
            b2.apply([tunnel], keys, [helpers.node("node-a", pair.left_ip),
                                      helpers.node("node-b", pair.right_ip)])
            await eventually(lambda: up(b2, "node-a")
                             and set(b2.state("node-a").spis_in).isdisjoint(old), 60)
            assert await pinger, "a ping was lost across the agent restart"
            await b2.stop()


@pytest.mark.parametrize(("spec", "wire"), [
    ({"protocol": "ah"}, "AH("),
    ({"cipher": "chacha20-poly1305", "esn": False}, "ESP("),
])
async def test_other_protocols_reach_the_wire(tmp_path, spec, wire):
    with veth_pair() as pair:
        async with agents(pair, helpers.tunnel("mesh", **spec)) as (a, b, apply):
            apply({"mesh": helpers.keyset()})
            await eventually(lambda: up(a, "node-b") and up(b, "node-a"), 60)
            with capture(pair.right, pair.right_if, tmp_path / "w.pcap", direction="in") as cap:
                assert await ping(pair, pair.left, pair.right_ip)
            text = cap.text()
            assert wire in text
            assert any(f"spi=0x{spi:08x}" in text for spi in b.state("node-a").spis_in), text


@pytest.mark.parametrize("natt", [False, True])
async def test_ike_crosses_the_wire_through_the_socket_bypass(tmp_path, monkeypatch, natt):
    """Real IKE sockets in each namespace: the node-to-node policies cover all traffic between
    the two addresses (UDP 500 included) and fail closed, so IKE gets through only because of
    the per-socket bypass. With NAT-T forced (as behind a NAT), IKE floats to 4500 and ESP is
    UDP-encapsulated: the UDP_ENCAP socket hands the ESP to the kernel."""
    if natt:
        config = translate.peer_config
        monkeypatch.setattr(translate, "peer_config", lambda peer: dataclasses.replace(
            config(peer), force_encap=True))
    with veth_pair() as pair:
        nodes = [helpers.node("node-a", pair.left_ip), helpers.node("node-b", pair.right_ip)]
        keys = {"mesh": helpers.keyset()}
        managers, endpoints = {}, []
        for name, ns, address in (("node-a", pair.left, pair.left_ip),
                                  ("node-b", pair.right, pair.right_ip)):
            endpoint = ikesocket.IkeEndpoint(
                address, lambda d, s, t, name=name: managers[name].datagram_received(d, s, t))
            managers[name] = peers.PeerManager(NetlinkKernel(ns), endpoint.send,
                                               local_address=address, linger=0.5)
            pr_netns.pushns(ns)
            try:
                await endpoint.open()  # the sockets live in the namespace they were made in
            finally:
                pr_netns.popns()
            endpoints.append(endpoint)
        tasks = [asyncio.create_task(m.run()) for m in managers.values()]
        try:
            for name, manager in managers.items():
                manager.set_desired(desired.compute(
                    name, {n.name: n for n in map(desired.NodeInfo.from_object, nodes)},
                    [desired.TunnelInfo.from_object(helpers.tunnel("mesh"))], keys),
                    {"mesh": 1})
            def states():
                return [m.peers[k].state for m in managers.values() for k in m.peers]

            with capture(pair.right, pair.right_if, tmp_path / "ike.pcap", bpf="udp port 500",
                         direction="in") as cap:
                await eventually(lambda: len(states()) == 2 and all(
                    s.child_state == "INSTALLED" and s.ike_state == "ESTABLISHED"
                    for s in states()), 60)
            assert "isakmp" in cap.text().lower() or ".500 >" in cap.text()
            with capture(pair.right, pair.right_if, tmp_path / "esp.pcap",
                         direction="in") as cap:
                assert await ping(pair, pair.left, pair.right_ip)
            esp = cap.esp()
            assert esp and all(p.udp_encap is natt for p in esp)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for endpoint in endpoints:
                endpoint.close()


async def test_ipv6_only_nodes_encrypt(tmp_path):
    with veth_pair(ipv6=True) as pair:
        async with agents(pair, helpers.tunnel("mesh"), ipv6=True) as (a, b, apply):
            apply({"mesh": helpers.keyset()})
            await eventually(lambda: up(a, "node-b") and up(b, "node-a"), 60)
            with capture(pair.right, pair.right_if, tmp_path / "v6.pcap", bpf="ip6",
                         direction="in") as cap:
                assert await ping(pair, pair.left, pair.right_ip6)
            spis = set(cap.esp_spis())
            assert spis and spis <= set(b.state("node-a").spis_in)
