"""The engine: every IKE SA of one local endpoint, behind one sans-IO interface.

Inputs (each with the caller's clock ``now``): ``receive_datagram``, ``handle_timer``,
``provide_spis`` and the API calls (``initiate``, ``create_child``, ``rekey_child``, ``rekey_ike``,
``delete_child``, ``delete_ike``, ``dpd``, ``reauthenticate``). Outputs:
``datagrams_to_send()``, ``get_timer()``, ``next_event()``. After any input the shell should
drain events first, then send datagrams, then re-arm its timer (aioquic's order).

The engine demultiplexes datagrams by our IKE SPI, strips the non-ESP marker on the NAT-T port,
answers new IKE_SA_INIT requests (statelessly with a COOKIE once ``cookie_threshold`` SAs are
half open; the cookie is an HMAC under a secret that rotates every ``cookie_secret_lifetime``),
and turns every malformed or unexpected datagram into a counted drop
(``stats.dropped[reason]``): nothing a peer sends can raise out of ``receive_datagram``.

No input costs time in proportion to the number of IKE SAs (one agent holds one per peer):
deadlines live in a heap with one live entry per SA, rescheduled only for the SAs an input
touched (``touch``); SPIs resume only the SAs waiting for them; SAs are indexed by peer address
for the duplicate, INITIAL_CONTACT and Child SA owner look-ups.
"""

from __future__ import annotations

import heapq
import hmac
from collections import deque
from collections.abc import Iterable

from kube_ipsec.ike import crypto, events, message
from kube_ipsec.ike import payloads as pl
from kube_ipsec.ike.config import EngineConfig, PeerConfig
from kube_ipsec.ike.constants import NAT_KEEPALIVE, NON_ESP_MARKER, ExchangeType, NotifyType
from kube_ipsec.ike.errors import LocalProtocolError, MalformedMessage, ProtocolError
from kube_ipsec.ike.proposals import SelectedIke
from kube_ipsec.ike.sa import Child, IkeSa, IkeState
from kube_ipsec.ike.stats import IkeSaSnapshot, Stats
from kube_ipsec.ike.tasks.child_create import ChildCreate
from kube_ipsec.ike.tasks.child_delete import ChildDelete
from kube_ipsec.ike.tasks.child_rekey import ChildRekey
from kube_ipsec.ike.tasks.dpd import Dpd
from kube_ipsec.ike.tasks.ike_auth import IkeAuth
from kube_ipsec.ike.tasks.ike_delete import IkeDelete
from kube_ipsec.ike.tasks.ike_init import IkeInit
from kube_ipsec.ike.tasks.ike_rekey import IkeRekey

Address = tuple[str, int]
Datagram = tuple[bytes, Address, Address]  # (data, src, dst)


