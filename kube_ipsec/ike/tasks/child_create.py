"""A new Child SA (§1.3): inside IKE_AUTH, or as its own CREATE_CHILD_SA exchange.

# CREATE_CHILD_SA { [N(USE_TRANSPORT_MODE),] SA, Ni, [KEi,] TSi, TSr }  -->
#                 <--  { [N(USE_TRANSPORT_MODE),] SA, Nr, [KEr,] TSi, TSr }

Inside IKE_AUTH there is no nonce or KE: the keys come from the IKE_SA_INIT nonces. The
responder narrows the traffic selectors to its policy (§2.9) and answers TS_UNACCEPTABLE when
nothing is left. ``ChildRekey`` reuses this task with ``announce=False``.
"""

from __future__ import annotations

import ipaddress

from kube_ipsec.ike import crypto, events
from kube_ipsec.ike import payloads as pl
from kube_ipsec.ike.config import Mode
from kube_ipsec.ike.constants import DhGroup, ExchangeType, NotifyType
from kube_ipsec.ike.errors import ProtocolError
from kube_ipsec.ike.message import Message
from kube_ipsec.ike.proposals import KERNEL_AUTH, SelectedChild, select_child
from kube_ipsec.ike.sa import Child, IkeSa, IkeState
from kube_ipsec.ike.tasks.base import NeedSpi, Obsolete, Status, Task
from kube_ipsec.ike.tasks.ike_init import NONCE_SIZE, check_nonce

TS = tuple[pl.TrafficSelector, ...]


def narrow(proposed: list[pl.TrafficSelector], allowed: TS) -> TS:
    """Intersections of each proposed selector with each allowed one."""
    out = []
    for p in proposed:
        for a in allowed:
            if p.start.version != a.start.version:
                continue
            if p.protocol and a.protocol and p.protocol != a.protocol:
                continue
            start, end = max(int(p.start), int(a.start)), min(int(p.end), int(a.end))
            sport, eport = max(p.start_port, a.start_port), min(p.end_port, a.end_port)
            if start <= end and sport <= eport:
                cls = type(p.start)
                out.append(pl.TrafficSelector(cls(start), cls(end), p.protocol or a.protocol,
                                              sport, eport))
    return tuple(dict.fromkeys(out))


def within(inner: list[pl.TrafficSelector], outer: TS) -> bool:
    return bool(inner) and all(narrow([i], outer) == (i,) for i in inner)


def _host(address: str) -> TS:
    return (pl.TrafficSelector.host(str(ipaddress.ip_address(address))),)


def _keymat_sizes(selected: SelectedChild) -> tuple[int, int]:
    if selected.encr is not None:
        return crypto.encr_key_size(selected.encr, selected.key_bits), 0
    assert selected.integ is not None
    return 0, KERNEL_AUTH[selected.integ][1]


