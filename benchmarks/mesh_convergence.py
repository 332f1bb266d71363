"""One agent against N simulated peers: time until every SA is up, and the agent's peak RSS.

Run on the host (no ESP needed: every side records its kernel operations in a FakeKernel):

    .venv/bin/python benchmarks/mesh_convergence.py [--sizes 100,500,1000]

Per N, two processes: the *agent* (the real PeerManager and IkeEndpoint of
kube_ipsec.agent, desired state from ``desired.compute`` over N+1 nodes, one tunnel, one key
generation) on 127.0.0.2, and the *peers* (N PeerManagers, each with its own IKE engine,
sockets and FakeKernel) on 127.1.x.y. The agent's name sorts first, so it initiates every
IKE SA (the worst case for one node). Measured in the agent process: seconds from handing it
the desired state until its kernel holds both SAs of every pair, its CPU seconds, and its peak
RSS (VmHWM) against the RSS before the peers were added. The ratios compare each N with the
smallest N of the same run: linear scaling keeps seconds/peer and KiB/peer flat. Both
processes share the machine's cores, so the times include the simulated peers' own work.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

from kube_ipsec import contract
from kube_ipsec.agent import desired, ikesocket, peers
from kube_ipsec.xfrm.fake import FakeKernel

AGENT, AGENT_ADDRESS = "a-agent", "127.0.0.2"
TUNNEL = "mesh"
KEY = bytes(range(32))  # a benchmark, not a secret


def peer_address(i: int) -> str:
    return f"127.1.{i // 250}.{i % 250 + 1}"


def cluster(n: int) -> tuple[dict[str, desired.NodeInfo], list[desired.TunnelInfo],
                             dict[str, contract.KeySet]]:
    nodes = {AGENT: desired.NodeInfo(AGENT, {}, (AGENT_ADDRESS,))}
    for i in range(n):
        name = f"node-{i:04d}"
        nodes[name] = desired.NodeInfo(name, {}, (peer_address(i),))
    tunnel = desired.TunnelInfo(TUNNEL, contract.TunnelSpec.parse({"mode": "transport"}))
    created = contract.utcnow_rfc3339(datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC))
    keys = {TUNNEL: contract.KeySet(1, (contract.KeyGeneration(1, created, KEY),))}
    return nodes, [tunnel], keys


class Node:
    """One PeerManager with its sockets and FakeKernel, as the agent's daemon wires them."""

    def __init__(self, address: str, ports: tuple[int, int]) -> None:
        self.kernel = FakeKernel()
        self.endpoint = ikesocket.IkeEndpoint(
            address, lambda d, s, t: self.manager.datagram_received(d, s, t),
            ike_port=ports[0], natt_port=ports[1], socket_bypass=False)
        self.manager = peers.PeerManager(self.kernel, self.endpoint.send, local_address=address,
                                         ike_port=ports[0], natt_port=ports[1],
                                         bypass_ports=(6443,))
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.manager.adopt()
        await self.endpoint.open()
        self.tasks = [asyncio.create_task(self.manager.run()),
                      asyncio.create_task(self.manager.watch_kernel())]

    def installed(self) -> int:
        return sum(1 for sa in self.kernel.sas.values() if sa.aead)


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


async def run_peers(n: int, ports: tuple[int, int]) -> None:
    nodes, tunnels, keys = cluster(n)
    sims = []
    for i in range(n):
        name = f"node-{i:04d}"
        sim = Node(peer_address(i), ports)
        await sim.start()
        mine = {AGENT: nodes[AGENT], name: nodes[name]}
        sim.manager.set_desired(desired.compute(name, mine, tunnels, keys), {TUNNEL: 1})
        sims.append(sim)
    print("ready", flush=True)
    await asyncio.Event().wait()