class Engine:
    def __init__(self, config: EngineConfig, random: crypto.RandomSource) -> None:
        self.config = config
        self.random = random
        self.stats = Stats()
        self._sas: dict[bytes, IkeSa] = {}  # by our SPI
        self._by_id: dict[int, IkeSa] = {}
        self._half_open: dict[tuple[str, bytes], IkeSa] = {}  # (peer host, SPIi)
        self._connecting: set[IkeSa] = set()  # responder SAs still in IKE_SA_INIT/IKE_AUTH
        self._by_host: dict[str, dict[IkeSa, None]] = {}  # by remote address (ordered)
        # timers: a heap of (deadline, seq, sa); an entry is live while _scheduled[sa] has its
        # seq, so a changed deadline just pushes a new entry and the old one is skipped later
        self._timers: list[tuple[float, int, IkeSa]] = []
        self._scheduled: dict[IkeSa, tuple[float, int]] = {}
        self._touched: dict[IkeSa, None] = {}  # deadline may have changed (ordered: determinism)
        self._seq = 0
        self._spi_waiters: dict[IkeSa, None] = {}
        self._next_id = 1
        self._spis: deque[int] = deque()
        self._spis_requested = False
        self._out: list[Datagram] = []
        self._events: deque[events.Event] = deque()
        self._cookie_secrets: list[bytes] = [random(32)]
        self._cookie_version = 0
        self._cookie_rotated_at: float | None = None

    # -- outputs ----------------------------------------------------------------------------

    def datagrams_to_send(self) -> list[Datagram]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> events.Event | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        self._reschedule()
        timers = self._timers
        while timers:
            deadline, seq, sa = timers[0]
            if self._live(seq, sa):
                return deadline
            heapq.heappop(timers)
        return None

    def snapshot(self) -> list[IkeSaSnapshot]:
        return [IkeSaSnapshot.of(sa) for sa in self._by_id.values()]

    # -- inputs -----------------------------------------------------------------------------

    def receive_datagram(self, data: bytes, src: Address, dst: Address, now: float) -> None:
        self.stats.received += 1
        try:
            self._receive(bytes(data), src, dst, now)
            self.stats.accepted += 1
        except MalformedMessage as e:
            self.stats.dropped[e.reason] += 1
        except ProtocolError as e:
            self.stats.dropped[f"protocol_{e.notify.name.lower()}"] += 1
        except Exception:  # a bug here must not take the endpoint down; counted, tested as 0
            self.stats.dropped["internal_error"] += 1

    def handle_timer(self, now: float) -> None:
        """Visit the SAs whose deadline has come, each once, earliest first."""
        self._reschedule()
        timers, visited, again = self._timers, set(), []
        while timers and timers[0][0] <= now:
            _, seq, sa = heapq.heappop(timers)
            if not self._live(seq, sa):
                continue
            del self._scheduled[sa]
            if sa in visited:  # due again after its visit: left for the next call
                again.append(sa)
                continue
            self._touched[sa] = None
            deadline = sa.deadline()  # an early entry (the deadline moved later) only re-arms
            if deadline is not None and deadline <= now:
                visited.add(sa)
                sa.on_timer(now)
            self._reschedule()
        self._touched.update(dict.fromkeys(again))
        self._reschedule()

    def provide_spis(self, spis: Iterable[int], now: float) -> None:
        """Inbound SPIs the kernel allocated (XFRM_MSG_ALLOCSPI); the tasks waiting resume."""
        self._spis.extend(spis)
        self._spis_requested = False
        waiters, self._spi_waiters = self._spi_waiters, {}
        for sa in waiters:
            if sa.state != IkeState.DESTROYED:
                sa.mgr.resume(now)

    def initiate(self, peer: PeerConfig, now: float, replaces: int | None = None) -> int:
        """Start IKE_SA_INIT + IKE_AUTH (+ the Child SA) towards ``peer``; returns ``ike_sa``."""
        sa = IkeSa(self, self._new_id(), peer, True, self.new_ike_spi(), bytes(8),
                   (self.config.local_host, self.config.ike_port),
                   (peer.remote_host, self.config.ike_port), now)
        sa.replaces = replaces
        self._register(sa)
        sa.mgr.queue(IkeInit(sa, True))
        sa.mgr.queue(IkeAuth(sa, True))
        sa.mgr.initiate(now)
        return sa.id

    def create_child(self, ike_sa: int, now: float) -> None:
        """Another Child SA of the peer's policy, e.g. after one failed inside IKE_AUTH."""
        sa = self._sa(ike_sa)
        sa.mgr.queue(ChildCreate(sa, True))
        sa.mgr.initiate(now)

    def rekey_child(self, spi_in: int, now: float) -> None:
        sa, child = self._child(spi_in)
        if not sa.mgr.has_queued(ChildRekey):
            sa.mgr.queue(ChildRekey(sa, True, child))
        sa.mgr.initiate(now)

    def delete_child(self, spi_in: int, now: float) -> None:
        sa, child = self._child(spi_in)
        sa.mgr.queue(ChildDelete(sa, True, child))
        sa.mgr.initiate(now)

    def rekey_ike(self, ike_sa: int, now: float) -> None:
        sa = self._sa(ike_sa)
        if not sa.mgr.has_queued(IkeRekey):
            sa.mgr.queue(IkeRekey(sa, True))
        sa.mgr.initiate(now)

    def delete_ike(self, ike_sa: int, now: float) -> None:
        sa = self._sa(ike_sa)
        if sa.state == IkeState.CONNECTING:
            sa.destroy(events.Reason.LOCAL, now)
        elif not sa.mgr.has_queued(IkeDelete):
            sa.mgr.queue(IkeDelete(sa, True))
            sa.mgr.initiate(now)

    def dpd(self, ike_sa: int, now: float) -> None:
        sa = self._sa(ike_sa)
        if not sa.mgr.has_queued(Dpd):
            sa.mgr.queue(Dpd(sa, True))
        sa.mgr.initiate(now)

    def reauthenticate(self, ike_sa: int, now: float) -> int:
        """Make-before-break: a new IKE SA (and Child SA) first, then delete the old one."""
        old = self._sa(ike_sa)
        for sa in self._by_id.values():
            if sa.replaces == old.id:
                return sa.id  # already under way
        return self.initiate(old.peer, now, replaces=old.id)

    # -- services for IkeSa and tasks -------------------------------------------------------

    def emit(self, event: events.Event) -> None:
        self._events.append(event)

    def send(self, data: bytes, src: Address, dst: Address) -> None:
        if src[1] == self.config.nat_t_port:
            data = NON_ESP_MARKER + data
        self.stats.sent += 1
        self._out.append((data, src, dst))

    def has_spi(self) -> bool:
        return bool(self._spis)

    def take_spi(self) -> int | None:
        spi = self._spis.popleft() if self._spis else None
        if len(self._spis) < self.config.spi_low_water:
            self.want_spis()
        return spi

    def wait_for_spis(self, sa: IkeSa) -> None:
        """A task of ``sa`` needs an inbound SPI: resumed by the next ``provide_spis``."""
        self._spi_waiters[sa] = None
        self.want_spis()

    def want_spis(self) -> None:
        if not self._spis_requested:
            self._spis_requested = True
            self.emit(events.SpisNeeded(2 * self.config.spi_low_water))

    def new_ike_spi(self) -> bytes:
        while True:
            spi = self.random(8)
            if spi != bytes(8) and spi not in self._sas:
                return spi

    def fraction(self) -> float:
        return int.from_bytes(self.random(2), "big") / 65535

    def jitter(self, span: float) -> float:
        return span * self.fraction()

    def retry_delay(self) -> float:
        return self.config.retry_delay * (1 + self.fraction())

    def touch(self, sa: IkeSa) -> None:
        """``sa``'s deadline may have changed: re-read it before the next timer question."""
        self._touched[sa] = None

    def forget(self, sa: IkeSa) -> None:
        self._sas.pop(sa.local_spi, None)
        self._by_id.pop(sa.id, None)
        self._half_open.pop((sa.remote[0], sa.spi_i), None)
        self._unindex(sa)
        self._connecting.discard(sa)
        self._scheduled.pop(sa, None)
        self._touched.pop(sa, None)
        self._spi_waiters.pop(sa, None)

    def spawn_rekeyed(self, old: IkeSa, initiator: bool, spi_i: bytes, spi_r: bytes,
                      selected: SelectedIke, seed: bytes, ni: bytes, nr: bytes,
                      now: float) -> IkeSa:
        """The successor of ``old`` after an IKE rekey: same peer, identities and addresses."""
        sa = IkeSa(self, self._new_id(), old.peer, initiator, spi_i, spi_r, old.local,
                   old.remote, now, state=IkeState.ESTABLISHED, ni=ni, nr=nr,
                   remote_id=old.remote_id, psk_generation=old.psk_generation,
                   local_nat=old.local_nat, remote_nat=old.remote_nat, established_at=now,
                   origin_nonce=old.origin_nonce)
        sa.set_keys(selected, seed)
        sa.schedule_rekey(now)
        self._register(sa)
        return sa

    def deduplicate(self, sa: IkeSa, now: float) -> None:
        """Two IKE SAs with one peer (both sides initiated, or both reauthenticated at once):
        as for rekey collisions, the one whose lineage began with the lowest nonce is redundant
        and its initiator deletes it, so both ends keep the same one. A reauthentication and
        the SA it replaces are not duplicates."""
        for other in self._with_host(sa):
            if (other is sa or not other.announced or other.remote_id != sa.remote_id
                    or sa.replaces == other.id
                    or other.replaces == sa.id
                    or other.state not in (IkeState.ESTABLISHED, IkeState.REKEYING)):
                continue
            redundant = sa if sa.origin_nonce < other.origin_nonce else other
            if redundant.initiator and not redundant.mgr.has_queued(IkeDelete):
                self.stats.failures["duplicate_ike_sa"] += 1
                redundant.mgr.queue(IkeDelete(redundant, True, events.Reason.REDUNDANT))
                if redundant is not sa:  # sa is mid-exchange: its manager starts it next
                    redundant.mgr.initiate(now)

    def initial_contact(self, sa: IkeSa, now: float) -> None:
        """The peer says it lost all state: drop SAs with it that predate this one."""
        for other in self._with_host(sa):
            if (other is not sa and other.remote_id == sa.remote_id
                    and other.established_at is not None
                    and other.established_at <= sa.created_at):
                other.destroy(events.Reason.REPLACED, now)

    def owner_of(self, sa: IkeSa, child: Child) -> IkeSa | None:
        for other in self._with_host(sa):
            if other.children.get(child.spi_in) is child:
                return other
        return None

    def child_by_spi_out(self, sa: IkeSa, spi: int) -> tuple[IkeSa, Child] | None:
        """A Child SA with the peer, wherever an IKE rekey has moved it."""
        for other in [sa, *self._with_host(sa)]:
            if child := other.child_by_spi_out(spi):
                return other, child
        return None

    def has_established_with(self, sa: IkeSa) -> bool:
        return any(o is not sa and o.established_at is not None for o in self._with_host(sa))

    def renamed(self, old: IkeSa, new: IkeSa) -> None:
        """An IKE rekey replaced ``old``: a reauthentication under way retires ``new``."""
        for sa in self._by_id.values():
            if sa.replaces == old.id:
                sa.replaces = new.id

    def retire(self, ike_sa: int, now: float) -> None:
        """The end of a reauthentication: delete the replaced SA."""
        old = self._by_id.get(ike_sa)
        if old is not None and old.state in (IkeState.ESTABLISHED, IkeState.REKEYING):
            old.mgr.queue(IkeDelete(old, True, events.Reason.REPLACED))
            old.mgr.initiate(now)

    # -- internals --------------------------------------------------------------------------

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def _register(self, sa: IkeSa) -> None:
        self._sas[sa.local_spi] = sa
        self._by_id[sa.id] = sa
        self._by_host.setdefault(sa.remote[0], {})[sa] = None
        self._touched[sa] = None

    def _unindex(self, sa: IkeSa) -> None:
        group = self._by_host.get(sa.remote[0])
        if group is not None:
            group.pop(sa, None)
            if not group:
                del self._by_host[sa.remote[0]]

    def _with_host(self, sa: IkeSa) -> list[IkeSa]:
        """The IKE SAs with ``sa``'s peer address (a copy: callers may destroy some)."""
        return list(self._by_host.get(sa.remote[0], ()))

    def _follow(self, sa: IkeSa, remote: Address) -> None:
        """The peer's NAT mapping changed: the SA moves to it, and in the indexes too."""
        host = sa.remote[0]
        if remote[0] != host:
            self._unindex(sa)
            self._by_host.setdefault(remote[0], {})[sa] = None
            if self._half_open.get((host, sa.spi_i)) is sa:
                self._half_open[(remote[0], sa.spi_i)] = self._half_open.pop((host, sa.spi_i))
        sa.remote = remote

    def _live(self, seq: int, sa: IkeSa) -> bool:
        entry = self._scheduled.get(sa)
        return entry is not None and entry[1] == seq

    def _reschedule(self) -> None:
        """Re-read the deadlines of the SAs touched since the last call; O(touched log N)."""
        while self._touched:
            touched, self._touched = self._touched, {}
            for sa in touched:
                if sa.state == IkeState.DESTROYED:
                    continue
                if sa.state != IkeState.CONNECTING:
                    self._connecting.discard(sa)
                deadline = sa.deadline()
                entry = self._scheduled.get(sa)
                if entry is not None and entry[0] == deadline:
                    continue
                if deadline is None:
                    self._scheduled.pop(sa, None)
                    continue
                self._seq += 1
                self._scheduled[sa] = (deadline, self._seq)
                heapq.heappush(self._timers, (deadline, self._seq, sa))
        if len(self._timers) > 2 * len(self._scheduled) + 64:  # drop the skipped entries
            self._timers[:] = [(d, seq, sa) for sa, (d, seq) in self._scheduled.items()]
            heapq.heapify(self._timers)  # in place: handle_timer holds the list

    def _sa(self, ike_sa: int) -> IkeSa:
        sa = self._by_id.get(ike_sa)
        if sa is None:
            raise LocalProtocolError(f"no IKE SA {ike_sa}")
        return sa

    def _child(self, spi_in: int) -> tuple[IkeSa, Child]:
        for sa in self._by_id.values():
            if spi_in in sa.children:
                return sa, sa.children[spi_in]
        raise LocalProtocolError(f"no Child SA with inbound SPI {spi_in:#x}")

    def _receive(self, data: bytes, src: Address, dst: Address, now: float) -> None:
        if dst[1] == self.config.nat_t_port:
            if data == NAT_KEEPALIVE:
                raise MalformedMessage("nat_keepalive")
            if data[:4] != NON_ESP_MARKER:
                raise MalformedMessage("esp_on_ike_socket")
            data = data[4:]
        header = message.parse_header(data)
        if header.exchange == ExchangeType.IKE_SA_INIT and not header.is_response:
            self._init_request(data, header, src, dst, now)
            return
        sa = self._sas.get(header.spi_r if header.from_initiator else header.spi_i)
        if sa is None:
            raise MalformedMessage("unknown_spi")
        if header.from_initiator == sa.initiator:
            raise MalformedMessage("bad_flags")
        if header.exchange == ExchangeType.IKE_SA_INIT:
            if sa.state != IkeState.CONNECTING or sa.mgr.mid_out != 0:
                raise MalformedMessage("unexpected_response")
            msg = message.decode(data, header)
            sa.init_response = data
        else:
            if header.spi_r != sa.spi_r or header.spi_i != sa.spi_i:
                raise MalformedMessage("unknown_spi")
            msg = message.decode(data, header, sa.cipher_in)
            if sa.nat:  # follow the peer's NAT mapping (§2.23)
                sa.local = dst
                self._follow(sa, src)
        sa.last_inbound = now
        self._touched[sa] = None
        if msg.is_response:
            sa.mgr.on_response(msg, now)
        else:
            sa.mgr.on_request(msg, data, now)

    def _init_request(self, data: bytes, header: message.Header, src: Address, dst: Address,
                      now: float) -> None:
        if header.spi_r != bytes(8) or header.message_id != 0:
            raise MalformedMessage("bad_init_request")
        existing = self._half_open.get((src[0], header.spi_i))
        msg = message.decode(data, header)
        if existing is not None:  # a retransmission: answered from the cache
            existing.mgr.on_request(msg, data, now)
            return
        peer = self.config.peer_lookup(src[0])
        if self._half_open_count() >= self.config.cookie_threshold and not self._cookie_ok(
                msg, src, now):
            self.stats.cookies_sent += 1
            self._stateless_reply(header, src, dst, NotifyType.COOKIE,
                                  self._cookie(msg, src, now, self._cookie_version))
            return
        if peer is None:
            self.stats.failures["no_peer_config"] += 1
            self._stateless_reply(header, src, dst, NotifyType.NO_PROPOSAL_CHOSEN, b"")
            return
        sa = IkeSa(self, self._new_id(), peer, False, header.spi_i, self.new_ike_spi(), dst,
                   src, now)
        self._register(sa)
        self._half_open[(src[0], header.spi_i)] = sa
        self._connecting.add(sa)
        sa.mgr.on_request(msg, data, now)

    def _half_open_count(self) -> int:
        self._reschedule()  # drops the SAs that left CONNECTING from _connecting
        return len(self._connecting)

    def _stateless_reply(self, header: message.Header, src: Address, dst: Address,
                         notify: NotifyType, data: bytes) -> None:
        reply = message.Message(ExchangeType.IKE_SA_INIT, True, False, 0, header.spi_i,
                                bytes(8), [pl.Notify(notify, data=data)])
        self.send(message.encode(reply), dst, src)

    def _rotate_cookie_secret(self, now: float) -> None:
        if self._cookie_rotated_at is None:
            self._cookie_rotated_at = now
        elif now - self._cookie_rotated_at >= self.config.cookie_secret_lifetime:
            self._cookie_rotated_at = now
            self._cookie_version = (self._cookie_version + 1) % 256
            self._cookie_secrets = [self.random(32), self._cookie_secrets[0]]

    def _cookie(self, msg: message.Message, src: Address, now: float, version: int) -> bytes:
        """<version> | HMAC(secret, SPIi | Ni | IPi) (§2.6), computed without any state."""
        self._rotate_cookie_secret(now)
        age = (self._cookie_version - version) % 256
        if age >= len(self._cookie_secrets):
            return b""
        nonce = msg.get(pl.Nonce)
        material = msg.spi_i + (nonce.data if nonce else b"") + src[0].encode()
        return bytes([version]) + crypto.cookie_mac(self._cookie_secrets[age], material)

    def _cookie_ok(self, msg: message.Message, src: Address, now: float) -> bool:
        first = msg.payloads[0] if msg.payloads else None
        if not isinstance(first, pl.Notify) or first.type != NotifyType.COOKIE or not first.data:
            return False
        expected = self._cookie(msg, src, now, first.data[0])
        return bool(expected) and hmac.compare_digest(expected, first.data)
