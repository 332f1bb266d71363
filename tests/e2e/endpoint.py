"""Our side of an interop test: one IKE engine on a UDP socket, its events applied to a kernel.

The thinnest shell that makes ``kube_ipsec.ike`` a real IKEv2 peer (socket + core + xfrm), so the
interop tests exercise the core and the XFRM layer against strongSwan without the agent's
Kubernetes machinery. It follows the agent's rules (DESIGN.md §3, research/ikev2.md §5): one
task owns the engine; after each input its events are applied to the kernel, in order, before
the datagrams of the same input are sent; policies go in before any SA (fail closed); the out
policy's template is pinned to the outbound SPI and moved with one UPDPOLICY
(make-before-break); an old inbound SA lingers ``linger`` seconds after a rekey.

    ep = Endpoint(kernel, ns="kt-l1", local="192.0.2.1", remote="192.0.2.2", psk=PSK)
    await ep.start()
    ike_sa = await ep.call(ep.engine.initiate, ep.peer)
    await ep.wait_for(ike.ChildSaEstablished)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import os
import socket
from collections.abc import Callable
from typing import Any, TypeVar

from pyroute2 import netns as pr_netns

from kube_ipsec import ike
from kube_ipsec.xfrm import (
    SA,
    Algorithm,
    Dir,
    Kernel,
    Mode,
    NoSuchPolicy,
    NoSuchSa,
    Policy,
    Proto,
    Selector,
    Template,
    bypass_socket,
    install_inbound,
    pin_outbound,
)
from kube_ipsec.xfrm.constants import OWNED_PRIORITY_MIN, OWNED_REQID_MIN
from kube_ipsec.xfrm.model import AlgKind

REQID = OWNED_REQID_MIN + 0x4242
E = TypeVar("E", bound=ike.Event)


def kernel_sa(child: ike.ChildSa, params: ike.SaParams) -> SA:
    """One direction of a negotiated transport-mode Child SA in the kernel's terms."""
    alg = Algorithm(AlgKind.AEAD if params.aead else AlgKind.AUTH, params.algorithm,
                    params.key, params.icv_bits)
    return SA(ipaddress.ip_address(params.src), ipaddress.ip_address(params.dst), params.spi,
              REQID, Proto.AH if child.protocol == "ah" else Proto.ESP, Mode.TRANSPORT,
              aead=alg if params.aead else None, auth=None if params.aead else alg,
              replay_window=child.replay_window, esn=child.esn,
              selector=Selector.hosts(params.src, params.dst))


