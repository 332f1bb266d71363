"""Deleting the IKE SA (§1.4.1): D(IKE) in INFORMATIONAL; all its Child SAs go with it.

# INFORMATIONAL { D(IKE) }  -->
#               <--  { }
"""

from __future__ import annotations

from kube_ipsec.ike import events
from kube_ipsec.ike import payloads as pl
from kube_ipsec.ike.constants import ExchangeType, ProtocolId
from kube_ipsec.ike.message import Message
from kube_ipsec.ike.sa import IkeSa, IkeState
from kube_ipsec.ike.tasks.base import Status, Task


class IkeDelete(Task):
    exchange = ExchangeType.INFORMATIONAL
    priority = 2

    def __init__(self, sa: IkeSa, initiator: bool,
                 reason: events.Reason = events.Reason.LOCAL) -> None:
        super().__init__(sa, initiator)
        self.reason = reason

    def migrate(self, sa: IkeSa) -> Task | None:
        """A delete we decided on (API, reauthentication, duplicate) follows the rekeyed SA."""
        if self.reason in (events.Reason.LOCAL, events.Reason.REPLACED, events.Reason.REDUNDANT):
            return IkeDelete(sa, True, self.reason)
        return None

    def build_i(self, msg: Message, now: float) -> None:
        if self.sa.state != IkeState.REKEYED:
            self.sa.state = IkeState.DELETING
        msg.add(pl.Delete(ProtocolId.IKE, []))

    def process_i(self, msg: Message, now: float) -> Status:
        self.sa.delete_reason = self.reason
        return Status.DESTROY
