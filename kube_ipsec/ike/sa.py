"""One IKE SA: its identity, keys, Child SAs and timers; exchanges run in its ``TaskManager``.

States follow charon's names. ``CONNECTING`` covers IKE_SA_INIT and IKE_AUTH; ``REKEYED`` means
a successor IKE SA took the Child SAs and this one only waits for its DELETE.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kube_ipsec.ike import crypto, events
from kube_ipsec.ike import payloads as pl
from kube_ipsec.ike.config import Identity, Mode, PeerConfig
from kube_ipsec.ike.constants import EncrId, NotifyType, ProtocolId
from kube_ipsec.ike.manager import TaskManager
from kube_ipsec.ike.proposals import KERNEL_AEAD, KERNEL_AUTH, SelectedChild, SelectedIke

if TYPE_CHECKING:
    from kube_ipsec.ike.engine import Engine

Address = tuple[str, int]


class IkeState(enum.Enum):
    CONNECTING = "connecting"
    ESTABLISHED = "established"
    REKEYING = "rekeying"
    REKEYED = "rekeyed"
    DELETING = "deleting"
    DESTROYED = "destroyed"


class ChildState(enum.Enum):
    INSTALLED = "installed"
    REKEYING = "rekeying"
    REKEYED = "rekeyed"
    DELETING = "deleting"


@dataclass(eq=False)
class Child:
    """Our bookkeeping of one Child SA; ``params`` is what the shell was told."""

    params: events.ChildSa
    protocol: ProtocolId
    state: ChildState = ChildState.INSTALLED
    rekey_at: float | None = None
    established_at: float = 0.0
    successor: Child | None = None  # rekeyed by the peer: outbound waits for its DELETE
    announced: bool = True  # False for a collision loser we never reported

    @property
    def spi_in(self) -> int:
        return self.params.inbound.spi

    @property
    def spi_out(self) -> int:
        return self.params.outbound.spi


@dataclass(eq=False)
class IkeSa:
    engine: Engine
    id: int
    peer: PeerConfig
    initiator: bool  # original initiator (the I flag is ours)
    spi_i: bytes
    spi_r: bytes
    local: Address
    remote: Address
    created_at: float
    state: IkeState = IkeState.CONNECTING
    selected: SelectedIke | None = None
    keys: crypto.IkeKeys | None = field(default=None, repr=False)
    cipher_in: crypto.SkCipher | None = field(default=None, repr=False)
    cipher_out: crypto.SkCipher | None = field(default=None, repr=False)
    ni: bytes = b""
    nr: bytes = b""
    init_request: bytes = b""
    init_response: bytes = b""
    remote_id: Identity | None = None
    psk_generation: int = 0
    local_nat: bool = False
    remote_nat: bool = False
    children: dict[int, Child] = field(default_factory=dict)
    established_at: float | None = None
    last_inbound: float = 0.0
    rekey_at: float | None = None
    rekeyed_at: float | None = None  # REKEYED: when the successor took over
    successor: IkeSa | None = None  # REKEYED: the IKE SA that holds our Child SAs now
    replaces: int | None = None
    origin_nonce: bytes = b""  # min(Ni, Nr) of the IKE_SA_INIT that began this SA's lineage
    announced: bool = False  # IkeSaEstablished/IkeSaRekeyed was emitted for it
    delete_reason: events.Reason = events.Reason.LOCAL
    mgr: TaskManager = field(init=False)

    def __post_init__(self) -> None:
        self.mgr = TaskManager(self)
        self.last_inbound = self.created_at

    # -- identity ---------------------------------------------------------------------------

    @property
    def local_spi(self) -> bytes:
        return self.spi_i if self.initiator else self.spi_r

    @property
    def remote_spi(self) -> bytes:
        return self.spi_r if self.initiator else self.spi_i

    @property
    def local_id(self) -> Identity:
        return self.peer.local_id

    @property
    def nat(self) -> bool:
        return self.local_nat or self.remote_nat

    # -- keys -------------------------------------------------------------------------------

    def set_keys(self, selected: SelectedIke, seed: bytes) -> None:
        size = crypto.encr_key_size(selected.encr, selected.key_bits)
        self.selected = selected
        self.keys = crypto.derive_ike_keys(selected.prf, seed, self.ni, self.nr, self.spi_i,
                                           self.spi_r, size)
        ei = crypto.SkCipher(selected.encr, self.keys.sk_ei)
        er = crypto.SkCipher(selected.encr, self.keys.sk_er)
        self.cipher_out, self.cipher_in = (ei, er) if self.initiator else (er, ei)
        key_log = self.engine.config.key_log
        if key_log is not None:  # debug only; see EngineConfig.key_log
            key_log(f"{self.spi_i.hex()},{self.spi_r.hex()},{self.keys.sk_ei.hex()},"
                    f"{self.keys.sk_er.hex()},{selected},,,")

    def prf(self, key: bytes, data: bytes) -> bytes:
        assert self.selected is not None
        return crypto.prf(self.selected.prf, key, data)

    # -- NAT detection (§2.23) --------------------------------------------------------------

    def natd_payloads(self, spi_r: bytes, local: Address, remote: Address) -> list[pl.Payload]:
        src = crypto.natd_hash(self.spi_i, spi_r, _packed(local[0]), local[1])
        if self.peer.force_encap:  # like strongSwan's encap=yes: the peer sees "a NAT"
            src = self.engine.random(len(src))
        dst = crypto.natd_hash(self.spi_i, spi_r, _packed(remote[0]), remote[1])
        return [pl.Notify(NotifyType.NAT_DETECTION_SOURCE_IP, data=src),
                pl.Notify(NotifyType.NAT_DETECTION_DESTINATION_IP, data=dst)]

    def check_natd(self, msg_payloads: list[pl.Payload], src: Address, dst: Address,
                   spi_r: bytes) -> None:
        """Compare the peer's NATD hashes with the addresses the datagram really had."""
        srcs = [p.data for p in msg_payloads if isinstance(p, pl.Notify)
                and p.type == NotifyType.NAT_DETECTION_SOURCE_IP]
        dsts = [p.data for p in msg_payloads if isinstance(p, pl.Notify)
                and p.type == NotifyType.NAT_DETECTION_DESTINATION_IP]
        if srcs and dsts:
            want_src = crypto.natd_hash(self.spi_i, spi_r, _packed(src[0]), src[1])
            want_dst = crypto.natd_hash(self.spi_i, spi_r, _packed(dst[0]), dst[1])
            self.remote_nat = want_src not in srcs
            self.local_nat = want_dst not in dsts
        if self.peer.force_encap and srcs:
            self.local_nat = True

    def float_ports(self) -> None:
        """Move IKE to the NAT-T port (initiator, before IKE_AUTH)."""
        port = self.engine.config.nat_t_port
        self.local = (self.local[0], port)
        self.remote = (self.remote[0], port)

    # -- life -------------------------------------------------------------------------------

    def establish(self, now: float) -> None:
        assert self.remote_id is not None and self.selected is not None
        self.state = IkeState.ESTABLISHED
        self.established_at = now
        self.announced = True
        self.engine.touch(self)
        self.schedule_rekey(now)
        if self.nat:
            self.engine.emit(events.NatDetected(self.id, self.local_nat, self.remote_nat,
                                                self.local, self.remote))
        self.engine.emit(events.IkeSaEstablished(
            self.id, self.initiator, self.local_spi, self.remote_spi, self.local, self.remote,
            self.local_id, self.remote_id, self.psk_generation, str(self.selected),
            self.local_nat, self.remote_nat, self.replaces))
        self.engine.stats.established["ike"] += 1
        self.origin_nonce = min(self.ni, self.nr)
        self.engine.deduplicate(self, now)

    def schedule_rekey(self, now: float) -> None:
        self.engine.touch(self)
        if self.peer.ike_rekey_time > 0:
            self.rekey_at = now + self.peer.ike_rekey_time - self.engine.jitter(
                self.peer.ike_rand_time)

    def deadline(self) -> float | None:
        """When ``on_timer`` has work. The engine re-reads it only for SAs an input touched
        (``engine.touch``): whatever changes a term below must touch this SA."""
        times = [t for t in (self.mgr.deadline(), self.rekey_at) if t is not None]
        times += [c.rekey_at for c in self.children.values() if c.rekey_at is not None]
        if self.state == IkeState.CONNECTING and not self.initiator:
            times.append(self.created_at + self.engine.config.half_open_timeout)
        if self.state == IkeState.ESTABLISHED and self.peer.dpd_delay > 0:
            times.append(self.last_inbound + self.peer.dpd_delay)
        if self.state == IkeState.REKEYED and self.rekeyed_at is not None:
            times.append(self.rekeyed_at + self.engine.config.half_open_timeout)
        orphan = self._orphan_since()
        if orphan is not None:
            times.append(orphan + self.engine.config.half_open_timeout)
        return min(times) if times else None

    def _orphan_since(self) -> float | None:
        """A rekey collision made this SA but nobody adopted it (its delete got lost)."""
        if self.state == IkeState.ESTABLISHED and not self.announced:
            return self.established_at
        return None

    def accepts_child_requests(self) -> bool:
        """False while the IKE SA is being rekeyed or deleted, or is a collision's new SA not
        yet holding the Child SAs: TEMPORARY_FAILURE."""
        active = self.mgr.active
        return self.state == IkeState.ESTABLISHED and self.announced and not (
            active is not None and active.blocks_child_requests)

    def on_timer(self, now: float) -> None:
        from kube_ipsec.ike.tasks import child_rekey, dpd, ike_rekey

        self.engine.touch(self)
        if self.state == IkeState.CONNECTING and not self.initiator and (
                now >= self.created_at + self.engine.config.half_open_timeout):
            self.engine.stats.failures["half_open_timeout"] += 1
            self.destroy(events.Reason.HALF_OPEN_TIMEOUT, now)
            return
        if self.state == IkeState.REKEYED and self.rekeyed_at is not None and (
                now >= self.rekeyed_at + self.engine.config.half_open_timeout):
            self.destroy(events.Reason.REKEYED, now)  # the peer never sent its DELETE
            return
        orphan = self._orphan_since()
        if orphan is not None and now >= orphan + self.engine.config.half_open_timeout:
            self.destroy(events.Reason.REDUNDANT, now)
            return
        if self.rekey_at is not None and now >= self.rekey_at:
            self.rekey_at = None
            if self.state == IkeState.ESTABLISHED:
                self.mgr.queue(ike_rekey.IkeRekey(self, True))
        for child in list(self.children.values()):
            if child.rekey_at is not None and now >= child.rekey_at:
                child.rekey_at = None
                if child.state == ChildState.INSTALLED:
                    self.mgr.queue(child_rekey.ChildRekey(self, True, child))
        if (self.state == IkeState.ESTABLISHED and self.peer.dpd_delay > 0
                and now >= self.last_inbound + self.peer.dpd_delay):
            if self.mgr.idle():  # a busy SA is probed by its own retransmissions already
                self.mgr.queue(dpd.Dpd(self, True))
            self.last_inbound = now  # one probe per period
        self.mgr.on_timer(now)

    def destroy(self, reason: events.Reason, now: float) -> None:
        """Forget the SA; every Child SA still owned is reported deleted first."""
        if self.state == IkeState.DESTROYED:
            return
        if self.successor is not None and self.successor.state != IkeState.DESTROYED:
            self.mgr.migrate(self.successor, now, active=True)
        for child in list(self.children.values()):
            self.remove_child(child, events.Reason.IKE_DELETED)
        was_established = self.established_at is not None
        self.state = IkeState.DESTROYED
        # the shell knows SAs it initiated or saw established; a responder that died in
        # IKE_SA_INIT (INVALID_KE, half-open timeout) is only counted
        if self.announced or (not was_established and (self.initiator or self.mgr.mid_in > 1)):
            self.engine.emit(events.IkeSaDeleted(self.id, reason, self.remote, was_established))
        self.engine.forget(self)

    # -- Child SAs --------------------------------------------------------------------------

    def child_by_spi_out(self, spi: int) -> Child | None:
        for c in self.children.values():
            if c.spi_out == spi:
                return c
        return None

    def owner_of(self, child: Child) -> IkeSa:
        """The IKE SA that holds ``child`` now: an IKE rekey may have moved it."""
        return self.engine.owner_of(self, child) or self

    def remove_child(self, child: Child, reason: events.Reason) -> None:
        self.engine.touch(self)
        if self.children.pop(child.spi_in, None) is not None and child.announced:
            self.engine.emit(events.ChildSaDeleted(self.id, child.params, reason))

    def make_child(self, selected: SelectedChild, exchange_initiator: bool, spi_in: int,
                   spi_out: int, keymat: tuple[bytes, bytes, bytes, bytes], mode: Mode,
                   tsi: tuple[pl.TrafficSelector, ...], tsr: tuple[pl.TrafficSelector, ...],
                   now: float) -> Child:
        ei, ai, er, ar = keymat
        key_out, key_in = (ei + ai, er + ar) if exchange_initiator else (er + ar, ei + ai)
        local_ts, remote_ts = (tsi, tsr) if exchange_initiator else (tsr, tsi)
        if selected.encr is not None:
            algorithm, aead, icv = KERNEL_AEAD[EncrId(selected.encr)], True, 128
        else:
            assert selected.integ is not None
            algorithm, _, icv = KERNEL_AUTH[selected.integ]
            aead = False
        encap = self.nat
        cfg = self.peer.child

        def params(spi: int, src: Address, dst: Address, key: bytes) -> events.SaParams:
            return events.SaParams(spi, src[0], dst[0], algorithm, aead, key, icv,
                                   src[1] if encap else None, dst[1] if encap else None)

        child_sa = events.ChildSa(
            cfg.name, "esp" if selected.protocol == ProtocolId.ESP else "ah", mode,
            params(spi_in, self.remote, self.local, key_in),
            params(spi_out, self.local, self.remote, key_out), selected.esn, cfg.replay_window,
            local_ts, remote_ts, cfg.rekey_time, cfg.life_time, str(selected))
        child = Child(child_sa, selected.protocol, established_at=now)
        if cfg.rekey_time > 0:
            child.rekey_at = now + cfg.rekey_time - self.engine.jitter(cfg.rand_time)
        return child

    def add_child(self, child: Child) -> None:
        self.children[child.spi_in] = child
        self.engine.touch(self)
        self.engine.stats.established["child"] += 1


def _packed(host: str) -> bytes:
    return ipaddress.ip_address(host).packed
