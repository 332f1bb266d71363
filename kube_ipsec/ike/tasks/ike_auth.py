"""IKE_AUTH (§1.2, §2.15) with pre-shared keys, carrying the first Child SA.

# SK { IDi, [IDr,] AUTH, [N(INITIAL_CONTACT),] [N(USE_TRANSPORT_MODE),] SAi2, TSi, TSr }  -->
#                          <--  SK { IDr, AUTH, [N(USE_TRANSPORT_MODE),] SAr2, TSi, TSr }

The initiator signs with the provider's first PSK generation; the responder learns IDi only
now, asks the PSK provider for every generation valid for (its ID, IDi), accepts the one that
verifies and signs its answer with it, so a rotation never needs both sides to switch at once.
A failure of the Child SA alone (NO_PROPOSAL_CHOSEN, TS_UNACCEPTABLE) keeps the IKE SA.
EAP (no AUTH payload) and other auth methods are refused with AUTHENTICATION_FAILED.
"""

from __future__ import annotations

import hmac

from kube_ipsec.ike import crypto, events
from kube_ipsec.ike import payloads as pl
from kube_ipsec.ike.config import Identity
from kube_ipsec.ike.constants import AuthMethod, ExchangeType, IdType, NotifyType
from kube_ipsec.ike.errors import ProtocolError
from kube_ipsec.ike.message import Message
from kube_ipsec.ike.sa import IkeSa
from kube_ipsec.ike.tasks.base import Abort, Status, Task
from kube_ipsec.ike.tasks.child_create import ChildCreate


class PskAuthenticator:
    """AUTH payloads from a shared key; the seam where certificates would plug in."""

    def __init__(self, sa: IkeSa) -> None:
        self.sa = sa

    def _octets(self, initiator_side: bool, id_body: bytes) -> bytes:
        sa = self.sa
        assert sa.keys is not None
        if initiator_side:
            return sa.init_request + sa.nr + sa.prf(sa.keys.sk_pi, id_body)
        return sa.init_response + sa.ni + sa.prf(sa.keys.sk_pr, id_body)

    def sign(self, psk: bytes, initiator_side: bool, id_body: bytes) -> pl.Auth:
        assert self.sa.selected is not None
        octets = self._octets(initiator_side, id_body)
        return pl.Auth(AuthMethod.PSK, crypto.psk_auth(self.sa.selected.prf, psk, octets))

    def verify(self, keys: list[tuple[int, bytes]], auth: pl.Auth, initiator_side: bool,
               id_body: bytes) -> tuple[int, bytes] | None:
        """The (generation, psk) whose AUTH matches, trying each (constant-time compare)."""
        if auth.method != AuthMethod.PSK:
            return None
        for generation, psk in keys:
            if hmac.compare_digest(self.sign(psk, initiator_side, id_body).data, auth.data):
                return generation, psk
        return None


def _identity(p: pl.ID) -> Identity | None:
    try:
        return Identity(IdType(p.id_type), p.data)
    except ValueError:
        return None


