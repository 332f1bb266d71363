"""The task manager of one IKE SA: message IDs, window 1, retransmission, passive tasks.

Like charon's ``task_manager_v2``: our requests come from a queue of tasks, one in flight at a
time (window size 1, §2.3); the peer's requests create passive tasks by exchange type. Message
IDs are two independent counters. The requester alone retransmits, with exponential back-off
(``retransmit_timeout * retransmit_base**n``, ``retransmit_tries`` times, then the peer is dead);
the responder caches its last response and resends those exact bytes when the request repeats.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kube_ipsec.ike import events, message
from kube_ipsec.ike import payloads as pl
from kube_ipsec.ike.constants import ExchangeType, NotifyType
from kube_ipsec.ike.errors import MalformedMessage, ProtocolError
from kube_ipsec.ike.tasks.base import Abort, NeedSpi, Obsolete, Status, Task

if TYPE_CHECKING:
    from kube_ipsec.ike.sa import IkeSa


class TaskManager:
    def __init__(self, sa: IkeSa) -> None:
        self.sa = sa
        self.queued: list[tuple[float, Task]] = []  # (not before, task)
        self.waiting_spi: list[Task] = []  # queued tasks that need an SPI from the kernel
        self.active: Task | None = None
        self.mid_out = 0
        self.mid_in = 0
        self.request: bytes = b""  # exact bytes of our outstanding request
        self.retransmits = 0
        self.retransmit_at: float | None = None
        self.response: tuple[int, bytes] | None = None  # (message ID, bytes) of our last answer

    # -- our requests -----------------------------------------------------------------------

    def queue(self, task: Task, not_before: float = 0.0) -> None:
        self.queued.append((not_before, task))
        self.sa.engine.touch(self.sa)

    def idle(self) -> bool:
        return self.active is None and not self.queued and not self.waiting_spi

    def resume(self, now: float) -> None:
        """SPIs arrived: the tasks that waited for them go first."""
        self.queued[:0] = [(0.0, t) for t in self.waiting_spi]
        self.waiting_spi.clear()
        self.initiate(now)

    def has_queued(self, cls: type[Task]) -> bool:
        return isinstance(self.active, cls) or any(
            isinstance(t, cls) for t in [t for _, t in self.queued] + self.waiting_spi)

    def migrate(self, successor: IkeSa, now: float, active: bool = False) -> None:
        """Hand our pending Child SA work to the IKE SA that took over the Child SAs."""
        pending = [(0.0, self.active)] if active and self.active is not None else []
        pending += self.queued + [(0.0, t) for t in self.waiting_spi]
        self.queued, self.waiting_spi = [], []
        self.sa.engine.touch(self.sa)
        for not_before, task in pending:
            moved = task.migrate(successor)
            if moved is not None:
                successor.mgr.queue(moved)
            elif task is not self.active:
                self.queued.append((not_before, task))
        successor.mgr.initiate(now)

    def initiate(self, now: float) -> None:
        """Start the next queued task if nothing is in flight."""
        self.sa.engine.touch(self.sa)
        while self.active is None and self.sa.state.value != "destroyed":
            ready = [(t.priority, i) for i, (nb, t) in enumerate(self.queued) if nb <= now]
            if not ready:
                return
            _, index = min(ready)
            _, task = self.queued.pop(index)
            msg = self._new_request(task)
            try:
                task.build_i(msg, now)
            except Obsolete:
                continue
            except Abort:
                self.sa.destroy(self.sa.delete_reason, now)
                return
            except NeedSpi:
                self.waiting_spi.append(task)
                self.sa.engine.wait_for_spis(self.sa)
                return
            self.active = task
            self._send_request(msg, now)

    def _new_request(self, task: Task) -> message.Message:
        sa = self.sa
        return message.Message(task.exchange, False, sa.initiator, self.mid_out, sa.spi_i,
                               sa.spi_r)

    def _send_request(self, msg: message.Message, now: float) -> None:
        sa = self.sa
        if msg.exchange == ExchangeType.IKE_SA_INIT:
            data = message.encode(msg)
            sa.init_request = data
        else:
            data = message.encode(msg, sa.cipher_out)
        self.request = data
        self.retransmits = 0
        self.retransmit_at = now + sa.engine.config.retransmit_timeout
        sa.engine.send(data, sa.local, sa.remote)

    def _retransmit(self, now: float) -> None:
        sa = self.sa
        cfg = sa.engine.config
        if self.retransmits >= cfg.retransmit_tries:
            from kube_ipsec.ike.tasks.ike_delete import IkeDelete

            sa.engine.stats.failures["retransmits_exhausted"] += 1
            sa.engine.stats.count_exchange(self.active, "timeout")
            if isinstance(self.active, IkeDelete):  # we were leaving anyway
                sa.destroy(self.active.reason, now)
                return
            sa.engine.emit(events.PeerDead(sa.id, sa.remote))
            sa.destroy(events.Reason.DEAD_PEER, now)
            return
        self.retransmits += 1
        sa.engine.stats.retransmits += 1
        self.retransmit_at = now + cfg.retransmit_timeout * cfg.retransmit_base ** self.retransmits
        sa.engine.send(self.request, sa.local, sa.remote)

    def deadline(self) -> float | None:
        times = [nb for nb, _ in self.queued] if self.active is None else []
        if self.active is not None and self.retransmit_at is not None:
            times.append(self.retransmit_at)
        return min(times) if times else None

    def on_timer(self, now: float) -> None:
        self.sa.engine.touch(self.sa)
        if self.active is not None:
            if self.retransmit_at is not None and now >= self.retransmit_at:
                self._retransmit(now)
            return
        self.initiate(now)

    # -- incoming ---------------------------------------------------------------------------

    def on_response(self, msg: message.Message, now: float) -> None:
        self.sa.engine.touch(self.sa)
        task = self.active
        if task is None or msg.message_id != self.mid_out or msg.exchange != task.exchange:
            raise MalformedMessage("unexpected_response")
        self.active = None
        self.retransmit_at = None
        status = task.process_i(msg, now)
        err = msg.error_notify() or msg.notify(NotifyType.COOKIE)
        self.sa.engine.stats.count_exchange(task, pl.notify_type_name(err.type) if err else "ok")
        if status == Status.DESTROY:
            self.sa.destroy(self.sa.delete_reason, now)
            return
        if status != Status.RETRY or msg.exchange != ExchangeType.IKE_SA_INIT:
            self.mid_out += 1  # an IKE_SA_INIT retry (COOKIE, INVALID_KE) reuses ID 0
        if status == Status.RETRY:
            self.queued.insert(0, (now, task))
        self.initiate(now)

    def on_request(self, msg: message.Message, raw: bytes, now: float) -> None:
        sa = self.sa
        sa.engine.touch(sa)
        if self.response is not None and msg.message_id == self.response[0]:
            sa.engine.stats.retransmitted_responses += 1
            sa.engine.send(self.response[1], sa.local, sa.remote)
            return
        if msg.message_id != self.mid_in:
            raise MalformedMessage("unexpected_message_id")
        from kube_ipsec.ike.tasks.passive import passive_task

        if msg.exchange in (ExchangeType.IKE_AUTH, ExchangeType.CREATE_CHILD_SA) and (
                not sa.engine.has_spi()):
            sa.engine.want_spis()
            raise MalformedMessage("no_spi_available")  # the peer retransmits meanwhile
        if msg.exchange == ExchangeType.IKE_SA_INIT:
            sa.init_request = raw
        task = passive_task(sa, msg)
        response = message.Message(msg.exchange, True, sa.initiator, msg.message_id, sa.spi_i,
                                   sa.spi_r)
        critical = [p for p in msg.payloads if isinstance(p, pl.Unknown) and p.critical]
        try:
            if critical:
                raise ProtocolError(NotifyType.UNSUPPORTED_CRITICAL_PAYLOAD,
                                    data=bytes([critical[0].type]))
            task.process_r(msg, now)
            status = task.build_r(response, now)
            result = "ok"
        except ProtocolError as e:
            response.payloads = [pl.Notify(e.notify, data=e.data)]
            result = e.notify.name
            fatal = msg.exchange in (ExchangeType.IKE_SA_INIT, ExchangeType.IKE_AUTH)
            status = Status.DESTROY if fatal else Status.SUCCESS
            if fatal:
                sa.delete_reason = events.Reason.NEGOTIATION_FAILED
            if e.notify != NotifyType.INVALID_KE_PAYLOAD or not fatal:
                sa.engine.emit(events.NegotiationFailed(sa.id, msg.exchange.name, e.notify.name,
                                                        by_peer=False))
        sa.engine.stats.count_exchange(task, result)
        if msg.exchange == ExchangeType.IKE_SA_INIT:
            data = message.encode(response)
            sa.init_response = data
        else:
            data = message.encode(response, sa.cipher_out)
        self.response = (msg.message_id, data)
        self.mid_in += 1
        sa.engine.send(data, sa.local, sa.remote)
        if status == Status.DESTROY:
            sa.destroy(sa.delete_reason, now)
        else:
            self.initiate(now)
