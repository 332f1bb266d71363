"""Rekeying the IKE SA (§2.18) and simultaneous IKE rekeys (§2.8.2).

# CREATE_CHILD_SA { SA(IKE, new SPIi), Ni, KEi }  -->
#                 <--  { SA(IKE, new SPIr), Nr, KEr }
# INFORMATIONAL { D(IKE) }  -->  on the old SA (ike_delete)

SKEYSEED' = prf(SK_d(old), g^ir(new) | Ni | Nr); the new SA takes the Child SAs and starts its
message IDs at 0, and the rekey initiator becomes its original initiator. We only propose the
current PRF, as strongSwan uses the old PRF for prf+ too. In a collision the SA made by the
exchange with the lowest nonce is redundant and deleted by its initiator; the winner's
initiator deletes the old SA.
"""

from __future__ import annotations

from kube_ipsec.ike import crypto, events
from kube_ipsec.ike import payloads as pl
from kube_ipsec.ike.constants import DhGroup, ExchangeType, NotifyType, ProtocolId
from kube_ipsec.ike.errors import ProtocolError
from kube_ipsec.ike.message import Message
from kube_ipsec.ike.proposals import IkeProposal, SelectedIke, select_ike
from kube_ipsec.ike.sa import IkeSa, IkeState
from kube_ipsec.ike.tasks.base import Obsolete, Status, Task
from kube_ipsec.ike.tasks.ike_delete import IkeDelete
from kube_ipsec.ike.tasks.ike_init import NONCE_SIZE, check_nonce


def _proposals(sa: IkeSa) -> tuple[IkeProposal, ...]:
    assert sa.selected is not None
    prf = sa.selected.prf
    return tuple(IkeProposal(p.encryption, (prf,), p.dh) for p in sa.peer.ike_proposals
                 if prf in p.prf)