async def run_agent(n: int, ports: tuple[int, int], timeout: float) -> dict[str, float]:
    nodes, tunnels, keys = cluster(n)
    agent = Node(AGENT_ADDRESS, ports)
    await agent.start()
    want = desired.compute(AGENT, nodes, tunnels, keys)
    assert len(want.peers) == n
    await asyncio.sleep(0.5)
    base_rss = rss_kib("VmRSS")
    cpu0, t0 = time.process_time(), time.monotonic()
    agent.manager.set_desired(want, {TUNNEL: 1})
    shown = t0
    while agent.installed() < 2 * n:
        now = time.monotonic()
        if now - t0 > timeout:
            break
        if now - shown > 10:
            print(f"  N={n}: {agent.installed()}/{2 * n} SAs after {now - t0:.0f} s",
                  file=sys.stderr, flush=True)
            shown = now
        await asyncio.sleep(0.05)
    seconds = time.monotonic() - t0
    return {"n": n, "seconds": seconds, "cpu": time.process_time() - cpu0,
            "sas": agent.installed(), "base_kib": base_rss, "peak_kib": rss_kib("VmHWM")}


def free_udp_ports(addresses: list[str]) -> tuple[int, int]:
    found: list[int] = []
    while len(found) < 2:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((AGENT_ADDRESS, 0))
            port = s.getsockname()[1]
        if port not in found and all(_free(a, port) for a in addresses):
            found.append(port)
    return found[0], found[1]


def _free(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((address, port))
        except OSError:
            return False
    return True


def udp_rcvbuf_errors() -> int:
    """This network namespace's UDP receive-buffer drops (IKE datagrams the sockets lost)."""
    rows = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines()
            if line.startswith("Udp:")]
    return int(dict(zip(rows[0], rows[1], strict=True))["RcvbufErrors"])


def measure(n: int, timeout: float) -> dict[str, float]:
    ports = free_udp_ports([peer_address(i) for i in range(0, n, max(1, n // 20))])
    me = [sys.executable, __file__]
    sims = subprocess.Popen([*me, "peers", str(n), str(ports[0]), str(ports[1])],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert sims.stdout is not None
        if sims.stdout.readline().strip() != "ready":
            raise RuntimeError("simulated peers did not start")
        drops = udp_rcvbuf_errors()
        out = subprocess.run([*me, "agent", str(n), str(ports[0]), str(ports[1]), str(timeout)],
                             stdout=subprocess.PIPE, text=True, check=True).stdout
        return {**json.loads(out), "drops": udp_rcvbuf_errors() - drops}
    finally:
        sims.kill()
        sims.wait()


def main() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
    if len(sys.argv) > 1 and sys.argv[1] in ("peers", "agent"):
        role, n, ports = sys.argv[1], int(sys.argv[2]), (int(sys.argv[3]), int(sys.argv[4]))
        os.environ.setdefault("PYTHONHASHSEED", "0")
        if role == "peers":
            asyncio.run(run_peers(n, ports))
        else:
            print(json.dumps(asyncio.run(run_agent(n, ports, float(sys.argv[5])))))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="100,500,1000")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per size")
    args = p.parse_args()
    results = [measure(int(n), args.timeout) for n in args.sizes.split(",")]
    ref = results[0]
    print(f"{'peers':>6} {'SAs up':>9} {'seconds':>8} {'ms/peer':>8} {'x ref':>6} "
          f"{'agent CPU s':>11} {'peak RSS MiB':>12} {'KiB/peer':>9} {'x ref':>6} "
          f"{'UDP drops':>9}")
    for r in results:
        per_peer = r["seconds"] * 1000 / r["n"]
        kib_per_peer = (r["peak_kib"] - r["base_kib"]) / r["n"]
        ref_kib = (ref["peak_kib"] - ref["base_kib"]) / ref["n"]
        print(f"{r['n']:>6} {int(r['sas']):>4}/{2 * int(r['n']):<4} {r['seconds']:>8.1f} "
              f"{per_peer:>8.1f} {per_peer / (ref['seconds'] * 1000 / ref['n']):>6.2f} "
              f"{r['cpu']:>11.1f} {r['peak_kib'] / 1024:>12.1f} {kib_per_peer:>9.1f} "
              f"{kib_per_peer / ref_kib if ref_kib else 0:>6.2f} {int(r['drops']):>9}")
    print("x ref: per-peer cost against the smallest size of this run (1.00 = linear scaling);"
          " times include the simulated peers' work on the same cores; UDP drops: datagrams"
          " lost to full socket receive buffers during the run (IKE then waits to retransmit)")


if __name__ == "__main__":
    main()
