"""Whole IKE messages: the 28-byte header (§3.1) and the SK{} envelope (§3.14, RFC 5282).

``parse_header`` is all the engine needs to demultiplex a datagram by SPI before any key is
known. ``decode`` turns bytes into a ``Message``, decrypting the SK payload when a cipher is
given; ``encode`` is the inverse. AAD of the SK payload is everything before the IV: the IKE
header plus the SK generic header, with final lengths filled in.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from kube_ipsec.ike import payloads as pl
from kube_ipsec.ike.constants import (
    IKE_HEADER_LEN,
    IKE_VERSION,
    ExchangeType,
    Flag,
    PayloadType,
)
from kube_ipsec.ike.crypto import SkCipher
from kube_ipsec.ike.errors import MalformedMessage

MAX_MESSAGE = 65535


@dataclass(frozen=True)
class Header:
    spi_i: bytes
    spi_r: bytes
    next_payload: int
    exchange: int
    flags: int
    message_id: int
    length: int

    @property
    def is_response(self) -> bool:
        return bool(self.flags & Flag.RESPONSE)

    @property
    def from_initiator(self) -> bool:
        """The sender is the original initiator of the IKE SA (I flag)."""
        return bool(self.flags & Flag.INITIATOR)


@dataclass
class Message:
    exchange: ExchangeType
    is_response: bool
    from_initiator: bool
    message_id: int
    spi_i: bytes
    spi_r: bytes
    payloads: list[pl.Payload] = field(default_factory=list)

    def get(self, cls: type[pl.PayloadT]) -> pl.PayloadT | None:
        for p in self.payloads:
            if isinstance(p, cls):
                return p
        return None

    def get_all(self, cls: type[pl.PayloadT]) -> list[pl.PayloadT]:
        return [p for p in self.payloads if isinstance(p, cls)]

    def notify(self, ntype: int) -> pl.Notify | None:
        for p in self.payloads:
            if isinstance(p, pl.Notify) and p.type == ntype:
                return p
        return None

    def error_notify(self) -> pl.Notify | None:
        for p in self.payloads:
            if isinstance(p, pl.Notify) and p.type < 16384:
                return p
        return None

    def add(self, *payloads: pl.Payload) -> None:
        self.payloads.extend(payloads)


def parse_header(data: bytes) -> Header:
    if len(data) < IKE_HEADER_LEN:
        raise MalformedMessage("short_header")
    spi_i, spi_r, nxt, version, exchange, flags, mid, length = struct.unpack_from(
        "!8s8sBBBBII", data)
    if version >> 4 != 2:
        raise MalformedMessage("unsupported_version")
    if length != len(data):
        raise MalformedMessage("length_mismatch")
    if length > MAX_MESSAGE:
        raise MalformedMessage("too_long")
    if exchange not in ExchangeType.__members__.values():
        raise MalformedMessage("unknown_exchange")
    return Header(spi_i, spi_r, nxt, exchange, flags, mid, length)


def _header_bytes(msg: Message, next_payload: int, length: int) -> bytes:
    flags = (Flag.RESPONSE if msg.is_response else 0) | (
        Flag.INITIATOR if msg.from_initiator else 0)
    return struct.pack("!8s8sBBBBII", msg.spi_i, msg.spi_r, next_payload, IKE_VERSION,
                       msg.exchange, flags, msg.message_id, length)


def encode(msg: Message, cipher: SkCipher | None = None) -> bytes:
    """Serialise ``msg``; with a cipher every payload goes inside one SK payload."""
    if cipher is None:
        body = pl.serialize_chain(msg.payloads)
        first = pl.type_of(msg.payloads[0]) if msg.payloads else PayloadType.NONE
        return _header_bytes(msg, first, IKE_HEADER_LEN + len(body)) + body
    inner = pl.serialize_chain(msg.payloads)
    plaintext = inner + b"\x00"  # no padding needed for AEAD; Pad Length = 0
    sealed_len = 8 + len(plaintext) + 16
    first = pl.type_of(msg.payloads[0]) if msg.payloads else PayloadType.NONE
    sk_header = struct.pack("!BBH", first, 0, 4 + sealed_len)
    header = _header_bytes(msg, PayloadType.SK, IKE_HEADER_LEN + 4 + sealed_len)
    return header + sk_header + cipher.seal(header + sk_header, plaintext)


def decode(data: bytes, header: Header, cipher: SkCipher | None = None) -> Message:
    """Parse ``data`` (whose header is ``header``); SK{} requires ``cipher``."""
    body = data[IKE_HEADER_LEN:]
    msg = Message(ExchangeType(header.exchange), header.is_response, header.from_initiator,
                  header.message_id, header.spi_i, header.spi_r)
    if header.next_payload != PayloadType.SK:
        if header.exchange != ExchangeType.IKE_SA_INIT:
            raise MalformedMessage("unencrypted_message")
        msg.payloads = pl.parse_chain(header.next_payload, body)
        return msg
    if cipher is None:
        raise MalformedMessage("no_keys")
    if len(body) < 4:
        raise MalformedMessage("short_sk")
    inner_first, _, sk_len = struct.unpack_from("!BBH", body)
    if sk_len != len(body):
        raise MalformedMessage("bad_sk_length")
    plaintext = cipher.open(data[: IKE_HEADER_LEN + 4], body[4:])
    pad_len = plaintext[-1]
    if pad_len + 1 > len(plaintext):
        raise MalformedMessage("bad_padding")
    msg.payloads = pl.parse_chain(inner_first, plaintext[: -1 - pad_len])
    return msg
