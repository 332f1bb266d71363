"""Local policy of the core: identities, proposals, lifetimes, traffic selectors, timers.

``EngineConfig`` is per local endpoint (one address, ports 500/4500); ``PeerConfig`` per remote
peer, found for responders through ``EngineConfig.peer_lookup(remote_host)`` so the agent can
change its peer set without touching the engine. PSKs are never stored here: the
``psk_provider(local_id, remote_id)`` callback returns the key generations currently valid.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kube_ipsec.ike import proposals
from kube_ipsec.ike.constants import IdType
from kube_ipsec.ike.payloads import TrafficSelector


class Mode(enum.Enum):
    TRANSPORT = "transport"
    TUNNEL = "tunnel"


@dataclass(frozen=True)
class Identity:
    """An IKE identity (§3.5): ``Identity.fqdn('node-a')``, ``Identity.address('10.0.0.1')``."""

    type: IdType
    data: bytes

    @classmethod
    def fqdn(cls, name: str) -> Identity:
        return cls(IdType.FQDN, name.encode("ascii"))

    @classmethod
    def key_id(cls, value: str | bytes) -> Identity:
        return cls(IdType.KEY_ID, value.encode() if isinstance(value, str) else value)

    @classmethod
    def address(cls, address: str) -> Identity:
        ip = ipaddress.ip_address(address)
        return cls(IdType.IPV4_ADDR if ip.version == 4 else IdType.IPV6_ADDR, ip.packed)

    @classmethod
    def parse(cls, text: str) -> Identity:
        """strongSwan's rule: an IP address, else an FQDN."""
        try:
            return cls.address(text)
        except ValueError:
            return cls.fqdn(text)

    def __str__(self) -> str:
        if self.type in (IdType.IPV4_ADDR, IdType.IPV6_ADDR):
            return str(ipaddress.ip_address(self.data))
        if self.type in (IdType.FQDN, IdType.RFC822_ADDR):
            return self.data.decode("ascii", "replace")
        return f"{self.type.name}:{self.data.hex()}"


PskProvider = Callable[[Identity, Identity], Sequence[tuple[int, bytes]]]
"""``(local_id, remote_id) -> [(generation, psk), ...]``: every generation still accepted, the
one to sign with (the tunnel's current generation) first; an empty list fails authentication."""


@dataclass(frozen=True)
class ChildConfig:
    """One Child SA policy: created inside IKE_AUTH and kept by rekeying."""

    name: str = "node"
    mode: Mode = Mode.TRANSPORT
    proposals: tuple[proposals.ChildProposal, ...] = proposals.DEFAULT_CHILD
    local_ts: tuple[TrafficSelector, ...] = ()  # () = dynamic: our own address
    remote_ts: tuple[TrafficSelector, ...] = ()  # () = dynamic: the peer's address
    replay_window: int = 1024
    rekey_time: float = 3600.0  # soft lifetime; 0 = never rekey on our own
    life_time: float = 3960.0  # hard lifetime, for the kernel
    rand_time: float = 360.0  # rekey_time minus up to this much, so peers do not collide


@dataclass(frozen=True)
class PeerConfig:
    remote_host: str
    local_id: Identity
    remote_id: Identity | None = None  # None: any identity the PSK provider knows
    name: str = "peer"
    ike_proposals: tuple[proposals.IkeProposal, ...] = proposals.DEFAULT_IKE
    child: ChildConfig = field(default_factory=ChildConfig)
    ike_rekey_time: float = 14400.0  # 0 = never rekey on our own
    ike_rand_time: float = 1440.0
    dpd_delay: float = 30.0  # probe after this long without an authenticated message; 0 = off
    force_encap: bool = False  # pretend to be behind a NAT (strongSwan encap=yes)
    send_initial_contact: bool = True


@dataclass(frozen=True)
class EngineConfig:
    local_host: str
    psk_provider: PskProvider
    peer_lookup: Callable[[str], PeerConfig | None]
    ike_port: int = 500
    nat_t_port: int = 4500
    retransmit_timeout: float = 4.0
    retransmit_base: float = 1.8
    retransmit_tries: int = 5
    half_open_timeout: float = 30.0
    cookie_threshold: int = 10  # half-open SAs before IKE_SA_INIT must carry a COOKIE
    cookie_secret_lifetime: float = 120.0
    retry_delay: float = 2.0  # base delay after TEMPORARY_FAILURE or a lost rekey collision
    spi_low_water: int = 4
    # DEBUG ONLY, OFF BY DEFAULT: receives SECRET KEYS as text lines in Wireshark's IKEv2
    # decryption-table order, to decrypt captures while debugging interop. Never in production.
    key_log: Callable[[str], None] | None = None
