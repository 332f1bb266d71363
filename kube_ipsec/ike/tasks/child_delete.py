"""Deleting Child SAs with INFORMATIONAL (§1.4.1).

# INFORMATIONAL { D(ESP, our inbound SPI) }  -->
#               <--  { D(ESP, the peer's inbound SPI of the pair) }

The receiver of a DELETE for an SA it rekeyed as responder first switches its outbound SA to
the successor (``ChildSaOutboundActivated``). If both ends delete the same SA at once, each
answers without that SPI (it is already going).
"""

from __future__ import annotations

from kube_ipsec.ike import events
from kube_ipsec.ike import payloads as pl
from kube_ipsec.ike.constants import ExchangeType
from kube_ipsec.ike.message import Message
from kube_ipsec.ike.sa import Child, ChildState, IkeSa
from kube_ipsec.ike.tasks.base import Obsolete, Status, Task


class ChildDelete(Task):
    exchange = ExchangeType.INFORMATIONAL
    priority = 3

    def __init__(self, sa: IkeSa, initiator: bool, child: Child,
                 reason: events.Reason = events.Reason.LOCAL) -> None:
        super().__init__(sa, initiator)
        self.child = child
        self.reason = reason

    def migrate(self, sa: IkeSa) -> Task | None:
        return ChildDelete(sa, True, self.child, self.reason)

    def build_i(self, msg: Message, now: float) -> None:
        child = self.child
        if self.sa.children.get(child.spi_in) is not child:
            raise Obsolete
        child.state = ChildState.DELETING
        child.rekey_at = None
        msg.add(pl.Delete(child.protocol, [child.spi_in.to_bytes(4, "big")]))

    def process_i(self, msg: Message, now: float) -> Status:
        self.sa.owner_of(self.child).remove_child(self.child, self.reason)
        return Status.SUCCESS


def delete_by_peer(sa: IkeSa, delete: pl.Delete) -> list[bytes]:
    """Handle the peer's D(ESP/AH); return our inbound SPIs for the answer."""
    answer = []
    for raw in delete.spis:
        if len(raw) != 4:
            continue
        found = sa.engine.child_by_spi_out(sa, int.from_bytes(raw, "big"))
        if found is None or found[1].protocol != delete.protocol:
            continue
        owner, child = found
        if child.state == ChildState.DELETING:
            owner.remove_child(child, events.Reason.PEER)
            continue
        answer.append(child.spi_in.to_bytes(4, "big"))
        successor = child.successor
        if successor is not None and sa.owner_of(successor).children.get(
                successor.spi_in) is successor:
            sa.engine.emit(events.ChildSaOutboundActivated(owner.id, successor.params))
            owner.remove_child(child, events.Reason.REKEYED)
        else:
            owner.remove_child(child, events.Reason.PEER)
    return answer
