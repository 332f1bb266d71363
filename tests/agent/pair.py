"""Two agents' peer managers over a fake link, each with its own FakeKernel (no sockets).

``AgentPair`` routes every datagram one manager sends to the manager owning the destination
address, the way h11's ConnectionPair and aioquic's client_and_server() test their cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
from typing import Any

from kube_ipsec.agent import desired, peers
from kube_ipsec.xfrm.fake import FakeKernel
from kube_ipsec.xfrm.kernel import Kernel
from tests.agent import helpers

ADDRESSES = {"node-a": "10.0.0.1", "node-b": "10.0.0.2", "node-c": "10.0.0.3"}


def seeded_random(seed: int):
    counter = itertools.count()

    def random(n: int) -> bytes:
        out = b""
        while len(out) < n:
            out += hashlib.sha256(f"{seed}:{next(counter)}".encode()).digest()
        return out[:n]

    return random


class Journal(list):
    """A kernel's op log that also appends, tagged, to one log shared by all kernels."""

    def __init__(self, tag: str, shared: list) -> None:
        super().__init__()
        self.tag, self.shared = tag, shared

    def append(self, item: Any) -> None:
        super().append(item)
        self.shared.append((self.tag, *item))


def pins_precede_peer_inbound(shared: list, addresses: dict[str, str]) -> list[str]:
    """A switch of the out policy from SPI y to x towards P must follow P's install of
    inbound SA x (the first pin has nothing to switch from: before it, nothing passes).

    Returns the violations (empty when make-before-break held across the pair)."""
    installed: set[tuple[str, int]] = set()
    pinned: dict[tuple[str, str], int] = {}
    problems = []
    for tag, op, obj in shared:
        if op in ("add_sa", "update_sa") and str(obj.dst) == addresses[tag]:
            installed.add((str(obj.dst), obj.spi))
        if op == "update_policy" and obj.templates and obj.dir.name == "OUT":
            spi, dst = obj.templates[0].spi, str(obj.templates[0].dst)
            before = pinned.get((tag, dst), 0)
            if spi and before and spi != before and (dst, spi) not in installed:
                problems.append(f"{tag} switched to 0x{spi:08x} before {dst} could decrypt it")
            pinned[(tag, dst)] = spi
    return problems


class Agent:
    def __init__(self, name: str, link: dict[str, Agent], kernel: Kernel | None = None,
                 linger: float = 0.05, address: str | None = None) -> None:
        self.name, self.address = name, address or ADDRESSES[name]
        self.kernel: Any = kernel or FakeKernel()
        self.link = link
        self.sent: list[tuple[bytes, tuple[str, int], tuple[str, int]]] = []
        self.blocked = False
        self.drop: Any = None  # drop(n) -> True loses the n-th datagram this agent sends
        self.manager = peers.PeerManager(
            self.kernel, self._send, local_address=self.address, linger=linger,
            bypass_ports=(6443,), random=seeded_random(hash(name) & 0xFFFF))
        self.tasks: list[asyncio.Task[None]] = []
        link[self.address] = self

    def _send(self, data, src, dst):
        self.sent.append((data, src, dst))
        if self.drop is not None and self.drop(len(self.sent)):
            return
        other = self.link.get(dst[0])
        if other is not None and not self.blocked and not other.blocked:
            other.manager.datagram_received(data, src, dst)

    async def start(self, adopt: bool = True) -> None:
        if adopt:
            await self.manager.adopt()
        self.tasks = [asyncio.create_task(self.manager.run()),
                      asyncio.create_task(self.manager.watch_kernel())]
        await asyncio.sleep(0)  # subscribed to kernel events before the test emits any

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.link.pop(self.address, None)

    def apply(self, tunnels, keys, node_objs=None) -> desired.Desired:
        node_objs = node_objs or [helpers.node(n, a) for n, a in ADDRESSES.items()]
        nodes = {n.name: n for n in (desired.NodeInfo.from_object(o) for o in node_objs)}
        infos = [desired.TunnelInfo.from_object(t) for t in tunnels]
        want = desired.compute(self.name, nodes, infos, keys)
        self.manager.set_desired(want, {t: k.current for t, k in keys.items()})
        return want

    def state(self, peer: str, tunnel: str = "mesh"):
        p = self.manager.peers.get((tunnel, peer))
        return p.state if p else None


async def eventually(predicate, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)
