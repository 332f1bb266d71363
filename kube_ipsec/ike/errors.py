"""Errors of the core, named after the culprit (h11 style).

``MalformedMessage`` is raised by the codec for anything the peer (or an attacker) sent that we
cannot parse; the engine catches it, counts the datagram as dropped under ``reason`` and never lets
it escape ``receive_datagram``. ``ProtocolError`` is a well-formed message that violates the
protocol: a responder answers it with ``notify``; an initiator fails the exchange.
``LocalProtocolError`` is a misuse of the API by our own caller.
"""

from __future__ import annotations

from kube_ipsec.ike.constants import NotifyType


class MalformedMessage(Exception):
    """Undecodable input; ``reason`` is a short metric label (``'truncated_payload'``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ProtocolError(Exception):
    """The peer broke the protocol; answer (or fail) with ``notify``."""

    def __init__(self, notify: NotifyType, detail: str = "", data: bytes = b"") -> None:
        super().__init__(f"{notify.name}: {detail}" if detail else notify.name)
        self.notify = notify
        self.data = data


class LocalProtocolError(Exception):
    """Our own caller asked for something impossible (unknown SA, wrong state)."""
