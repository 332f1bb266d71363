"""Rekeying a Child SA (§2.8) and simultaneous rekeys (§2.8.1).

# CREATE_CHILD_SA { N(REKEY_SA, our inbound SPI), SA, Ni, [KEi,] TSi, TSr }  -->
#                 <--  { SA, Nr, [KEr,] TSi, TSr }
# INFORMATIONAL { D(old inbound SPI) }  -->  (child_delete)

The initiator switches its outbound SA at once and then deletes the old SA; the responder
installs the new SA but keeps sending on the old one until that DELETE arrives
(``ChildSaOutboundActivated``). When both ends rekey the same SA at once, each exchange makes a
new SA; the one whose exchange holds the lowest of the four nonces is redundant and is deleted by
its initiator, while the winner's initiator deletes the old SA. A request for an SA being
deleted or already rekeyed gets TEMPORARY_FAILURE; an unknown SPI gets CHILD_SA_NOT_FOUND.
"""

from __future__ import annotations

from kube_ipsec.ike import events
from kube_ipsec.ike import payloads as pl
from kube_ipsec.ike.constants import ExchangeType, NotifyType
from kube_ipsec.ike.errors import ProtocolError
from kube_ipsec.ike.message import Message
from kube_ipsec.ike.sa import Child, ChildState, IkeSa
from kube_ipsec.ike.tasks.base import Obsolete, Status, Task
from kube_ipsec.ike.tasks.child_create import ChildCreate
from kube_ipsec.ike.tasks.child_delete import ChildDelete


def lost_collision(ours: ChildCreate, theirs: ChildCreate) -> bool:
    """Our exchange made the redundant SA: it holds the lowest of the four nonces."""
    return min(ours.ni, ours.nr) < min(theirs.ni, theirs.nr)


class ChildRekey(Task):
    exchange = ExchangeType.CREATE_CHILD_SA
    priority = 5

    def __init__(self, sa: IkeSa, initiator: bool, old: Child | None = None) -> None:
        super().__init__(sa, initiator)
        self.old = old
        self.create: ChildCreate | None = None
        self.collision: ChildRekey | None = None  # the peer's rekey of the same SA

    def migrate(self, sa: IkeSa) -> Task | None:
        if self.old is not None and self.old.state == ChildState.REKEYING:
            self.old.state = ChildState.INSTALLED
        return ChildRekey(sa, True, self.old)

    # -- initiator --------------------------------------------------------------------------

    def build_i(self, msg: Message, now: float) -> None:
        old = self.old
        assert old is not None
        if self.sa.children.get(old.spi_in) is not old or old.state not in (
                ChildState.INSTALLED, ChildState.REKEYING):
            raise Obsolete
        if self.create is None:
            ts = (old.params.local_ts, old.params.remote_ts)
            self.create = ChildCreate(self.sa, True, announce=False, ts=ts)
        msg.add(pl.Notify(NotifyType.REKEY_SA, protocol=old.protocol,
                          spi=old.spi_in.to_bytes(4, "big")))
        self.create.build_i(msg, now)
        old.state = ChildState.REKEYING

    def process_i(self, msg: Message, now: float) -> Status:
        sa, old, create = self.sa, self.old, self.create
        assert old is not None and create is not None
        err = msg.error_notify()
        if err is not None and err.type == NotifyType.CHILD_SA_NOT_FOUND:
            sa.remove_child(old, events.Reason.NOT_FOUND)
            return Status.SUCCESS
        if err is not None and err.type == NotifyType.TEMPORARY_FAILURE:
            if self.collision is None and old.state == ChildState.REKEYING:
                old.state = ChildState.INSTALLED
                sa.mgr.queue(ChildRekey(sa, True, old), now + sa.engine.retry_delay())
            return Status.SUCCESS  # with a collision, the peer's new SA is the successor
        status = create.process_i(msg, now)
        if status == Status.RETRY or create.child is None:
            if status != Status.RETRY and old.state == ChildState.REKEYING:
                old.state = ChildState.INSTALLED
            return status
        new = create.child
        sa = sa.owner_of(old)  # where the Child SAs live now
        if self.collision is not None and self.collision.create is not None and (
                lost_collision(create, self.collision.create)):
            new.announced = False
            sa.add_child(new)
            sa.engine.stats.failures["child_rekey_collision_lost"] += 1
            sa.mgr.queue(ChildDelete(sa, True, new, events.Reason.REDUNDANT))
            old.state = ChildState.REKEYED  # the peer deletes it
            return Status.SUCCESS
        sa.add_child(new)
        sa.engine.stats.rekeys["child"] += 1
        if sa.children.get(old.spi_in) is not old:  # the peer deleted it meanwhile
            sa.engine.emit(events.ChildSaEstablished(sa.id, new.params))
            return Status.SUCCESS
        old.state = ChildState.REKEYED
        old.successor = new
        old.rekey_at = None
        sa.engine.emit(events.ChildSaRekeyed(sa.id, old.params, new.params, True))
        sa.mgr.queue(ChildDelete(sa, True, old, events.Reason.REKEYED))
        return Status.SUCCESS

    # -- responder --------------------------------------------------------------------------

    def process_r(self, msg: Message, now: float) -> None:
        sa = self.sa
        notify = msg.notify(NotifyType.REKEY_SA)
        assert notify is not None
        if not sa.accepts_child_requests():
            raise ProtocolError(NotifyType.TEMPORARY_FAILURE)
        old = sa.child_by_spi_out(int.from_bytes(notify.spi, "big")) if len(
            notify.spi) == 4 else None
        if old is None:
            raise ProtocolError(NotifyType.CHILD_SA_NOT_FOUND)
        active = sa.mgr.active
        if old.state in (ChildState.REKEYED, ChildState.DELETING) or (
                active is not None and active.exchange == ExchangeType.CREATE_CHILD_SA
                and not isinstance(active, ChildRekey)):
            raise ProtocolError(NotifyType.TEMPORARY_FAILURE)
        self.old = old
        self.create = ChildCreate(sa, False, announce=False)
        self.create.process_r(msg, now)
        if isinstance(active, ChildRekey) and active.old is old:
            active.collision = self

    def build_r(self, msg: Message, now: float) -> Status:
        sa, old, create = self.sa, self.old, self.create
        assert old is not None and create is not None
        create.build_r(msg, now)
        new = create.child
        assert new is not None
        sa.add_child(new)
        sa.engine.stats.rekeys["child"] += 1
        old.successor = new
        old.rekey_at = None
        if old.state != ChildState.REKEYING:
            old.state = ChildState.REKEYED
        sa.engine.emit(events.ChildSaRekeyed(sa.id, old.params, new.params, False))
        return Status.SUCCESS
