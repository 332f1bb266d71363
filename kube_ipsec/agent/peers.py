"""The peer workers: the IKE core's events turned into kernel state, in order, per peer.

One ``ike.Engine`` serves every peer of the node (it demultiplexes by IKE SPI and answers
new IKE_SA_INIT requests), so one task — ``PeerManager.run`` — owns it, fed by a queue of
inputs (datagrams, timer ticks, desired-state updates, retries). After each input it drains
the engine's events and awaits their kernel effects one by one, and only then sends the
datagrams the same input produced and re-arms the timer (aioquic's order): a peer never
receives a message that refers to an SA we have not installed. Per-peer state and effects live
in ``Peer`` (the worker of one peer). Kernel calls take microseconds, so serialising them in
one task costs nothing measurable and makes the ordering argument trivial; the only slow
effect, the linger before an old inbound SA is deleted, runs in its own task.

Kernel order (research/ikev2.md §5): the pair's policies go in when the peer appears — before
any SA, so traffic fails closed —, then per Child SA inbound SA, outbound SA, and one
UPDPOLICY pinning the ``out`` template to the new outbound SPI (the atomic switch). A rekey
or re-authentication installs the new pair while the old one still carries traffic; the old
outbound SA goes when it is deleted, its inbound one ``linger`` seconds later.

Key rotation: when a tunnel's current generation differs from the one that authenticated the
IKE SA, the pair's initiator re-authenticates (a new IKE SA under the new PSK, its Child SA
installed and switched to, then the old IKE SA deleted — the engine does the last step).
A responder answers IKE_AUTH before the initiator has installed its inbound SA, so a new IKE
SA's child is switched to at once only by its initiator (or when nothing else carries
traffic); a responder switches when the old child goes — after ``linger / 2`` if the old one
vanished abruptly (the peer restarted and sent INITIAL_CONTACT): the restarted peer still
decrypts the old SA meanwhile. ``tests/agent`` checks across both kernels that no side ever
switches to an SPI its peer cannot decrypt yet.

Restart: ``adopt`` reads what a previous agent left in the kernel; desired peers keep their
reqid, policies (still pinned to the old SAs) and SAs, and this node initiates at once; the
old SAs are removed when the new Child SA is up, and what no desired peer claims is removed
after the first desired state was applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from kube_ipsec import contract, ike
from kube_ipsec.agent import metrics, peerstate, status, translate
from kube_ipsec.agent.desired import Desired, DesiredPeer
from kube_ipsec.ike import errors as ike_errors
from kube_ipsec.xfrm import errors as xerrors
from kube_ipsec.xfrm import model as xm
from kube_ipsec.xfrm import switch
from kube_ipsec.xfrm.kernel import Kernel

log = logging.getLogger(__name__)

Address = tuple[str, int]
Send = Callable[[bytes, Address, Address], None]
PeerKey = tuple[str, str]
RETRY_MIN, RETRY_MAX = 2.0, 60.0
# A pair's responder initiates on an ACQUIRE (traffic waiting for an SA) only after this long
# without an IKE SA: normally the initiator is faster, and two IKE SAs would be wasted work.
ACQUIRE_GRACE = 10.0


class PeerManager:
    """Owns the engine and every ``Peer``; ``run()`` is the one task that touches them."""

    def __init__(self, kernel: Kernel, send: Send, *, local_address: str, ike_port: int = 500,
                 natt_port: int = 4500, bypass_ports: tuple[int, ...] = (),
                 linger: float = switch.DEFAULT_LINGER,
                 random: Callable[[int], bytes] = os.urandom,
                 on_change: Callable[[], None] = lambda: None) -> None:
        self.kernel, self.send, self.on_change = kernel, send, on_change
        self.local_address = local_address
        self.bypass_ports, self.linger = bypass_ports, linger
        self.engine = ike.Engine(ike.EngineConfig(
            local_host=local_address, psk_provider=self._psks, peer_lookup=self._lookup,
            ike_port=ike_port, nat_t_port=natt_port), random)
        self.peers: dict[PeerKey, peerstate.Peer] = {}
        self.owner: dict[int, peerstate.Peer] = {}
        self.queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self._timer: asyncio.TimerHandle | None = None
        self._found_policies: dict[xm.PolicyId, xm.Policy] = {}
        self._found_sas: list[xm.SA] = []
        self._adopting = False
        self._stats_seen: dict[str, dict[Any, int]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self.currents: dict[str, int] = {}

    # -- inputs (any task) ------------------------------------------------------------------

    def datagram_received(self, data: bytes, src: Address, dst: Address) -> None:
        self.queue.put_nowait(("datagram", data, src, dst))

    def set_desired(self, want: Desired, currents: dict[str, int]) -> None:
        self.queue.put_nowait(("desired", want, currents))

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        # a full SPI pool from the start: a responder without one drops IKE_AUTH (and waits
        # for the initiator's retransmission); an SPI whose larval SA expired is still used
        # (install_inbound falls back to NEWSA)
        await self._allocate_spis(2 * self.engine.config.spi_low_water, loop.time())
        while True:
            item = await self.queue.get()
            now = loop.time()
            try:
                await self._input(item, now)
                await self._flush(now)
            except Exception:  # one bad input must not stop every peer; counted and logged
                log.exception("peer manager failed on %s input", item[0])
                metrics.IKE_FAILURES.labels("agent_error").inc()
                self._arm_timer()

    async def _input(self, item: tuple[Any, ...], now: float) -> None:
        kind = item[0]
        if kind == "datagram":
            self.engine.receive_datagram(item[1], item[2], item[3], now)
        elif kind == "timer":
            self.engine.handle_timer(now)
        elif kind == "desired":
            await self._apply_desired(item[1], item[2], now)
        elif kind == "retry":
            self._retry(item[1], now)
        elif kind == "kernel":
            self._kernel_event(item[1], now)
        elif kind == "settle":
            await self._settle(item[1])

    async def watch_kernel(self) -> None:
        """Feed the kernel's ACQUIRE/EXPIRE events into the queue (a task of its own)."""
        async with self.kernel.events() as stream:
            async for event in stream:
                self.queue.put_nowait(("kernel", event))

    # -- start: adopt what a previous agent left --------------------------------------------

    async def adopt(self) -> None:
        """Read owned policies/SAs; desired peers claim theirs, the rest goes later."""
        self._found_policies = {p.id: p for p in await self.kernel.dump_policies()
                                if xm.owned_policy(p)}
        self._found_sas = [s for s in await self.kernel.dump_sas()
                           if xm.owned_sa(s) and (s.aead or s.auth)]
        self._adopting = True
        log.info("found %d owned policies and %d SAs in the kernel",
                 len(self._found_policies), len(self._found_sas))

    async def _remove_unclaimed(self) -> None:
        for policy in self._found_policies.values():
            await peerstate.quietly(self.kernel.delete_policy(policy))
        for sa in self._found_sas:
            await peerstate.quietly(self.kernel.delete_sa(sa))
        if self._found_policies or self._found_sas:
            log.info("removed %d stale policies and %d stale SAs",
                     len(self._found_policies), len(self._found_sas))
        self._found_policies, self._found_sas, self._adopting = {}, [], False

    # -- desired state ----------------------------------------------------------------------

    async def _apply_desired(self, want: Desired, currents: dict[str, int], now: float) -> None:
        self.currents = dict(currents)
        for key in list(self.peers):
            new = want.peers.get(key)
            if new is None or new.config_key() != self.peers[key].want.config_key():
                await self._remove(self.peers.pop(key), now)
        for key, wanted in want.peers.items():
            peer = self.peers.get(key)
            if peer is None:
                peer = self.peers[key] = await self._add(wanted)
                peer.added_at = now
            else:
                peer.want = wanted
            self._maybe_initiate(peer, now)
        if self._adopting:
            await self._remove_unclaimed()
        self.on_change()

    def _next_reqid(self) -> int:
        used = {p.reqid for p in self.peers.values()}
        used |= {t.reqid for p in self._found_policies.values() for t in p.templates}
        reqid = translate.FIRST_PEER_REQID
        while reqid in used:
            reqid += 1
        return reqid

    async def _add(self, want: DesiredPeer) -> peerstate.Peer:
        fresh = translate.pair_policies(want, 0)
        claimed = [self._found_policies[p.id] for p in fresh if p.id in self._found_policies]
        reqids = {t.reqid for p in claimed for t in p.templates}
        reqid = reqids.pop() if len(reqids) == 1 else self._next_reqid()
        policies = []
        for p in translate.pair_policies(want, reqid):
            found = self._found_policies.pop(p.id, None)
            if found is not None and peerstate.unpinned(found) == p:
                policies.append(found)  # still pinned to the SAs that carry traffic now
            else:
                policies.append(p)
        bypass = translate.bypass_policies(want.local_address, want.remote_address,
                                           self.bypass_ports)
        peer = peerstate.Peer(want, reqid, policies, status.PeerState(
            want.tunnel, want.name, want.remote_address, external=want.external))
        peer.adopted = [s for s in self._found_sas if s.reqid == reqid]
        self._found_sas = [s for s in self._found_sas if s.reqid != reqid]
        for p in bypass:
            self._found_policies.pop(p.id, None)
            await self.kernel.update_policy(p)
        for p in policies:  # before any SA: fail closed
            await self.kernel.update_policy(p)
        if peer.adopted:
            peer.state.child_state = contract.CHILD_INSTALLED
            peerstate.set_spis(peer)
        log.info("peer %s/%s at %s: reqid 0x%x, %d policies, %d adopted SAs", want.tunnel,
                 want.name, want.remote_address, reqid, len(policies), len(peer.adopted))
        return peer

    async def _remove(self, peer: peerstate.Peer, now: float) -> None:
        log.info("peer %s/%s removed", peer.want.tunnel, peer.want.name)
        if peer.retry:
            peer.retry.cancel()
        for ike_sa in [*peer.ike_sas, *([peer.connecting] if peer.connecting else [])]:
            self.owner.pop(ike_sa, None)
            with contextlib.suppress(ike_errors.LocalProtocolError):
                self.engine.delete_ike(ike_sa, now)
        bypass = translate.bypass_policies(peer.want.local_address, peer.want.remote_address,
                                           self.bypass_ports)
        for p in [*peer.policies, *bypass]:
            await peerstate.quietly(self.kernel.delete_policy(p))
        for inst in [*peer.children.values(), *([peer.orphan] if peer.orphan else [])]:
            await peerstate.quietly(self.kernel.delete_sa(inst.outbound))
            await peerstate.quietly(self.kernel.delete_sa(inst.inbound))
        for sa in peer.adopted:
            await peerstate.quietly(self.kernel.delete_sa(sa))
        metrics.SA_COUNTERS.forget_peer(peer.want.tunnel, peer.want.name)
        with contextlib.suppress(KeyError):
            metrics.LAST_IKE_SUCCESS.remove(peer.want.tunnel, peer.want.name)

    def _maybe_initiate(self, peer: peerstate.Peer, now: float) -> None:
        gen = peer.want.initiate_generation
        current = peer.current_ike
        if current is None:
            if peer.connecting is None and peer.retry is None and peer.wants_to_initiate():
                self._initiate(peer, now)
            return
        used, _ = peer.ike_sas[current]
        if (peer.want.initiator and gen is not None and used != gen and peer.connecting is None
                and not peer.want.external):
            log.info("peer %s/%s: key generation %d is current, re-authenticating (was %d)",
                     peer.want.tunnel, peer.want.name, gen, used)
            peer.connecting = self.engine.reauthenticate(current, now)
            self.owner[peer.connecting] = peer
            metrics.REKEYS.labels("reauth").inc()

    def _initiate(self, peer: peerstate.Peer, now: float) -> None:
        peer.connecting = self.engine.initiate(peer.config, now)
        self.owner[peer.connecting] = peer
        peer.state.ike_state = status.IKE_CONNECTING

    def _schedule_retry(self, peer: peerstate.Peer) -> None:
        if peer.retry is not None or not peer.wants_to_initiate():
            return
        delay = min(RETRY_MIN * 2 ** peer.retries, RETRY_MAX)
        peer.retries += 1
        peer.retry = asyncio.get_running_loop().call_later(
            delay, self.queue.put_nowait, ("retry", peer.want.key))

    def _kernel_event(self, event: xm.Event, now: float) -> None:
        if isinstance(event, xm.Acquire):
            peer = self._by_remote(str(event.template.dst))
            if (peer is not None and not peer.ike_sas and peer.connecting is None
                    and peer.want.initiate_generation is not None
                    and (peer.want.initiator or now - peer.added_at >= ACQUIRE_GRACE)):
                log.info("traffic to %s waits for an SA: initiating", event.template.dst)
                self._initiate(peer, now)
            return
        peer = next((p for p in self.peers.values() if p.reqid == event.reqid), None)
        if peer is None:
            return
        for spi_in, inst in list(peer.children.items()):
            if event.sa.spi not in (inst.inbound.spi, inst.outbound.spi):
                continue
            with contextlib.suppress(ike_errors.LocalProtocolError):
                if not event.hard:
                    self.engine.rekey_child(spi_in, now)
                    continue
                # gone from the kernel before the core rekeyed it: replace the Child SA
                log.warning("SA 0x%08x of %s/%s expired hard", event.sa.spi, peer.want.tunnel,
                            peer.want.name)
                self.engine.delete_child(spi_in, now)
                self.engine.create_child(inst.ike_sa, now)

    def _retry(self, key: PeerKey, now: float) -> None:
        peer = self.peers.get(key)
        if peer is not None:
            peer.retry = None
            self._maybe_initiate(peer, now)

    # -- engine callbacks -------------------------------------------------------------------

    def _by_remote(self, host: str) -> peerstate.Peer | None:
        return next((p for p in self.peers.values() if p.want.remote_address == host), None)

    def _lookup(self, remote_host: str) -> ike.PeerConfig | None:
        peer = self._by_remote(remote_host)
        return peer.config if peer else None

    def _psks(self, local_id: ike.Identity, remote_id: ike.Identity) -> list[tuple[int, bytes]]:
        """Every accepted generation, the one to initiate with first (the core signs with it)."""
        name = str(remote_id)
        peer = next((p for p in self.peers.values()
                     if p.want.remote_id == name and p.want.local_id == str(local_id)), None)
        if peer is None:
            return []
        first = peer.want.initiate_generation
        return sorted(peer.want.psks, key=lambda gp: (gp[0] != first, -gp[0]))

    # -- after every input ------------------------------------------------------------------

    async def _flush(self, now: float) -> None:
        while (event := self.engine.next_event()) is not None:
            try:
                await self._apply(event, now)
            except xerrors.XfrmError as exc:
                log.error("kernel refused %s: %s", type(event).__name__, exc)
                peer = self.owner.get(getattr(event, "ike_sa", -1))
                if peer is not None:
                    peer.state.last_error = f"kernel: {exc}"[:300]
        for data, src, dst in self.engine.datagrams_to_send():
            self.send(data, src, dst)
        self._sync_stats()
        self._arm_timer()
        self.on_change()

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        deadline = self.engine.get_timer()
        self._timer = None if deadline is None else asyncio.get_running_loop().call_at(
            deadline, self.queue.put_nowait, ("timer",))

    def _sync_stats(self) -> None:
        stats = self.engine.stats
        for name, counter, metric in (
            ("dropped", stats.dropped, lambda k: metrics.IKE_DROPPED.labels(k)),
            ("failures", stats.failures, lambda k: metrics.IKE_FAILURES.labels(k)),
            ("rekeys", stats.rekeys, lambda k: metrics.REKEYS.labels(k)),
            ("exchanges", stats.exchanges, lambda k: metrics.IKE_EXCHANGES.labels(k[0], k[2])),
        ):
            seen = self._stats_seen.setdefault(name, {})
            for key, value in counter.items():
                if value > seen.get(key, 0):
                    metric(key).inc(value - seen.get(key, 0))
                    seen[key] = value

    async def _apply(self, event: ike.Event, now: float) -> None:
        if isinstance(event, ike.SpisNeeded):
            await self._allocate_spis(event.count, now)
            return
        if isinstance(event, ike.IkeSaEstablished):
            self._ike_up(event)
            return
        # IkeSaRekeyed names its SA old_ike_sa (it has no ike_sa or remote_addr)
        ike_sa = event.old_ike_sa if isinstance(event, ike.IkeSaRekeyed) else getattr(
            event, "ike_sa", -1)
        peer = self.owner.get(ike_sa)
        if peer is None:
            remote = getattr(event, "remote_addr", None)
            peer = self._by_remote(remote[0]) if remote else None
        if peer is None:
            return  # a peer we removed; its SAs went with it
        if isinstance(event, ike.ChildSaEstablished):
            await self._child_up(peer, event.child, event.ike_sa, pin=None)
        elif isinstance(event, ike.ChildSaRekeyed):
            await self._child_up(peer, event.new, event.ike_sa, pin=event.outbound_active)
            peer.state.last_rekey = contract.utcnow_rfc3339()
        elif isinstance(event, ike.ChildSaOutboundActivated):
            await self._switch(peer, event.child.spi_in)
        elif isinstance(event, ike.ChildSaDeleted):
            await self._child_down(peer, event.child.spi_in)
        elif isinstance(event, ike.IkeSaRekeyed):
            self.owner[event.new_ike_sa] = self.owner.pop(event.old_ike_sa, peer)
            peer.ike_sas[event.new_ike_sa] = peer.ike_sas.pop(event.old_ike_sa, (0, True))
            for inst in peer.children.values():  # the core moved them to the new IKE SA
                if inst.ike_sa == event.old_ike_sa:
                    inst.ike_sa = event.new_ike_sa
            peer.state.last_rekey = contract.utcnow_rfc3339()
        elif isinstance(event, ike.IkeSaDeleted):
            self._ike_down(peer, event)
        elif isinstance(event, ike.AuthenticationFailed):
            side = "peer rejected our PSK" if event.by_peer else "peer's PSK did not verify"
            peer.state.last_error = f"IKE authentication failed: {side}"
        elif isinstance(event, ike.NegotiationFailed):
            who = "peer" if event.by_peer else "we"
            peer.state.last_error = f"{event.exchange} failed: {who} sent {event.notify}"
        elif isinstance(event, ike.ChildSaFailed):
            peer.state.last_error = f"Child SA failed: {event.notify}"
        elif isinstance(event, ike.PeerDead):
            peer.state.last_error = "peer not responding (dead peer detection)"

    async def _allocate_spis(self, count: int, now: float) -> None:
        any_addr = "::" if ipaddress.ip_address(self.local_address).version == 6 else "0.0.0.0"
        spis = [await self.kernel.allocspi(ipaddress.ip_address(any_addr),
                                           ipaddress.ip_address(self.local_address),
                                           translate.POOL_REQID) for _ in range(count)]
        self.engine.provide_spis(spis, now)

    def _ike_up(self, event: ike.IkeSaEstablished) -> None:
        peer = self.owner.get(event.ike_sa) or self._by_remote(event.remote_addr[0])
        if peer is None:
            self.engine.delete_ike(event.ike_sa, asyncio.get_running_loop().time())
            return
        self.owner[event.ike_sa] = peer
        peer.ike_sas[event.ike_sa] = (event.psk_generation, event.initiator)
        if peer.connecting == event.ike_sa:
            peer.connecting = None
        peer.retries = 0
        st = peer.state
        st.ike_state, st.key_generation = contract.IKE_ESTABLISHED, event.psk_generation
        st.established, st.last_error = contract.utcnow_rfc3339(), None
        metrics.LAST_IKE_SUCCESS.labels(peer.want.tunnel, peer.want.name).set(time.time())
        log.info("IKE SA %d with %s/%s established (key generation %d, %s)", event.ike_sa,
                 peer.want.tunnel, peer.want.name, event.psk_generation,
                 "initiator" if event.initiator else "responder")
        # the generation may have become current while this SA was being negotiated
        self._maybe_initiate(peer, asyncio.get_running_loop().time())

    def _ike_down(self, peer: peerstate.Peer, event: ike.IkeSaDeleted) -> None:
        self.owner.pop(event.ike_sa, None)
        peer.ike_sas.pop(event.ike_sa, None)
        if peer.connecting == event.ike_sa:
            peer.connecting = None
        if peer.ike_sas:
            peer.state.key_generation = peer.ike_sas[max(peer.ike_sas)][0]
            if not event.established:  # a failed re-authentication: try again later
                self._schedule_retry(peer)
            return
        peer.state.ike_state = (status.IKE_FAILED if event.reason in (
            ike.Reason.AUTH_FAILED, ike.Reason.NEGOTIATION_FAILED, ike.Reason.DEAD_PEER,
            ike.Reason.HALF_OPEN_TIMEOUT) else status.IKE_CONNECTING)
        peer.state.key_generation = None
        self._schedule_retry(peer)

    # -- kernel effects ---------------------------------------------------------------------

    async def _child_up(self, peer: peerstate.Peer, child: ike.ChildSa, ike_sa: int,
                        pin: bool | None) -> None:
        inbound, outbound = translate.kernel_pair(child, peer.reqid)
        await switch.install_inbound(self.kernel, inbound)
        await self.kernel.add_sa(outbound)
        _, we_initiated = peer.ike_sas.get(ike_sa, (0, True))
        if pin is not None:  # a rekey: the core says whether we may switch now
            we_initiated = pin
        loop = asyncio.get_running_loop()
        peer.children[child.spi_in] = peerstate.Installed(ike_sa, inbound, outbound, loop.time(),
                                                we_initiated)
        if pin is None:
            # A new IKE SA's first child. As its responder we answer before the initiator
            # has installed its inbound SA: switch only if nothing else can carry traffic.
            pin = we_initiated or (peer.active is None and peer.orphan is None)
        if pin:
            await self._switch(peer, child.spi_in)
        else:
            peer.pending.append(child.spi_in)
        peerstate.set_spis(peer)

    async def _switch(self, peer: peerstate.Peer, spi_in: int) -> None:
        inst = peer.children.get(spi_in)
        if inst is None:
            return
        await self._pin(peer, inst.outbound)
        peer.active = spi_in
        if spi_in in peer.pending:
            peer.pending.remove(spi_in)
        if peer.orphan is not None:
            self._later(self._delete_after(peer.orphan.outbound, switch.DEFAULT_GRACE))
            peer.orphan = None
        peer.state.child_state = contract.CHILD_INSTALLED
        if peer.adopted:  # a restart's leftovers: replaced now
            old, peer.adopted = peer.adopted, []
            for sa in old:
                if ipaddress.ip_address(peer.want.local_address) == sa.dst:
                    self._later(self._delete_after(sa, self.linger))
                else:
                    await peerstate.quietly(self.kernel.delete_sa(sa))
        peerstate.set_spis(peer)

    async def _pin(self, peer: peerstate.Peer, outbound: xm.SA | None) -> None:
        pinned = []
        for p in peer.policies:
            if p.dir is xm.Dir.OUT:
                p = (switch.pin_outbound(p, outbound) if outbound is not None
                     else peerstate.unpinned(p))
                await self.kernel.update_policy(p)
            pinned.append(p)
        peer.policies = pinned

    async def _child_down(self, peer: peerstate.Peer, spi_in: int) -> None:
        inst = peer.children.pop(spi_in, None)
        if spi_in in peer.pending:
            peer.pending.remove(spi_in)
        if inst is None:
            return
        # the inbound SA only decrypts: keep it for packets in flight (and for a peer that
        # restarted, whose new Child SA is negotiated while it still sends under the old one)
        self._later(self._delete_after(inst.inbound, self.linger))
        if peer.active != spi_in:
            await peerstate.quietly(self.kernel.delete_sa(inst.outbound))
            peerstate.set_spis(peer)
            return
        loop = asyncio.get_running_loop()
        successor = peer.children.get(peer.pending[-1]) if peer.pending else None
        settle = self.linger / 2
        if successor is not None and (successor.we_initiated
                                      or loop.time() - successor.installed_at >= settle):
            await self._switch(peer, peer.pending[-1])
            # packets routed just before the re-pin still point at the old SA (measured: a
            # few EINVAL sends, XfrmOutStateInvalid), so it goes after a short grace
            self._later(self._delete_after(inst.outbound, switch.DEFAULT_GRACE))
        else:
            # Gone (a restarted peer's INITIAL_CONTACT, a dead peer) with no successor the peer
            # can decrypt yet: keep sending under it a moment. A restarted peer still holds
            # the matching inbound SA; a dead one loses nothing more.
            if peer.orphan is not None:
                await peerstate.quietly(self.kernel.delete_sa(peer.orphan.outbound))
            peer.active, peer.orphan = None, inst
            loop.call_later(settle, self.queue.put_nowait, ("settle", peer.want.key))
        peerstate.set_spis(peer)

    async def _settle(self, key: PeerKey) -> None:
        """An orphan's grace is over: switch to the newest successor, or fail closed."""
        peer = self.peers.get(key)
        if peer is None or peer.orphan is None:
            return
        if peer.pending:
            await self._switch(peer, peer.pending[-1])
            return
        await self._pin(peer, None)
        await peerstate.quietly(self.kernel.delete_sa(peer.orphan.outbound))
        peer.orphan = None
        peer.state.child_state = status.CHILD_NONE
        peerstate.set_spis(peer)

    async def _delete_after(self, sa: xm.SA, delay: float) -> None:
        await asyncio.sleep(delay)
        await peerstate.quietly(self.kernel.delete_sa(sa))

    def _later(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- read-outs --------------------------------------------------------------------------

    def states(self) -> dict[PeerKey, status.PeerState]:
        return {k: p.state for k, p in self.peers.items()}

    async def refresh_counters(self) -> None:
        """Feed the SA byte/packet counters from a kernel dump, attributed by reqid."""
        by_reqid = {p.reqid: p for p in self.peers.values()}
        local = ipaddress.ip_address(self.local_address)
        samples = []
        for sa in await self.kernel.dump_sas():
            peer = by_reqid.get(sa.reqid)
            if peer is None or sa.counters is None:
                continue
            samples.append(metrics.SaSample(
                peer.want.tunnel, peer.want.name, "in" if sa.dst == local else "out", sa.spi,
                sa.counters.bytes, sa.counters.packets, sa.counters.oseq, sa.esn))
        metrics.SA_COUNTERS.update(samples)
