"""Typed XFRM objects: what the agent asks the kernel for and what it reads back.

Frozen dataclasses, so desired state can be put in sets and diffed (``reconcile.py``).
Kernel-maintained read-outs (counters, policy index) are ``compare=False``: an SA read back
from the kernel equals the SA that was installed. Key bytes are ``repr=False`` everywhere, so
an SA can be logged.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field

from kube_ipsec.xfrm import constants as c

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Proto(enum.IntEnum):
    ESP = c.IPPROTO_ESP
    AH = c.IPPROTO_AH


class Mode(enum.IntEnum):
    TRANSPORT = c.XFRM_MODE_TRANSPORT
    TUNNEL = c.XFRM_MODE_TUNNEL


class Dir(enum.IntEnum):
    IN = c.XFRM_POLICY_IN
    OUT = c.XFRM_POLICY_OUT
    FWD = c.XFRM_POLICY_FWD


class Action(enum.IntEnum):
    ALLOW = c.XFRM_POLICY_ALLOW
    BLOCK = c.XFRM_POLICY_BLOCK


class AlgKind(enum.Enum):
    AEAD = 'aead'  # XFRMA_ALG_AEAD
    AUTH = 'auth'  # XFRMA_ALG_AUTH_TRUNC


@dataclass(frozen=True)
class Algorithm:
    """A kernel crypto algorithm with its key; ``bits`` is the ICV/truncation length."""

    kind: AlgKind
    name: str
    key: bytes = field(repr=False)
    bits: int

    @classmethod
    def aes_gcm(cls, key: bytes, icv_bits: int = 128) -> Algorithm:
        """ESP AES-GCM (RFC 4106): key material is the AES key + a 4-byte salt."""
        if len(key) not in (20, 36):
            raise ValueError('rfc4106(gcm(aes)) takes 16 or 32 key bytes + 4 salt bytes')
        return cls(AlgKind.AEAD, 'rfc4106(gcm(aes))', key, icv_bits)

    @classmethod
    def chacha20_poly1305(cls, key: bytes) -> Algorithm:
        """ESP ChaCha20-Poly1305 (RFC 7634): a 32-byte key + a 4-byte salt."""
        if len(key) != 36:
            raise ValueError('rfc7539esp(chacha20,poly1305) takes 32 key bytes + 4 salt bytes')
        return cls(AlgKind.AEAD, 'rfc7539esp(chacha20,poly1305)', key, 128)

    @classmethod
    def hmac_sha256(cls, key: bytes, trunc_bits: int = 128) -> Algorithm:
        """AH (or ESP integrity) HMAC-SHA-256, truncated to 128 (RFC 4868) or 96 bits."""
        if trunc_bits not in (96, 128):
            raise ValueError('hmac(sha256) truncation is 96 or 128 bits')
        return cls(AlgKind.AUTH, 'hmac(sha256)', key, trunc_bits)


@dataclass(frozen=True)
class Mark:
    value: int
    mask: int = 0xFFFFFFFF


@dataclass(frozen=True)
class Lifetime:
    """Soft/hard limits; None is infinite. Seconds count from SA installation."""

    soft_bytes: int | None = None
    hard_bytes: int | None = None
    soft_packets: int | None = None
    hard_packets: int | None = None
    soft_seconds: int | None = None
    hard_seconds: int | None = None


@dataclass(frozen=True)
class Encap:
    """UDP encapsulation of ESP (NAT-T, RFC 3948)."""

    sport: int = 4500
    dport: int = 4500


@dataclass(frozen=True)
class Selector:
    """Which packets: ``src``/``dst`` networks, optional protocol and ports (0 = any)."""

    src: Network
    dst: Network
    proto: int = 0
    sport: int = 0
    dport: int = 0

    @classmethod
    def hosts(cls, src: str | Address, dst: str | Address, **kw: int) -> Selector:
        return cls(ipaddress.ip_network(src), ipaddress.ip_network(dst), **kw)


@dataclass(frozen=True)
class SaId:
    """What the kernel keys an SA on (plus its mark)."""

    dst: Address
    spi: int
    proto: Proto = Proto.ESP
    mark: Mark | None = None
    src: Address | None = None

    def __str__(self) -> str:
        return f'{self.proto.name} SA spi 0x{self.spi:08x} to {self.dst}'


@dataclass(frozen=True)
class SaCounters:
    """Read back from the kernel: lifetime use, replay state, errors."""

    bytes: int = 0
    packets: int = 0
    add_time: int = 0
    use_time: int = 0
    replay_window: int = 0
    replay: int = 0
    integrity_failed: int = 0
    oseq: int = 0
    seq: int = 0


@dataclass(frozen=True)
class SA:
    src: Address
    dst: Address
    spi: int
    reqid: int
    proto: Proto = Proto.ESP
    mode: Mode = Mode.TRANSPORT
    aead: Algorithm | None = None
    auth: Algorithm | None = None
    replay_window: int = 32
    esn: bool = False
    mark: Mark | None = None
    encap: Encap | None = None
    lifetime: Lifetime = Lifetime()
    selector: Selector | None = None
    counters: SaCounters | None = field(default=None, compare=False)

    @property
    def id(self) -> SaId:
        return SaId(self.dst, self.spi, self.proto, self.mark, self.src)

    def __str__(self) -> str:
        return str(self.id)


@dataclass(frozen=True)
class Template:
    """A policy's ``tmpl``: which SA must protect the packets (``spi`` 0 = any with reqid)."""

    src: Address
    dst: Address
    reqid: int
    proto: Proto = Proto.ESP
    mode: Mode = Mode.TRANSPORT
    spi: int = 0
    optional: bool = False


@dataclass(frozen=True)
class PolicyId:
    selector: Selector
    dir: Dir
    mark: Mark | None = None

    def __str__(self) -> str:
        return f'policy {self.selector.src} -> {self.selector.dst} dir {self.dir.name.lower()}'


@dataclass(frozen=True)
class Policy:
    selector: Selector
    dir: Dir
    templates: tuple[Template, ...] = ()
    action: Action = Action.ALLOW
    priority: int = c.OWNED_PRIORITY_MIN
    mark: Mark | None = None
    index: int = field(default=0, compare=False)

    @property
    def id(self) -> PolicyId:
        return PolicyId(self.selector, self.dir, self.mark)

    def __str__(self) -> str:
        return str(self.id)


@dataclass(frozen=True)
class Acquire:
    """The kernel wants an SA: a packet matched ``policy`` but no SA for ``template`` exists."""

    template: Template
    selector: Selector
    policy_dir: Dir
    policy_index: int
    seq: int


@dataclass(frozen=True)
class Expire:
    """An SA hit a soft (rekey now) or hard (it is gone) lifetime limit."""

    sa: SaId
    reqid: int
    hard: bool


Event = Acquire | Expire


def owned_reqid(reqid: int) -> bool:
    return c.OWNED_REQID_MIN <= reqid <= c.OWNED_REQID_MAX


def owned_sa(sa: SA) -> bool:
    return owned_reqid(sa.reqid)


def owned_policy(policy: Policy) -> bool:
    if policy.templates:
        return any(owned_reqid(t.reqid) for t in policy.templates)
    return c.OWNED_PRIORITY_MIN <= policy.priority <= c.OWNED_PRIORITY_MAX
