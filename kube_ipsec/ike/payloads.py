"""IKEv2 payloads (RFC 7296 §3.2-§3.13) as dataclasses, with strict parse and serialise.

Every payload class carries its ``payload_type``; ID and TS payloads come as initiator and
responder subclasses because the type number is the only difference. ``parse_chain`` walks the
Next Payload chain with bounds checks and raises ``MalformedMessage(reason)`` on any violation;
``serialize_chain`` is its inverse. The SK payload is framed in ``message.py``.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from typing import ClassVar, TypeVar

from kube_ipsec.ike.constants import (
    ATTR_KEY_LENGTH,
    ATTR_TV_FLAG,
    AuthMethod,
    NotifyType,
    PayloadType,
    ProtocolId,
    TsType,
)
from kube_ipsec.ike.errors import MalformedMessage

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
PayloadT = TypeVar("PayloadT", bound="Payload")


@dataclass(frozen=True)
class Transform:
    type: int
    id: int
    key_length: int | None = None
    unknown_attributes: bool = False  # RFC 7296 §3.3.6: such a transform is not selectable


@dataclass(frozen=True)
class Proposal:
    number: int
    protocol: int
    spi: bytes
    transforms: tuple[Transform, ...]


@dataclass
class Payload:
    payload_type: ClassVar[PayloadType] = PayloadType.NONE
    critical: bool = field(default=False, kw_only=True)


@dataclass
class SA(Payload):
    payload_type = PayloadType.SA
    proposals: list[Proposal] = field(default_factory=list)


@dataclass
class KE(Payload):
    payload_type = PayloadType.KE
    group: int = 0
    data: bytes = b""


@dataclass
class ID(Payload):
    id_type: int = 0
    data: bytes = b""

    @property
    def body(self) -> bytes:
        """The bytes that are signed in AUTH (§2.15): type, 3 reserved, data."""
        return bytes([self.id_type, 0, 0, 0]) + self.data


@dataclass
class IDi(ID):
    payload_type = PayloadType.IDi


@dataclass
class IDr(ID):
    payload_type = PayloadType.IDr


@dataclass
class Auth(Payload):
    payload_type = PayloadType.AUTH
    method: int = AuthMethod.PSK
    data: bytes = b""


@dataclass
class Nonce(Payload):
    payload_type = PayloadType.NONCE
    data: bytes = b""


@dataclass
class Notify(Payload):
    payload_type = PayloadType.NOTIFY
    type: int = 0
    protocol: int = 0
    spi: bytes = b""
    data: bytes = b""


@dataclass
class Delete(Payload):
    payload_type = PayloadType.DELETE
    protocol: int = ProtocolId.IKE
    spis: list[bytes] = field(default_factory=list)


@dataclass
class Vendor(Payload):
    payload_type = PayloadType.VENDOR
    data: bytes = b""


@dataclass(frozen=True)
class TrafficSelector:
    """An address range with IP protocol and port range (§3.13.1)."""

    start: IPAddress
    end: IPAddress
    protocol: int = 0
    start_port: int = 0
    end_port: int = 65535

    @classmethod
    def from_network(cls, network: str, protocol: int = 0) -> TrafficSelector:
        net = ipaddress.ip_network(network, strict=False)
        return cls(net[0], net[-1], protocol)

    @classmethod
    def host(cls, address: str) -> TrafficSelector:
        ip = ipaddress.ip_address(address)
        return cls(ip, ip)

    @property
    def ts_type(self) -> TsType:
        return TsType.IPV4_ADDR_RANGE if self.start.version == 4 else TsType.IPV6_ADDR_RANGE

    def __str__(self) -> str:
        ports = "" if (self.start_port, self.end_port) == (0, 65535) else (
            f"[{self.start_port}-{self.end_port}]")
        proto = f"/{self.protocol}" if self.protocol else ""
        return f"{self.start}-{self.end}{proto}{ports}"


@dataclass
class TS(Payload):
    selectors: list[TrafficSelector] = field(default_factory=list)


@dataclass
class TSi(TS):
    payload_type = PayloadType.TSi


@dataclass
class TSr(TS):
    payload_type = PayloadType.TSr


@dataclass
class Unknown(Payload):
    """A payload we do not implement (CERT, CP, EAP, ...); kept so critical ones can be refused."""

    type: int = 0
    data: bytes = b""


# -- parsing -----------------------------------------------------------------------------------


def _need(data: bytes, length: int, reason: str) -> None:
    if len(data) < length:
        raise MalformedMessage(reason)


def _parse_transform(data: bytes) -> Transform:
    _need(data, 4, "short_transform")
    ttype, _, tid = struct.unpack_from("!BBH", data, 0)
    key_length = None
    unknown = False
    offset = 4
    while offset < len(data):
        _need(data[offset:], 4, "short_attribute")
        atype, avalue = struct.unpack_from("!HH", data, offset)
        if atype & ATTR_TV_FLAG:
            offset += 4
            if atype & ~ATTR_TV_FLAG == ATTR_KEY_LENGTH:
                key_length = avalue
            else:
                unknown = True
        else:  # TLV: avalue is the length
            _need(data[offset + 4 :], avalue, "short_attribute")
            offset += 4 + avalue
            unknown = True
    return Transform(ttype, tid, key_length, unknown)


def _parse_proposal(data: bytes) -> Proposal:
    _need(data, 8, "short_proposal")
    number, protocol, spi_size, count = struct.unpack_from("!BBBB", data, 4)
    offset = 8
    _need(data, offset + spi_size, "short_proposal")
    spi = bytes(data[offset : offset + spi_size])
    offset += spi_size
    transforms = []
    last = 3
    while last == 3:
        _need(data[offset:], 8, "short_transform")
        last, _, length = struct.unpack_from("!BBH", data, offset)
        if last not in (0, 3) or length < 8 or offset + length > len(data):
            raise MalformedMessage("bad_transform_length")
        transforms.append(_parse_transform(data[offset + 4 : offset + length]))
        offset += length
    if offset != len(data) or len(transforms) != count:
        raise MalformedMessage("bad_proposal_length")
    return Proposal(number, protocol, spi, tuple(transforms))


def _parse_sa(body: bytes) -> SA:
    proposals = []
    offset = 0
    last = 2
    while last == 2:
        _need(body[offset:], 8, "short_proposal")
        last, _, length = struct.unpack_from("!BBH", body, offset)
        if last not in (0, 2) or length < 8 or offset + length > len(body):
            raise MalformedMessage("bad_proposal_length")
        proposals.append(_parse_proposal(body[offset : offset + length]))
        offset += length
    if offset != len(body):
        raise MalformedMessage("bad_sa_length")
    return SA(proposals)


def _parse_ts(body: bytes, cls: type[TS]) -> TS:
    _need(body, 4, "short_ts")
    count = body[0]
    offset = 4
    selectors = []
    for _ in range(count):
        _need(body[offset:], 8, "short_ts")
        ts_type, proto, length, sport, eport = struct.unpack_from("!BBHHH", body, offset)
        size = {TsType.IPV4_ADDR_RANGE: 4, TsType.IPV6_ADDR_RANGE: 16}.get(ts_type)
        if size is None:
            raise MalformedMessage("unknown_ts_type")
        if length != 8 + 2 * size or offset + length > len(body):
            raise MalformedMessage("bad_ts_length")
        start = ipaddress.ip_address(body[offset + 8 : offset + 8 + size])
        end = ipaddress.ip_address(body[offset + 8 + size : offset + 8 + 2 * size])
        selectors.append(TrafficSelector(start, end, proto, sport, eport))
        offset += length
    if offset != len(body) or count == 0:
        raise MalformedMessage("bad_ts_length")
    return cls(selectors)


def _parse_body(ptype: int, critical: bool, body: bytes) -> Payload:
    if ptype == PayloadType.SA:
        return _parse_sa(body)
    if ptype == PayloadType.KE:
        _need(body, 4, "short_ke")
        return KE(struct.unpack_from("!H", body)[0], bytes(body[4:]))
    if ptype in (PayloadType.IDi, PayloadType.IDr):
        _need(body, 4, "short_id")
        cls: type[ID] = IDi if ptype == PayloadType.IDi else IDr
        return cls(body[0], bytes(body[4:]))
    if ptype == PayloadType.AUTH:
        _need(body, 4, "short_auth")
        return Auth(body[0], bytes(body[4:]))
    if ptype == PayloadType.NONCE:
        return Nonce(bytes(body))
    if ptype == PayloadType.NOTIFY:
        _need(body, 4, "short_notify")
        protocol, spi_size, ntype = struct.unpack_from("!BBH", body)
        _need(body, 4 + spi_size, "short_notify")
        return Notify(ntype, protocol, bytes(body[4 : 4 + spi_size]), bytes(body[4 + spi_size :]))
    if ptype == PayloadType.DELETE:
        _need(body, 4, "short_delete")
        protocol, spi_size, count = struct.unpack_from("!BBH", body)
        if len(body) != 4 + spi_size * count:
            raise MalformedMessage("bad_delete_length")
        spis = [bytes(body[4 + i * spi_size : 4 + (i + 1) * spi_size]) for i in range(count)]
        return Delete(protocol, spis)
    if ptype == PayloadType.VENDOR:
        return Vendor(bytes(body))
    if ptype in (PayloadType.TSi, PayloadType.TSr):
        return _parse_ts(body, TSi if ptype == PayloadType.TSi else TSr)
    return Unknown(ptype, bytes(body), critical=critical)


def parse_chain(first: int, data: bytes) -> list[Payload]:
    """Parse a chain of payloads; the SK payload (46) must be handled by the caller."""
    payloads: list[Payload] = []
    offset = 0
    ptype = first
    while ptype != PayloadType.NONE:
        if ptype == PayloadType.SK:
            raise MalformedMessage("unexpected_sk")
        _need(data[offset:], 4, "truncated_payload")
        next_type, flags, length = struct.unpack_from("!BBH", data, offset)
        if length < 4 or offset + length > len(data):
            raise MalformedMessage("bad_payload_length")
        body = data[offset + 4 : offset + length]
        payloads.append(_parse_body(ptype, bool(flags & 0x80), body))
        offset += length
        ptype = next_type
        if len(payloads) > 64:
            raise MalformedMessage("too_many_payloads")
    if offset != len(data):
        raise MalformedMessage("trailing_bytes")
    return payloads


# -- serialising -------------------------------------------------------------------------------


def _transform_bytes(t: Transform, last: bool) -> bytes:
    attrs = b""
    if t.key_length is not None:
        attrs = struct.pack("!HH", ATTR_TV_FLAG | ATTR_KEY_LENGTH, t.key_length)
    return struct.pack("!BBHBBH", 0 if last else 3, 0, 8 + len(attrs), t.type, 0, t.id) + attrs


def _proposal_bytes(p: Proposal, last: bool) -> bytes:
    body = b"".join(
        _transform_bytes(t, i == len(p.transforms) - 1) for i, t in enumerate(p.transforms))
    head = struct.pack("!BBHBBBB", 0 if last else 2, 0, 8 + len(p.spi) + len(body), p.number,
                       p.protocol, len(p.spi), len(p.transforms))
    return head + p.spi + body


def _ts_bytes(selectors: list[TrafficSelector]) -> bytes:
    out = bytes([len(selectors), 0, 0, 0])
    for ts in selectors:
        size = 4 if ts.start.version == 4 else 16
        out += struct.pack("!BBHHH", ts.ts_type, ts.protocol, 8 + 2 * size, ts.start_port,
                           ts.end_port) + ts.start.packed + ts.end.packed
    return out


def body_bytes(p: Payload) -> bytes:
    if isinstance(p, SA):
        return b"".join(_proposal_bytes(x, i == len(p.proposals) - 1)
                        for i, x in enumerate(p.proposals))
    if isinstance(p, KE):
        return struct.pack("!HH", p.group, 0) + p.data
    if isinstance(p, ID):
        return p.body
    if isinstance(p, Auth):
        return bytes([p.method, 0, 0, 0]) + p.data
    if isinstance(p, Nonce | Vendor):
        return p.data
    if isinstance(p, Notify):
        return struct.pack("!BBH", p.protocol, len(p.spi), p.type) + p.spi + p.data
    if isinstance(p, Delete):
        size = len(p.spis[0]) if p.spis else 0
        return struct.pack("!BBH", p.protocol, size, len(p.spis)) + b"".join(p.spis)
    if isinstance(p, TS):
        return _ts_bytes(p.selectors)
    if isinstance(p, Unknown):
        return p.data
    raise TypeError(type(p).__name__)


def type_of(p: Payload) -> int:
    return p.type if isinstance(p, Unknown) else p.payload_type


def serialize_chain(payloads: list[Payload], next_after: int = PayloadType.NONE) -> bytes:
    """Serialise payloads; the last one's Next Payload is ``next_after``."""
    out = bytearray()
    for i, p in enumerate(payloads):
        nxt = type_of(payloads[i + 1]) if i + 1 < len(payloads) else next_after
        body = body_bytes(p)
        out += struct.pack("!BBH", nxt, 0x80 if p.critical else 0, 4 + len(body)) + body
    return bytes(out)


def notify_type_name(value: int) -> str:
    try:
        return NotifyType(value).name
    except ValueError:
        return f"NOTIFY_{value}"