class IkeRekey(Task):
    exchange = ExchangeType.CREATE_CHILD_SA
    priority = 6
    blocks_child_requests = True

    def __init__(self, sa: IkeSa, initiator: bool) -> None:
        super().__init__(sa, initiator)
        self.spi = b""
        self.ni = b""
        self.nr = b""
        self.group: DhGroup | None = None
        self.ke: crypto.KeyExchange | None = None
        self.selected: SelectedIke | None = None
        self.new_sa: IkeSa | None = None
        self.collision: IkeRekey | None = None

    def _spawn(self, spi_i: bytes, spi_r: bytes, shared: bytes, now: float) -> IkeSa:
        sa = self.sa
        assert sa.keys is not None and sa.selected is not None and self.selected is not None
        seed = crypto.rekey_skeyseed(sa.selected.prf, sa.keys.sk_d, shared, self.ni, self.nr)
        return sa.engine.spawn_rekeyed(sa, self.initiator, spi_i, spi_r, self.selected, seed,
                                       self.ni, self.nr, now)

    def adopt(self, winner: IkeSa, now: float) -> None:
        """Hand the Child SAs to ``winner`` and tell the shell."""
        sa = self.sa
        winner.children, sa.children = sa.children, {}
        winner.announced = True
        sa.state = IkeState.REKEYED
        sa.rekeyed_at = now
        sa.successor = winner
        sa.rekey_at = None
        sa.mgr.migrate(winner, now)
        sa.engine.renamed(sa, winner)
        assert winner.selected is not None
        sa.engine.stats.rekeys["ike"] += 1
        sa.engine.emit(events.IkeSaRekeyed(sa.id, winner.id, winner.local_spi, winner.remote_spi,
                                           str(winner.selected)))

    # -- initiator --------------------------------------------------------------------------

    def build_i(self, msg: Message, now: float) -> None:
        sa = self.sa
        if sa.state != IkeState.ESTABLISHED:
            raise Obsolete
        assert sa.selected is not None
        self.spi = sa.engine.new_ike_spi()
        self.group = self.group or sa.selected.dh
        self.ni = sa.engine.random(NONCE_SIZE)
        self.ke = crypto.key_exchange(self.group, sa.engine.random)
        props = [pl.Proposal(i + 1, ProtocolId.IKE, self.spi, p.transforms())
                 for i, p in enumerate(_proposals(sa))]
        msg.add(pl.SA(props), pl.Nonce(self.ni), pl.KE(self.group, self.ke.public))
        sa.state = IkeState.REKEYING

    def _retry_later(self, now: float) -> None:
        sa = self.sa
        if sa.state == IkeState.REKEYING:
            sa.state = IkeState.ESTABLISHED
        if self.collision is not None and self.collision.new_sa is not None:
            self.adopt(self.collision.new_sa, now)  # the peer's rekey went through
            return
        sa.mgr.queue(IkeRekey(sa, True), now + sa.engine.retry_delay())

    def process_i(self, msg: Message, now: float) -> Status:
        sa = self.sa
        err = msg.error_notify()
        if err is not None and err.type == NotifyType.INVALID_KE_PAYLOAD:
            group = int.from_bytes(err.data[:2], "big")
            if group != self.group and any(group in p.dh for p in _proposals(sa)):
                self.group = DhGroup(group)
                sa.state = IkeState.ESTABLISHED
                return Status.RETRY
        sa_pl, ke = msg.get(pl.SA), msg.get(pl.KE)
        self.selected = select_ike(_proposals(sa), sa_pl.proposals) if sa_pl else None
        if err is not None or ke is None or self.selected is None or self.ke is None or (
                len(self.selected.spi) != 8 or ke.group != self.ke.group):
            sa.engine.stats.failures["ike_rekey_failed"] += 1
            self._retry_later(now)
            return Status.SUCCESS
        try:
            self.nr = check_nonce(msg.get(pl.Nonce))
            shared = self.ke.shared_secret(ke.data)
        except ProtocolError:
            self._retry_later(now)
            return Status.SUCCESS
        new = self.new_sa = self._spawn(self.spi, self.selected.spi, shared, now)
        theirs = self.collision
        if theirs is not None and theirs.new_sa is not None and (
                min(self.ni, self.nr) < min(theirs.ni, theirs.nr)):
            sa.engine.stats.failures["ike_rekey_collision_lost"] += 1
            new.mgr.queue(IkeDelete(new, True, events.Reason.REDUNDANT))
            self.adopt(theirs.new_sa, now)  # the peer deletes the old SA
            new.mgr.initiate(now)
            return Status.SUCCESS
        self.adopt(new, now)
        sa.mgr.queue(IkeDelete(sa, True, events.Reason.REKEYED))
        return Status.SUCCESS

    # -- responder --------------------------------------------------------------------------

    def process_r(self, msg: Message, now: float) -> None:
        sa = self.sa
        active = sa.mgr.active
        if sa.state not in (IkeState.ESTABLISHED, IkeState.REKEYING) or (
                active is not None and not isinstance(active, IkeRekey)
                and active.exchange == ExchangeType.CREATE_CHILD_SA):
            raise ProtocolError(NotifyType.TEMPORARY_FAILURE)
        sa_pl, ke = msg.get(pl.SA), msg.get(pl.KE)
        if sa_pl is None or ke is None:
            raise ProtocolError(NotifyType.INVALID_SYNTAX, "SA and KE required")
        self.ni = check_nonce(msg.get(pl.Nonce))
        self.selected = select_ike(_proposals(sa), sa_pl.proposals, ke.group)
        if self.selected is None or len(self.selected.spi) != 8:
            raise ProtocolError(NotifyType.NO_PROPOSAL_CHOSEN)
        if self.selected.dh != ke.group:
            raise ProtocolError(NotifyType.INVALID_KE_PAYLOAD,
                                data=int(self.selected.dh).to_bytes(2, "big"))
        self.ke = crypto.key_exchange(ke.group, sa.engine.random)
        shared = self.ke.shared_secret(ke.data)
        self.nr = sa.engine.random(NONCE_SIZE)
        self.spi = sa.engine.new_ike_spi()
        self.new_sa = self._spawn(self.selected.spi, self.spi, shared, now)
        if isinstance(active, IkeRekey):
            active.collision = self

    def build_r(self, msg: Message, now: float) -> Status:
        assert self.selected is not None and self.ke is not None and self.new_sa is not None
        msg.add(pl.SA([self.selected.proposal(self.spi)]), pl.Nonce(self.nr),
                pl.KE(self.ke.group, self.ke.public))
        if self.sa.state == IkeState.ESTABLISHED:  # no collision: the new SA takes over now
            self.adopt(self.new_sa, now)
        return Status.SUCCESS