class IkeAuth(Task):
    exchange = ExchangeType.IKE_AUTH
    priority = 1

    def __init__(self, sa: IkeSa, initiator: bool) -> None:
        super().__init__(sa, initiator)
        self.auth = PskAuthenticator(sa)
        self.child = ChildCreate(sa, initiator, in_auth=True)
        self.keys: list[tuple[int, bytes]] = []
        self.psk = b""
        self.auth_failed = False
        self.child_error: ProtocolError | None = None

    def _psks(self, remote_id: Identity) -> list[tuple[int, bytes]]:
        # The provider's order is the policy: the initiator signs with the first entry (the
        # tunnel's *current* generation), a responder accepts any of them. Newest-first would
        # sign with a staged generation some responders may not have loaded yet.
        return list(self.sa.engine.config.psk_provider(self.sa.local_id, remote_id))

    def _auth_failed(self, by_peer: bool, remote_id: Identity | None) -> None:
        sa = self.sa
        sa.engine.stats.failures["authentication_failed"] += 1
        sa.engine.emit(events.AuthenticationFailed(sa.id, sa.remote, remote_id, by_peer))
        sa.delete_reason = events.Reason.AUTH_FAILED

    # -- initiator --------------------------------------------------------------------------

    def build_i(self, msg: Message, now: float) -> None:
        sa = self.sa
        remote_id = sa.peer.remote_id or Identity.address(sa.peer.remote_host)
        self.keys = self._psks(remote_id)
        idi = pl.IDi(sa.local_id.type, sa.local_id.data)
        msg.add(idi)
        if sa.peer.remote_id is not None:
            msg.add(pl.IDr(remote_id.type, remote_id.data))
        if not self.keys:  # nothing to sign with: fail here rather than send garbage
            self._auth_failed(False, remote_id)
            raise Abort
        generation, self.psk = self.keys[0]
        sa.psk_generation = generation
        msg.add(self.auth.sign(self.psk, True, idi.body))
        if sa.peer.send_initial_contact and not sa.engine.has_established_with(sa):
            msg.add(pl.Notify(NotifyType.INITIAL_CONTACT))
        self.child.build_i(msg, now)

    def process_i(self, msg: Message, now: float) -> Status:
        sa = self.sa
        idr, auth = msg.get(pl.IDr), msg.get(pl.Auth)
        if msg.notify(NotifyType.AUTHENTICATION_FAILED) is not None:
            self._auth_failed(True, sa.peer.remote_id)
            return Status.DESTROY
        if idr is None or auth is None:
            err = msg.error_notify()
            notify = pl.notify_type_name(err.type) if err else "INVALID_SYNTAX"
            sa.engine.emit(events.NegotiationFailed(sa.id, self.exchange.name, notify, True))
            sa.delete_reason = events.Reason.NEGOTIATION_FAILED
            return Status.DESTROY
        remote_id = _identity(idr)
        ok = remote_id is not None and (sa.peer.remote_id in (None, remote_id))
        match = self.auth.verify(self.keys, auth, False, idr.body) if ok else None
        if match is None:
            self._auth_failed(False, remote_id)
            return Status.DESTROY
        sa.remote_id = remote_id
        sa.establish(now)
        self.child.process_i(msg, now)
        if sa.replaces is not None:
            sa.engine.retire(sa.replaces, now)
        return Status.SUCCESS

    # -- responder --------------------------------------------------------------------------

    def process_r(self, msg: Message, now: float) -> None:
        sa = self.sa
        idi, auth = msg.get(pl.IDi), msg.get(pl.Auth)
        if idi is None:
            raise ProtocolError(NotifyType.INVALID_SYNTAX, "IDi missing")
        remote_id = _identity(idi)
        match = None
        if remote_id is not None and auth is not None and sa.peer.remote_id in (None, remote_id):
            match = self.auth.verify(self._psks(remote_id), auth, True, idi.body)
        if match is None:
            self.auth_failed = True
            self._auth_failed(False, remote_id)
            return
        sa.remote_id = remote_id
        sa.psk_generation, self.psk = match
        if msg.notify(NotifyType.INITIAL_CONTACT) is not None:
            sa.engine.initial_contact(sa, now)
        try:
            self.child.process_r(msg, now)
        except ProtocolError as e:
            self.child_error = e

    def build_r(self, msg: Message, now: float) -> Status:
        sa = self.sa
        if self.auth_failed:
            msg.add(pl.Notify(NotifyType.AUTHENTICATION_FAILED))
            return Status.DESTROY
        idr = pl.IDr(sa.local_id.type, sa.local_id.data)
        msg.add(idr, self.auth.sign(self.psk, False, idr.body))
        sa.establish(now)
        if self.child_error is not None:
            e = self.child_error
            msg.add(pl.Notify(e.notify, data=e.data))
            self.child.fail(e.notify.name, by_peer=False)
        else:
            self.child.build_r(msg, now)
        return Status.SUCCESS