class ChildCreate(Task):
    exchange = ExchangeType.CREATE_CHILD_SA
    priority = 4

    def __init__(self, sa: IkeSa, initiator: bool, in_auth: bool = False,
                 announce: bool = True, ts: tuple[TS, TS] | None = None) -> None:
        super().__init__(sa, initiator)
        self.in_auth = in_auth
        self.announce = announce
        self.cfg = sa.peer.child
        self.ts = ts  # (local, remote) to propose; None: from the configuration
        self.spi_in: int | None = None
        self.ke: crypto.KeyExchange | None = None
        self.group: DhGroup | None = None
        self.ni = b""
        self.nr = b""
        self.selected: SelectedChild | None = None
        self.mode = self.cfg.mode
        self.tsi: TS = ()
        self.tsr: TS = ()
        self.child: Child | None = None
        self.failure: str | None = None

    def _local_ts(self) -> TS:
        return self.cfg.local_ts or _host(self.sa.local[0])

    def _remote_ts(self) -> TS:
        return self.cfg.remote_ts or _host(self.sa.remote[0])

    def _nonces(self) -> tuple[bytes, bytes]:
        return (self.sa.ni, self.sa.nr) if self.in_auth else (self.ni, self.nr)

    def _finish(self, spi_out: int, shared: bytes, now: float) -> None:
        sa = self.sa
        assert self.selected is not None and self.spi_in is not None and sa.keys is not None
        assert sa.selected is not None
        ni, nr = self._nonces()
        esize, asize = _keymat_sizes(self.selected)
        keymat = crypto.child_keymat(sa.selected.prf, sa.keys.sk_d, ni, nr, shared, esize, asize)
        self.child = sa.make_child(self.selected, self.initiator, self.spi_in, spi_out, keymat,
                                   self.mode, self.tsi, self.tsr, now)

    def _announce(self) -> None:
        assert self.child is not None
        self.sa.add_child(self.child)
        if self.announce:
            self.sa.engine.emit(events.ChildSaEstablished(self.sa.id, self.child.params))

    def fail(self, notify: str, by_peer: bool) -> None:
        self.failure = notify
        self.sa.engine.stats.failures[f"child_{notify}"] += 1
        if self.announce:
            self.sa.engine.emit(events.ChildSaFailed(self.sa.id, notify, by_peer))

    def migrate(self, sa: IkeSa) -> Task | None:
        return None if self.in_auth or not self.announce else ChildCreate(sa, True)

    # -- initiator --------------------------------------------------------------------------

    def build_i(self, msg: Message, now: float) -> None:
        sa = self.sa
        if not self.in_auth and sa.state not in (IkeState.ESTABLISHED, IkeState.REKEYING):
            raise Obsolete
        if self.spi_in is None:
            self.spi_in = sa.engine.take_spi()
            if self.spi_in is None:
                raise NeedSpi
        pfs = not self.in_auth and bool(self.cfg.proposals[0].dh)
        if self.mode == Mode.TRANSPORT:
            msg.add(pl.Notify(NotifyType.USE_TRANSPORT_MODE))
        spi = self.spi_in.to_bytes(4, "big")
        msg.add(pl.SA([pl.Proposal(i + 1, p.protocol, spi, p.transforms(pfs))
                       for i, p in enumerate(self.cfg.proposals)]))
        if not self.in_auth:
            self.ni = sa.engine.random(NONCE_SIZE)
            msg.add(pl.Nonce(self.ni))
            if pfs:
                self.group = self.group or self.cfg.proposals[0].dh[0]
                self.ke = crypto.key_exchange(self.group, sa.engine.random)
                msg.add(pl.KE(self.group, self.ke.public))
        local, remote = self.ts or (self._local_ts(), self._remote_ts())
        msg.add(pl.TSi(list(local)), pl.TSr(list(remote)))
        self.tsi, self.tsr = local, remote

    def process_i(self, msg: Message, now: float) -> Status:
        """Set ``self.child`` or ``self.failure``; RETRY on INVALID_KE_PAYLOAD."""
        err = msg.error_notify()
        if err is not None:
            if err.type == NotifyType.INVALID_KE_PAYLOAD and not self.in_auth and self.ke:
                group = int.from_bytes(err.data[:2], "big")
                if group != self.group and any(group in p.dh for p in self.cfg.proposals):
                    self.group = DhGroup(group)
                    return Status.RETRY
            self.fail(pl.notify_type_name(err.type), by_peer=True)
            return Status.SUCCESS
        try:
            spi_out, shared = self._accept_response(msg)
        except ProtocolError as e:
            self.fail(e.notify.name, by_peer=False)
            return Status.SUCCESS
        self._finish(spi_out, shared, now)
        if self.announce:
            self._announce()
        return Status.SUCCESS

    def _accept_response(self, msg: Message) -> tuple[int, bytes]:
        sa_pl, tsi, tsr = msg.get(pl.SA), msg.get(pl.TSi), msg.get(pl.TSr)
        if sa_pl is None or tsi is None or tsr is None or len(sa_pl.proposals) != 1:
            raise ProtocolError(NotifyType.INVALID_SYNTAX, "SA/TS missing")
        ke = msg.get(pl.KE)
        pfs = self.ke is not None
        selected = select_child(self.cfg.proposals, sa_pl.proposals, pfs,
                                ke.group if ke else None)
        if selected is None or (pfs and (ke is None or ke.group != self.group)):
            raise ProtocolError(NotifyType.NO_PROPOSAL_CHOSEN)
        shared = b""
        if self.ke is not None and ke is not None:
            shared = self.ke.shared_secret(ke.data)
        if not self.in_auth:
            self.nr = check_nonce(msg.get(pl.Nonce))
        if not (within(tsi.selectors, self.tsi) and within(tsr.selectors, self.tsr)):
            raise ProtocolError(NotifyType.TS_UNACCEPTABLE)
        self.tsi, self.tsr = tuple(tsi.selectors), tuple(tsr.selectors)
        transport = msg.notify(NotifyType.USE_TRANSPORT_MODE) is not None
        self.mode = Mode.TRANSPORT if transport and self.mode == Mode.TRANSPORT else Mode.TUNNEL
        self.selected = selected
        return int.from_bytes(selected.spi, "big"), shared

    # -- responder --------------------------------------------------------------------------

    def process_r(self, msg: Message, now: float) -> None:
        sa = self.sa
        if not self.in_auth and self.announce and not sa.accepts_child_requests():
            raise ProtocolError(NotifyType.TEMPORARY_FAILURE)
        sa_pl, tsi, tsr = msg.get(pl.SA), msg.get(pl.TSi), msg.get(pl.TSr)
        if sa_pl is None or tsi is None or tsr is None:
            raise ProtocolError(NotifyType.INVALID_SYNTAX, "SA/TS missing")
        ke = None if self.in_auth else msg.get(pl.KE)
        if not self.in_auth:
            self.ni = check_nonce(msg.get(pl.Nonce))
        selected = select_child(self.cfg.proposals, sa_pl.proposals, ke is not None,
                                ke.group if ke else None)
        if selected is None:
            raise ProtocolError(NotifyType.NO_PROPOSAL_CHOSEN)
        if ke is not None and selected.dh != ke.group:
            raise ProtocolError(NotifyType.INVALID_KE_PAYLOAD,
                                data=int(selected.dh).to_bytes(2, "big"))
        remote_allowed = self._remote_ts()
        if sa.remote_nat and not self.cfg.remote_ts:
            remote_allowed = tuple(tsi.selectors)  # dynamic behind a NAT: its own address
        self.tsi = narrow(tsi.selectors, remote_allowed)
        self.tsr = narrow(tsr.selectors, self._local_ts())
        if not self.tsi or not self.tsr:
            raise ProtocolError(NotifyType.TS_UNACCEPTABLE)
        transport = msg.notify(NotifyType.USE_TRANSPORT_MODE) is not None
        self.mode = Mode.TRANSPORT if transport and self.cfg.mode == Mode.TRANSPORT else (
            Mode.TUNNEL)
        shared = b""
        if ke is not None:
            self.ke = crypto.key_exchange(ke.group, sa.engine.random)
            shared = self.ke.shared_secret(ke.data)
        if not self.in_auth:
            self.nr = sa.engine.random(NONCE_SIZE)
        self.spi_in = sa.engine.take_spi()
        if self.spi_in is None:
            raise ProtocolError(NotifyType.TEMPORARY_FAILURE, "no SPI")
        self.selected = selected
        self._finish(int.from_bytes(selected.spi, "big"), shared, now)

    def build_r(self, msg: Message, now: float) -> Status:
        assert self.selected is not None and self.spi_in is not None
        if self.mode == Mode.TRANSPORT:
            msg.add(pl.Notify(NotifyType.USE_TRANSPORT_MODE))
        msg.add(pl.SA([self.selected.proposal(self.spi_in.to_bytes(4, "big"))]))
        if not self.in_auth:
            msg.add(pl.Nonce(self.nr))
            if self.ke is not None:
                msg.add(pl.KE(self.ke.group, self.ke.public))
        msg.add(pl.TSi(list(self.tsi)), pl.TSr(list(self.tsr)))
        if self.announce:
            self._announce()
        return Status.SUCCESS
