"""The responder side: which task answers a request (charon's ``process_request``), and the
INFORMATIONAL responder (deletes, liveness checks).

CREATE_CHILD_SA requests are told apart as strongSwan does: N(REKEY_SA) with TS payloads is a
Child SA rekey, TS payloads alone a new Child SA, no TS payloads an IKE SA rekey.
"""

from __future__ import annotations

from kube_ipsec.ike import events
from kube_ipsec.ike import payloads as pl
from kube_ipsec.ike.constants import ExchangeType, NotifyType, ProtocolId
from kube_ipsec.ike.errors import MalformedMessage
from kube_ipsec.ike.message import Message
from kube_ipsec.ike.sa import IkeSa, IkeState
from kube_ipsec.ike.tasks.base import Status, Task
from kube_ipsec.ike.tasks.child_create import ChildCreate
from kube_ipsec.ike.tasks.child_delete import delete_by_peer
from kube_ipsec.ike.tasks.child_rekey import ChildRekey
from kube_ipsec.ike.tasks.ike_auth import IkeAuth
from kube_ipsec.ike.tasks.ike_init import IkeInit
from kube_ipsec.ike.tasks.ike_rekey import IkeRekey


class Informational(Task):
    exchange = ExchangeType.INFORMATIONAL
    priority = 9

    def __init__(self, sa: IkeSa, initiator: bool) -> None:
        super().__init__(sa, initiator)
        self.delete_ike = False
        self.auth_failed = False
        self.answer: dict[int, list[bytes]] = {}

    def process_r(self, msg: Message, now: float) -> None:
        # strongSwan reports a failed verification of our AUTH in an INFORMATIONAL request
        self.auth_failed = msg.notify(NotifyType.AUTHENTICATION_FAILED) is not None
        for d in msg.get_all(pl.Delete):
            if d.protocol == ProtocolId.IKE:
                self.delete_ike = True
                self._peer_won_rekey(now)
            elif d.protocol in (ProtocolId.ESP, ProtocolId.AH) and not self.delete_ike:
                spis = delete_by_peer(self.sa, d)
                if spis:
                    self.answer.setdefault(d.protocol, []).extend(spis)

    def _peer_won_rekey(self, now: float) -> None:
        """Our IKE rekey is still in flight but the peer finished its own and deletes the old
        SA: its rekey won, so the Child SAs go to the SA it created."""
        active = self.sa.mgr.active
        if (isinstance(active, IkeRekey) and self.sa.state == IkeState.REKEYING
                and active.collision is not None and active.collision.new_sa is not None):
            active.adopt(active.collision.new_sa, now)

    def build_r(self, msg: Message, now: float) -> Status:
        sa = self.sa
        if self.auth_failed:
            sa.engine.stats.failures["authentication_failed"] += 1
            sa.engine.emit(events.AuthenticationFailed(sa.id, sa.remote, sa.remote_id, True))
            sa.delete_reason = events.Reason.AUTH_FAILED
            return Status.DESTROY
        if self.delete_ike:
            sa.delete_reason = (events.Reason.REKEYED if sa.state == IkeState.REKEYED
                                else events.Reason.PEER)
            return Status.DESTROY
        for protocol, spis in self.answer.items():
            msg.add(pl.Delete(protocol, spis))
        return Status.SUCCESS


def passive_task(sa: IkeSa, msg: Message) -> Task:
    """The task that answers ``msg``; ``MalformedMessage`` if the request is out of place."""
    connecting = sa.state == IkeState.CONNECTING
    if msg.exchange == ExchangeType.IKE_SA_INIT and connecting and sa.mgr.mid_in == 0:
        return IkeInit(sa, False)
    if msg.exchange == ExchangeType.IKE_AUTH and connecting and sa.mgr.mid_in == 1:
        return IkeAuth(sa, False)
    if connecting:
        raise MalformedMessage("unexpected_exchange")
    if msg.exchange == ExchangeType.INFORMATIONAL:
        return Informational(sa, False)
    if msg.exchange == ExchangeType.CREATE_CHILD_SA:
        has_ts = msg.get(pl.TSi) is not None or msg.get(pl.TSr) is not None
        rekey = msg.notify(NotifyType.REKEY_SA)
        if has_ts and rekey is not None and rekey.protocol in (ProtocolId.ESP, ProtocolId.AH):
            return ChildRekey(sa, False)
        if has_ts:
            return ChildCreate(sa, False)
        return IkeRekey(sa, False)
    raise MalformedMessage("unexpected_exchange")