class Endpoint:
    def __init__(self, kernel: Kernel, *, ns: str | None, local: str, remote: str, psk: bytes,
                 ike_proposals: str = "aes256gcm16-prfsha256-x25519",
                 esp_proposals: str = "aes256gcm16-esn-noesn",
                 port: int = 500, linger: float = 5.0, **engine_kw: Any) -> None:
        self.kernel, self.ns, self.local, self.remote = kernel, ns, local, remote
        self.port, self.linger = port, linger
        self.psks: list[tuple[int, bytes]] = [(1, psk)]
        self.peer = ike.PeerConfig(
            remote_host=remote, local_id=ike.Identity.address(local),
            remote_id=ike.Identity.address(remote),
            ike_proposals=tuple(ike.IkeProposal.parse(p) for p in ike_proposals.split(",")),
            child=ike.ChildConfig(
                proposals=tuple(ike.ChildProposal.parse(p) for p in esp_proposals.split(",")),
                rekey_time=0, rand_time=0),
            ike_rekey_time=0, ike_rand_time=0, dpd_delay=0)
        self.engine = ike.Engine(ike.EngineConfig(
            local_host=local, psk_provider=lambda _l, _r: self.psks,
            peer_lookup=lambda host: self.peer if host == remote else None, ike_port=port,
            **engine_kw), os.urandom)
        self.events: list[ike.Event] = []
        self.errors: list[str] = []  # kernel calls that failed, by event
        self.outbound_pinned: int | None = None  # SPI the out policy is pinned to
        self.installed: dict[int, tuple[SA, SA]] = {}  # spi_in -> (inbound, outbound)
        self._queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.DatagramTransport | None = None
        loc, rem = ipaddress.ip_address(local), ipaddress.ip_address(remote)
        self.policies = {
            Dir.OUT: Policy(Selector.hosts(loc, rem), Dir.OUT, (Template(loc, rem, REQID),),
                            priority=OWNED_PRIORITY_MIN + 0x100),
            Dir.IN: Policy(Selector.hosts(rem, loc), Dir.IN, (Template(rem, loc, REQID),),
                           priority=OWNED_PRIORITY_MIN + 0x100),
        }

    # -- life ---------------------------------------------------------------------------------

    async def start(self) -> None:
        for policy in self.policies.values():  # before any SA: fail closed
            await self.kernel.update_policy(policy)
        sock = (pr_netns.create_socket(self.ns, socket.AF_INET, socket.SOCK_DGRAM) if self.ns
                else socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        bypass_socket(sock)  # IKE itself must not need an SA
        sock.bind((self.local, self.port))
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), sock=sock)
        self._spawn(self._run())

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._timer is not None:
            self._timer.cancel()
        if self._transport is not None:
            self._transport.close()
            # its per-socket bypass policies go with it; dump_policies() cannot decode those yet
            await asyncio.sleep(0)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- API: engine calls run inside the engine's task ---------------------------------------

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args, now)`` inside the engine task; its effects applied before it returns."""
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(("call", fn, args, done))
        return await done

    def of(self, cls: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, cls)]

    async def wait_for(self, cls: type[E], count: int = 1, timeout: float = 60.0,
                       where: Callable[[E], bool] = lambda e: True) -> list[E]:
        """The first ``count`` events of ``cls`` (matching ``where``), waiting if needed."""
        async def enough() -> list[E]:
            while len(found := [e for e in self.of(cls) if where(e)]) < count:
                self._changed.clear()
                await self._changed.wait()
            return found[:count]
        try:
            return await asyncio.wait_for(enough(), timeout)
        except TimeoutError:
            raise AssertionError(f"no {count} x {cls.__name__} within {timeout}s; events: "
                                 f"{[type(e).__name__ for e in self.events]}") from None

    def children(self) -> list[ike.ChildSnapshot]:
        return [c for sa in self.engine.snapshot() for c in sa.children]

    def ike_sas(self) -> list[ike.IkeSaSnapshot]:
        return [s for s in self.engine.snapshot() if s.state == "established"]

    # -- the engine task ----------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            item = await self._queue.get()
            now = loop.time()
            result: Any = None
            error: BaseException | None = None
            if item[0] == "datagram":
                self.engine.receive_datagram(item[1], item[2], (self.local, self.port), now)
            elif item[0] == "timer":
                self.engine.handle_timer(now)
            else:
                try:
                    result = item[1](*item[2], now)
                except Exception as exc:  # handed to the caller
                    error = exc
            await self._flush(now)
            if item[0] == "call":
                if error is not None:
                    item[3].set_exception(error)
                else:
                    item[3].set_result(result)

    async def _flush(self, now: float) -> None:
        while (event := self.engine.next_event()) is not None:
            self.events.append(event)
            try:
                await self._apply(event, now)
            except (OSError, ValueError) as exc:  # XfrmError is an OSError
                self.errors.append(f"{type(event).__name__}: {exc}")
        assert self._transport is not None
        for data, _src, dst in self.engine.datagrams_to_send():
            self._transport.sendto(data, dst)
        if self._timer is not None:
            self._timer.cancel()
        deadline = self.engine.get_timer()
        self._timer = None if deadline is None else asyncio.get_running_loop().call_at(
            deadline, self._queue.put_nowait, ("timer",))
        self._changed.set()

    async def _apply(self, event: ike.Event, now: float) -> None:
        if isinstance(event, ike.SpisNeeded):
            rem, loc = ipaddress.ip_address(self.remote), ipaddress.ip_address(self.local)
            spis = [await self.kernel.allocspi(rem, loc, REQID) for _ in range(event.count)]
            self.engine.provide_spis(spis, now)
        elif isinstance(event, ike.ChildSaEstablished):
            await self._install(event.child, pin=True)
        elif isinstance(event, ike.ChildSaRekeyed):
            await self._install(event.new, pin=event.outbound_active)
        elif isinstance(event, ike.ChildSaOutboundActivated):
            await self._pin(self.installed[event.child.spi_in][1])
        elif isinstance(event, ike.ChildSaDeleted):
            await self._remove(event.child.spi_in, event.reason)

    async def _install(self, child: ike.ChildSa, pin: bool) -> None:
        inbound, outbound = kernel_sa(child, child.inbound), kernel_sa(child, child.outbound)
        await install_inbound(self.kernel, inbound)
        await self.kernel.add_sa(outbound)
        self.installed[child.spi_in] = (inbound, outbound)
        if pin:
            await self._pin(outbound)

    async def _pin(self, outbound: SA | None) -> None:
        policy = self.policies[Dir.OUT]
        policy = (pin_outbound(policy, outbound) if outbound is not None else dataclasses.replace(
            policy, templates=tuple(dataclasses.replace(t, spi=0) for t in policy.templates)))
        await self.kernel.update_policy(policy)
        self.policies[Dir.OUT] = policy
        self.outbound_pinned = outbound.spi if outbound is not None else None

    async def _remove(self, spi_in: int, reason: ike.Reason) -> None:
        pair = self.installed.pop(spi_in, None)
        if pair is None:
            return
        inbound, outbound = pair
        if self.outbound_pinned == outbound.spi:
            await self._pin(None)  # nothing left to use: back to fail-closed
        await _quietly(self.kernel.delete_sa(outbound))
        if reason is ike.Reason.REKEYED:  # packets sent under it may still be in flight
            self._spawn(self._delete_later(inbound))
        else:
            await _quietly(self.kernel.delete_sa(inbound))

    async def _delete_later(self, sa: SA) -> None:
        await asyncio.sleep(self.linger)
        await _quietly(self.kernel.delete_sa(sa))


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.endpoint._queue.put_nowait(("datagram", data, (addr[0], addr[1])))


async def _quietly(op: Any) -> None:
    with contextlib.suppress(NoSuchSa, NoSuchPolicy):
        await op
