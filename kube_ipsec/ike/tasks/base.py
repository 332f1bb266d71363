"""The task interface and the statuses a task returns to the manager."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, ClassVar

from kube_ipsec.ike.constants import ExchangeType

if TYPE_CHECKING:
    from kube_ipsec.ike.message import Message
    from kube_ipsec.ike.sa import IkeSa


class Status(enum.Enum):
    SUCCESS = "success"  # the exchange is done; the IKE SA lives on
    RETRY = "retry"  # initiator: send this task's request again (COOKIE, INVALID_KE_PAYLOAD)
    DESTROY = "destroy"  # the IKE SA goes (failure, or it was deleted); reason on the SA


class NeedSpi(Exception):
    """The task needs an inbound SPI from the kernel and the pool is empty: try again later."""


class Abort(Exception):
    """The task cannot even start (e.g. no PSK for the peer): the IKE SA goes, reason set."""


class Obsolete(Exception):
    """The task no longer applies (its SA went away meanwhile); the manager drops it."""


class Task:
    exchange: ClassVar[ExchangeType]
    priority: ClassVar[int]  # lower runs first, as in charon's initiate() order
    blocks_child_requests: ClassVar[bool] = False  # in flight: peer's child requests must wait

    def __init__(self, sa: IkeSa, initiator: bool) -> None:
        self.sa = sa
        self.initiator = initiator

    def migrate(self, sa: IkeSa) -> Task | None:
        """This task redone on ``sa``, the successor of a rekeyed IKE SA; None: drop it."""
        return None

    def build_i(self, msg: Message, now: float) -> None:
        raise NotImplementedError

    def process_i(self, msg: Message, now: float) -> Status:
        raise NotImplementedError

    def process_r(self, msg: Message, now: float) -> None:
        """Raise ``ProtocolError`` to answer with just that error notify."""
        raise NotImplementedError

    def build_r(self, msg: Message, now: float) -> Status:
        raise NotImplementedError
