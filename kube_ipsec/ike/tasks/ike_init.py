"""IKE_SA_INIT (§1.2): proposals, Diffie-Hellman, nonces, NAT detection, COOKIE and
INVALID_KE_PAYLOAD retries.

# HDR, [N(COOKIE),] SAi1, KEi, Ni, N(NATD_S), N(NATD_D)  -->
#                              <--  HDR, SAr1, KEr, Nr, N(NATD_S), N(NATD_D)
#                              <--  HDR, N(COOKIE) | N(INVALID_KE_PAYLOAD)
"""

from __future__ import annotations

from kube_ipsec.ike import crypto, events
from kube_ipsec.ike import payloads as pl
from kube_ipsec.ike.constants import DhGroup, ExchangeType, NotifyType, ProtocolId
from kube_ipsec.ike.errors import ProtocolError
from kube_ipsec.ike.message import Message
from kube_ipsec.ike.proposals import SelectedIke, select_ike
from kube_ipsec.ike.sa import IkeSa
from kube_ipsec.ike.tasks.base import Status, Task

MAX_RETRIES = 3
NONCE_SIZE = 32


def check_nonce(nonce: pl.Nonce | None) -> bytes:
    if nonce is None or not 16 <= len(nonce.data) <= 256:
        raise ProtocolError(NotifyType.INVALID_SYNTAX, "nonce")
    return nonce.data


class IkeInit(Task):
    exchange = ExchangeType.IKE_SA_INIT
    priority = 0

    def __init__(self, sa: IkeSa, initiator: bool) -> None:
        super().__init__(sa, initiator)
        self.ke: crypto.KeyExchange | None = None
        self.group: DhGroup | None = None
        self.cookie = b""
        self.retries = 0
        self.selected: SelectedIke | None = None

    # -- initiator --------------------------------------------------------------------------

    def build_i(self, msg: Message, now: float) -> None:
        sa = self.sa
        if self.group is None:
            self.group = sa.peer.ike_proposals[0].dh[0]
        if self.ke is None or self.ke.group != self.group:
            self.ke = crypto.key_exchange(self.group, sa.engine.random)
        if not sa.ni:
            sa.ni = sa.engine.random(NONCE_SIZE)
        if self.cookie:
            msg.add(pl.Notify(NotifyType.COOKIE, data=self.cookie))
        props = [pl.Proposal(i + 1, ProtocolId.IKE, b"", p.transforms())
                 for i, p in enumerate(sa.peer.ike_proposals)]
        msg.add(pl.SA(props), pl.KE(self.group, self.ke.public), pl.Nonce(sa.ni))
        msg.add(*sa.natd_payloads(bytes(8), sa.local, sa.remote))

    def _fail(self, notify: str) -> Status:
        sa = self.sa
        sa.engine.emit(events.NegotiationFailed(sa.id, self.exchange.name, notify, by_peer=True))
        sa.delete_reason = events.Reason.NEGOTIATION_FAILED
        return Status.DESTROY

    def process_i(self, msg: Message, now: float) -> Status:
        sa = self.sa
        cookie = msg.notify(NotifyType.COOKIE)
        if cookie is not None:
            if self.retries >= MAX_RETRIES or not 1 <= len(cookie.data) <= 64:
                return self._fail("COOKIE")
            self.retries += 1
            self.cookie = cookie.data
            return Status.RETRY
        invalid_ke = msg.notify(NotifyType.INVALID_KE_PAYLOAD)
        if invalid_ke is not None:
            group = int.from_bytes(invalid_ke.data[:2], "big")
            offered = {g for p in sa.peer.ike_proposals for g in p.dh}
            if self.retries >= MAX_RETRIES or group not in offered or group == self.group:
                return self._fail("INVALID_KE_PAYLOAD")
            self.retries += 1
            self.group = DhGroup(group)
            return Status.RETRY
        err = msg.error_notify()
        if err is not None:
            return self._fail(pl.notify_type_name(err.type))
        sa_pl, ke = msg.get(pl.SA), msg.get(pl.KE)
        if sa_pl is None or ke is None or len(sa_pl.proposals) != 1 or msg.spi_r == bytes(8):
            return self._fail("INVALID_SYNTAX")
        selected = select_ike(sa.peer.ike_proposals, sa_pl.proposals)
        assert self.ke is not None
        if selected is None or selected.dh != ke.group or ke.group != self.ke.group:
            return self._fail("NO_PROPOSAL_CHOSEN")
        try:
            sa.nr = check_nonce(msg.get(pl.Nonce))
            shared = self.ke.shared_secret(ke.data)
        except ProtocolError as e:
            return self._fail(e.notify.name)
        sa.spi_r = msg.spi_r
        sa.set_keys(selected, crypto.skeyseed(selected.prf, sa.ni, sa.nr, shared))
        sa.check_natd(msg.payloads, sa.remote, sa.local, sa.spi_r)
        if sa.nat:
            sa.float_ports()
        return Status.SUCCESS

    # -- responder --------------------------------------------------------------------------

    def process_r(self, msg: Message, now: float) -> None:
        sa = self.sa
        sa_pl, ke = msg.get(pl.SA), msg.get(pl.KE)
        if sa_pl is None or ke is None:
            raise ProtocolError(NotifyType.INVALID_SYNTAX, "SA and KE required")
        sa.ni = check_nonce(msg.get(pl.Nonce))
        selected = select_ike(sa.peer.ike_proposals, sa_pl.proposals, ke.group)
        if selected is None:
            raise ProtocolError(NotifyType.NO_PROPOSAL_CHOSEN)
        if selected.dh != ke.group:
            raise ProtocolError(NotifyType.INVALID_KE_PAYLOAD,
                                data=int(selected.dh).to_bytes(2, "big"))
        self.ke = crypto.key_exchange(selected.dh, sa.engine.random)
        shared = self.ke.shared_secret(ke.data)
        sa.nr = sa.engine.random(NONCE_SIZE)
        sa.set_keys(selected, crypto.skeyseed(selected.prf, sa.ni, sa.nr, shared))
        self.selected = selected
        sa.check_natd(msg.payloads, sa.remote, sa.local, bytes(8))

    def build_r(self, msg: Message, now: float) -> Status:
        sa = self.sa
        assert self.selected is not None and self.ke is not None
        msg.add(pl.SA([self.selected.proposal(b"")]), pl.KE(self.ke.group, self.ke.public),
                pl.Nonce(sa.nr))
        msg.add(*sa.natd_payloads(sa.spi_r, sa.local, sa.remote))
        return Status.SUCCESS
