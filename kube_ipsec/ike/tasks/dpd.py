"""Liveness check (§1.4): an empty INFORMATIONAL request; an empty response proves the peer.

# INFORMATIONAL { }  -->
#               <--  { }

When the retransmissions run out the task manager reports ``PeerDead``.
"""

from __future__ import annotations

from kube_ipsec.ike.constants import ExchangeType
from kube_ipsec.ike.message import Message
from kube_ipsec.ike.tasks.base import Status, Task


class Dpd(Task):
    exchange = ExchangeType.INFORMATIONAL
    priority = 7

    def build_i(self, msg: Message, now: float) -> None:
        """Nothing to add: the request is an empty SK payload."""

    def process_i(self, msg: Message, now: float) -> Status:
        return Status.SUCCESS
