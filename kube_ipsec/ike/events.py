"""Events out of the core: frozen dataclasses, drained with ``Engine.next_event()``.

The shell applies them in order, *before* sending the datagrams produced by the same input
(aioquic's order), so a peer never uses an SA we have not installed yet.

Child SA life, as the kernel sees it (make-before-break, research/ikev2.md §5):

- ``ChildSaEstablished``: install ``inbound`` and ``outbound`` SAs and point the policies at them.
- ``ChildSaRekeyed(old, new, outbound_active)``: install ``new.inbound`` at once. If
  ``outbound_active`` (we initiated the rekey) install ``new.outbound`` and switch the out
  policy's template SPI to it now; otherwise install it but keep the policy on ``old`` until
  ``ChildSaOutboundActivated`` (the peer's DELETE of the old SA).
- ``ChildSaDeleted``: remove the outbound SA now and the inbound SA after a short delay
  (``reason == REKEYED``: packets in flight) or at once.
- In a simultaneous rekey one side may see two ``ChildSaRekeyed`` for the same ``old``: install
  both; only ``outbound_active``/``ChildSaOutboundActivated`` moves the policy, and the
  redundant one is ``ChildSaDeleted`` shortly after.
- After ``IkeSaRekeyed`` the Child SAs keep their SPIs; later events carry the new ``ike_sa``.

IKE SAs are named by ``ike_sa``, a small integer the engine hands out (``Engine.initiate``
returns it); Child SAs by their inbound SPI, which the kernel allocated (``provide_spis``).
Secret keys only travel in ``SaParams.key`` (``repr=False``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from kube_ipsec.ike.config import Identity, Mode
from kube_ipsec.ike.payloads import TrafficSelector

Address = tuple[str, int]


class Reason(enum.StrEnum):
    LOCAL = "local"  # our API call (delete_child / delete_ike)
    PEER = "peer"  # the peer sent a DELETE
    REKEYED = "rekeyed"  # superseded by a rekeyed SA
    REDUNDANT = "redundant"  # lost a rekey collision, or a duplicate IKE SA with the same peer
    IKE_DELETED = "ike_deleted"  # the Child SA went with its IKE SA
    DEAD_PEER = "dead_peer"  # retransmissions exhausted
    AUTH_FAILED = "auth_failed"
    NEGOTIATION_FAILED = "negotiation_failed"
    HALF_OPEN_TIMEOUT = "half_open_timeout"
    REPLACED = "replaced"  # INITIAL_CONTACT from the peer, or our reauthentication
    NOT_FOUND = "not_found"  # the peer no longer knows the SA (CHILD_SA_NOT_FOUND)


@dataclass(frozen=True)
class SaParams:
    """One direction of a Child SA, in the kernel's terms (xfrm_usersa_info + algorithm)."""

    spi: int
    src: str
    dst: str
    algorithm: str  # 'rfc4106(gcm(aes))', 'rfc7539esp(chacha20,poly1305)', 'hmac(sha256)'
    aead: bool  # XFRMA_ALG_AEAD (True) or XFRMA_ALG_AUTH_TRUNC (AH)
    key: bytes = field(repr=False)  # salt included for AEADs
    icv_bits: int = 128  # ICV length, or the truncation length for AH
    encap_sport: int | None = None  # UDP encapsulation (ESPINUDP) when a NAT was detected
    encap_dport: int | None = None


@dataclass(frozen=True)
class ChildSa:
    name: str
    protocol: str  # 'esp' | 'ah'
    mode: Mode
    inbound: SaParams
    outbound: SaParams
    esn: bool
    replay_window: int
    local_ts: tuple[TrafficSelector, ...]
    remote_ts: tuple[TrafficSelector, ...]
    soft_lifetime: float  # seconds: rekey time
    hard_lifetime: float
    proposal: str  # e.g. 'ESP:AES_GCM_16_256/ESN', for status

    @property
    def spi_in(self) -> int:
        return self.inbound.spi

    @property
    def spi_out(self) -> int:
        return self.outbound.spi


class Event:
    """Base of all events; do not subclass outside this module."""


@dataclass(frozen=True)
class IkeSaEstablished(Event):
    ike_sa: int
    initiator: bool
    local_spi: bytes
    remote_spi: bytes
    local_addr: Address
    remote_addr: Address
    local_id: Identity
    remote_id: Identity
    psk_generation: int  # the key generation that authenticated this SA
    proposal: str
    local_nat: bool  # we are behind a NAT (or force_encap)
    remote_nat: bool
    replaces: int | None = None  # reauthentication: the SA this one replaces


@dataclass(frozen=True)
class IkeSaRekeyed(Event):
    """The IKE SA was rekeyed: its Child SAs now belong to ``new_ike_sa``."""

    old_ike_sa: int
    new_ike_sa: int
    local_spi: bytes
    remote_spi: bytes
    proposal: str


@dataclass(frozen=True)
class IkeSaDeleted(Event):
    ike_sa: int
    reason: Reason
    remote_addr: Address
    established: bool  # False: it failed before IKE_AUTH completed


@dataclass(frozen=True)
class AuthenticationFailed(Event):
    ike_sa: int
    remote_addr: Address
    remote_id: Identity | None
    by_peer: bool  # True: the peer rejected us; False: we rejected the peer


@dataclass(frozen=True)
class NegotiationFailed(Event):
    """An exchange failed with an error notify (sent or received), e.g. NO_PROPOSAL_CHOSEN."""

    ike_sa: int
    exchange: str
    notify: str
    by_peer: bool


@dataclass(frozen=True)
class PeerDead(Event):
    ike_sa: int
    remote_addr: Address


@dataclass(frozen=True)
class NatDetected(Event):
    """NAT between us (or forced encapsulation): IKE floated to ``local_addr``/``remote_addr``."""

    ike_sa: int
    local_nat: bool
    remote_nat: bool
    local_addr: Address
    remote_addr: Address


@dataclass(frozen=True)
class ChildSaEstablished(Event):
    ike_sa: int
    child: ChildSa


@dataclass(frozen=True)
class ChildSaRekeyed(Event):
    ike_sa: int
    old: ChildSa
    new: ChildSa
    outbound_active: bool


@dataclass(frozen=True)
class ChildSaOutboundActivated(Event):
    """Switch the outbound policy to ``child`` now (we were the rekey responder)."""

    ike_sa: int
    child: ChildSa


@dataclass(frozen=True)
class ChildSaDeleted(Event):
    ike_sa: int
    child: ChildSa
    reason: Reason


@dataclass(frozen=True)
class ChildSaFailed(Event):
    """A Child SA could not be created or rekeyed; the IKE SA stays."""

    ike_sa: int
    notify: str
    by_peer: bool


@dataclass(frozen=True)
class SpisNeeded(Event):
    """The inbound SPI pool is low: ALLOCSPI ``count`` SPIs and call ``provide_spis``."""

    count: int
