"""A pair of engines wired by a fake network and a fake clock (h11's ConnectionPair, charon's
exchange_test_helper): no sockets, deterministic randomness, scriptable loss and NAT."""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Callable

from kube_ipsec import ike
from kube_ipsec.ike import events

Address = tuple[str, int]
PSK = bytes(range(32))


class DetRandom:
    """SHA-256 counter DRBG: the same seed gives the same nonces, SPIs and DH keys."""

    def __init__(self, seed: bytes) -> None:
        self.seed = seed
        self.counter = 0

    def __call__(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            self.counter += 1
            out += hashlib.sha256(self.seed + self.counter.to_bytes(8, "big")).digest()
        return out[:n]


@dataclasses.dataclass
class Node:
    name: str
    host: str  # our own address
    engine: ike.Engine
    peer: ike.PeerConfig
    psks: dict[str, list[tuple[int, bytes]]]
    events: list[ike.Event] = dataclasses.field(default_factory=list)
    next_spi: int = 0
    auto_spis: bool = True

    def of(self, cls: type) -> list:
        return [e for e in self.events if isinstance(e, cls)]

    def children(self) -> list[int]:
        return sorted(c.spi_in for s in self.engine.snapshot() for c in s.children)

    def ike_sas(self, state: str = "established") -> list[ike.IkeSaSnapshot]:
        return [s for s in self.engine.snapshot() if s.state == state]


def make_node(name: str, host: str, peer_host: str, peer_name: str, *, spi_base: int,
              engine_kw: dict | None = None, peer_kw: dict | None = None,
              psks: list[tuple[int, bytes]] | None = None) -> Node:
    kw = {"local_id": ike.Identity.fqdn(name), "remote_id": ike.Identity.fqdn(peer_name),
          **(peer_kw or {})}
    peer = ike.PeerConfig(remote_host=peer_host, **kw)
    store = {peer_name: psks if psks is not None else [(1, PSK)]}
    cfg = ike.EngineConfig(
        local_host=host,
        psk_provider=lambda local, remote: store.get(str(remote), []),
        peer_lookup=lambda addr: peer if addr == peer_host else None,
        retransmit_timeout=1.0, retransmit_tries=3, **(engine_kw or {}))
    node = Node(name, host, ike.Engine(cfg, DetRandom(name.encode())), peer, store,
                next_spi=spi_base)
    return node


def check_timer(engine: ike.Engine) -> None:
    """The engine's deadline heap agrees with asking every IKE SA (what it saves us)."""
    deadlines = [d for sa in engine._by_id.values() if (d := sa.deadline()) is not None]
    assert engine.get_timer() == (min(deadlines) if deadlines else None)


class Pair:
    """``a`` initiates towards ``b`` unless told otherwise. ``nat`` puts ``a`` behind a NAT."""

    def __init__(self, *, a_kw: dict | None = None, b_kw: dict | None = None,
                 a_peer: dict | None = None, b_peer: dict | None = None,
                 a_psks: list | None = None, b_psks: list | None = None,
                 nat: bool = False, v6: bool = False) -> None:
        self.now = 1000.0
        self.nat = nat
        a_host = "10.0.0.1" if nat else ("2001:db8::1" if v6 else "192.0.2.1")
        b_host = "2001:db8::2" if v6 else "192.0.2.2"
        self.public_a = "198.51.100.1" if nat else a_host
        self.a = make_node("node-a", a_host, b_host, "node-b", spi_base=0xC0000000,
                           engine_kw=a_kw, peer_kw=a_peer, psks=a_psks)
        self.b = make_node("node-b", b_host, self.public_a, "node-a", spi_base=0xC1000000,
                           engine_kw=b_kw, peer_kw=b_peer, psks=b_psks)
        self.nat_map: dict[tuple[Address], int] = {}
        self.drop: Callable[[str, bytes, Address, Address], bool] = lambda *_: False
        self.duplicate: Callable[[str, bytes], bool] = lambda *_: False
        self.reorder: random.Random | None = None  # shuffles each batch in flight
        self.sent: list[tuple[str, bytes, Address, Address]] = []
        self.delivered = 0
        for node in self.nodes():  # the agent keeps a pool filled from ALLOCSPI
            node.engine.provide_spis(range(node.next_spi + 1, node.next_spi + 9), self.now)
            node.next_spi += 8

    def nodes(self) -> tuple[Node, Node]:
        return self.a, self.b

    def _events(self, node: Node) -> None:
        while (e := node.engine.next_event()) is not None:
            node.events.append(e)
            if isinstance(e, events.SpisNeeded) and node.auto_spis:
                spis = range(node.next_spi + 1, node.next_spi + 1 + e.count)
                node.next_spi += e.count
                node.engine.provide_spis(spis, self.now)

    def _route(self, sender: Node, src: Address, dst: Address) -> tuple[Node, Address, Address]:
        if not self.nat:
            return (self.b if sender is self.a else self.a), src, dst
        if sender is self.a:  # outbound through the NAT: rewrite the source
            port = self.nat_map.setdefault((src,), 40000 + len(self.nat_map))
            return self.b, (self.public_a, port), dst
        for (inside,), port in self.nat_map.items():
            if dst == (self.public_a, port):
                return self.a, src, inside
        raise AssertionError(f"no NAT mapping for {dst}")

    def pump(self, rounds: int = 50) -> None:
        """Deliver datagrams until both sides are quiet."""
        for _ in range(rounds):
            for node in self.nodes():
                self._events(node)
                check_timer(node.engine)
            batch = []
            for node in self.nodes():
                for data, src, dst in node.engine.datagrams_to_send():
                    self.sent.append((node.name, data, src, dst))
                    if self.drop(node.name, data, src, dst):
                        continue
                    copies = 2 if self.duplicate(node.name, data) else 1
                    batch += [(node, data, src, dst)] * copies
            if not batch:
                return
            if self.reorder is not None:
                self.reorder.shuffle(batch)
            for node, data, src, dst in batch:
                target, src2, dst2 = self._route(node, src, dst)
                self.delivered += 1
                target.engine.receive_datagram(data, src2, dst2, self.now)
        raise AssertionError("the engines did not settle")

    def advance(self, seconds: float) -> None:
        """Run the clock forward, firing timers in order."""
        until = self.now + seconds
        while True:
            timers = [t for n in self.nodes() if (t := n.engine.get_timer()) is not None]
            if not timers or min(timers) > until:
                break
            self.now = max(self.now, min(timers))
            for node in self.nodes():
                node.engine.handle_timer(self.now)
                timer = node.engine.get_timer()  # never a deadline already due: no busy loop
                assert timer is None or timer > self.now, (node.name, timer, self.now)
            self.pump()
        self.now = until
        self.pump()

    def connect(self) -> int:
        ike_sa = self.a.engine.initiate(self.a.peer, self.now)
        self.pump()
        return ike_sa
