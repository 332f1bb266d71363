"""Proposals: what we offer, how we choose (§2.7, §3.3), and how algorithms map to the kernel.

A local proposal lists, per transform type, the algorithms acceptable together, in preference
order; the strongSwan-style strings (``aes256gcm16-prfsha256-x25519``, ``aes256gcm16-esn``)
parse into them. Selection walks the *local* proposals in order and, for each, the peer's
proposals in order, taking for each transform type our first choice that the peer offered.
"""

from __future__ import annotations

from dataclasses import dataclass

from kube_ipsec.ike import payloads as pl
from kube_ipsec.ike.constants import (
    DhGroup,
    EncrId,
    IntegId,
    PrfId,
    ProtocolId,
    TransformType,
)
from kube_ipsec.ike.crypto import SUPPORTED_GROUPS

Encr = tuple[EncrId, int]  # (algorithm, key bits); 0 bits: no Key Length attribute (ChaCha20)

_ENCR_TOKENS: dict[str, Encr] = {
    "aes128gcm16": (EncrId.AES_GCM_16, 128), "aes128gcm": (EncrId.AES_GCM_16, 128),
    "aes256gcm16": (EncrId.AES_GCM_16, 256), "aes256gcm": (EncrId.AES_GCM_16, 256),
    "chacha20poly1305": (EncrId.CHACHA20_POLY1305, 0),  # RFC 7634: no Key Length attribute
}
_PRF_TOKENS = {"prfsha256": PrfId.HMAC_SHA2_256, "prfsha384": PrfId.HMAC_SHA2_384,
               "prfsha512": PrfId.HMAC_SHA2_512}
_DH_TOKENS = {"x25519": DhGroup.CURVE25519, "curve25519": DhGroup.CURVE25519,
              "ecp256": DhGroup.ECP_256, "ecp384": DhGroup.ECP_384, "modp2048": DhGroup.MODP_2048}
_INTEG_TOKENS = {"sha256": IntegId.HMAC_SHA2_256_128, "sha2_256": IntegId.HMAC_SHA2_256_128}

# Kernel (XFRM) names: (name, key bytes incl. salt, ICV/truncation bits).
KERNEL_AEAD = {EncrId.AES_GCM_16: "rfc4106(gcm(aes))",
               EncrId.CHACHA20_POLY1305: "rfc7539esp(chacha20,poly1305)"}
KERNEL_AUTH = {IntegId.HMAC_SHA2_256_128: ("hmac(sha256)", 32, 128)}


@dataclass(frozen=True)
class IkeProposal:
    encryption: tuple[Encr, ...]
    prf: tuple[PrfId, ...]
    dh: tuple[DhGroup, ...]

    @classmethod
    def parse(cls, text: str) -> IkeProposal:
        encr: list[Encr] = []
        prfs: list[PrfId] = []
        dhs: list[DhGroup] = []
        for token in text.lower().split("-"):
            if token in _ENCR_TOKENS:
                encr.append(_ENCR_TOKENS[token])
            elif token in _PRF_TOKENS:
                prfs.append(_PRF_TOKENS[token])
            elif token in _DH_TOKENS:
                dhs.append(_DH_TOKENS[token])
            else:
                raise ValueError(f"unknown IKE algorithm {token!r} in {text!r}")
        if not (encr and prfs and dhs):
            raise ValueError(f"IKE proposal {text!r} needs encryption, prf and dh")
        return cls(tuple(encr), tuple(prfs), tuple(dhs))

    def transforms(self) -> tuple[pl.Transform, ...]:
        return (tuple(pl.Transform(TransformType.ENCR, e, bits or None)
                      for e, bits in self.encryption)
                + tuple(pl.Transform(TransformType.PRF, p) for p in self.prf)
                + tuple(pl.Transform(TransformType.DH, d) for d in self.dh))


@dataclass(frozen=True)
class ChildProposal:
    """ESP (AEAD) or AH (integrity only) proposal; ``dh`` non-empty means PFS on rekeys."""

    protocol: ProtocolId = ProtocolId.ESP
    encryption: tuple[Encr, ...] = ()
    integrity: tuple[IntegId, ...] = ()
    dh: tuple[DhGroup, ...] = ()
    esn: tuple[bool, ...] = (True, False)

    @classmethod
    def parse(cls, text: str, protocol: ProtocolId = ProtocolId.ESP) -> ChildProposal:
        encr: list[Encr] = []
        integ: list[IntegId] = []
        dhs: list[DhGroup] = []
        esn: list[bool] = []
        for token in text.lower().split("-"):
            if token in _ENCR_TOKENS:
                encr.append(_ENCR_TOKENS[token])
            elif token in _INTEG_TOKENS:
                integ.append(_INTEG_TOKENS[token])
            elif token in _DH_TOKENS:
                dhs.append(_DH_TOKENS[token])
            elif token in ("esn", "noesn"):
                esn.append(token == "esn")
            else:
                raise ValueError(f"unknown child algorithm {token!r} in {text!r}")
        if protocol == ProtocolId.ESP and (not encr or integ):
            raise ValueError(f"ESP proposal {text!r} needs an AEAD and no integrity algorithm")
        if protocol == ProtocolId.AH and (encr or not integ):
            raise ValueError(f"AH proposal {text!r} needs an integrity algorithm only")
        return cls(protocol, tuple(encr), tuple(integ), tuple(dhs), tuple(esn) or (False,))

    def transforms(self, with_dh: bool) -> tuple[pl.Transform, ...]:
        out = [pl.Transform(TransformType.ENCR, e, bits or None) for e, bits in self.encryption]
        out += [pl.Transform(TransformType.INTEG, i) for i in self.integrity]
        if with_dh:
            out += [pl.Transform(TransformType.DH, d) for d in self.dh]
        out += [pl.Transform(TransformType.ESN, int(e)) for e in self.esn]
        return tuple(out)


@dataclass(frozen=True)
class SelectedIke:
    encr: EncrId
    key_bits: int
    prf: PrfId
    dh: DhGroup
    spi: bytes  # the proposer's SPI from the chosen proposal (IKE rekey), else b""
    number: int

    def proposal(self, spi: bytes) -> pl.Proposal:
        return pl.Proposal(self.number, ProtocolId.IKE, spi, (
            pl.Transform(TransformType.ENCR, self.encr, self.key_bits or None),
            pl.Transform(TransformType.PRF, self.prf),
            pl.Transform(TransformType.DH, self.dh)))

    def __str__(self) -> str:
        return f"{_encr_name(self.encr, self.key_bits)}/{self.prf.name}/{self.dh.name}"


@dataclass(frozen=True)
class SelectedChild:
    protocol: ProtocolId
    encr: EncrId | None
    key_bits: int
    integ: IntegId | None
    dh: DhGroup
    esn: bool
    spi: bytes
    number: int

    def proposal(self, spi: bytes) -> pl.Proposal:
        ts: list[pl.Transform] = []
        if self.encr is not None:
            ts.append(pl.Transform(TransformType.ENCR, self.encr, self.key_bits or None))
        if self.integ is not None:
            ts.append(pl.Transform(TransformType.INTEG, self.integ))
        if self.dh != DhGroup.NONE:
            ts.append(pl.Transform(TransformType.DH, self.dh))
        ts.append(pl.Transform(TransformType.ESN, int(self.esn)))
        return pl.Proposal(self.number, self.protocol, spi, tuple(ts))

    def __str__(self) -> str:
        alg = _encr_name(self.encr, self.key_bits) if self.encr is not None else (
            self.integ.name if self.integ is not None else "?")
        dh = f"/{self.dh.name}" if self.dh != DhGroup.NONE else ""
        return f"{self.protocol.name}:{alg}{dh}/{'ESN' if self.esn else 'NO_ESN'}"


def _encr_name(encr: EncrId, key_bits: int) -> str:
    return f"{encr.name}_{key_bits}" if key_bits else encr.name


def _offered(p: pl.Proposal) -> dict[int, list[tuple[int, int | None]]]:
    out: dict[int, list[tuple[int, int | None]]] = {}
    for t in p.transforms:
        if not t.unknown_attributes:
            out.setdefault(t.type, []).append((t.id, t.key_length))
    return out


def _pick(choices: list[tuple[int, int | None]], offered: list[tuple[int, int | None]]
          ) -> tuple[int, int | None] | None:
    for c in choices:
        if c in offered:
            return c
    return None


def select_ike(local: tuple[IkeProposal, ...], remote: list[pl.Proposal],
               ke_group: int | None = None) -> SelectedIke | None:
    """Pick the first local proposal the peer also offers; prefer the group of its KE."""
    for lp in local:
        for rp in remote:
            if rp.protocol != ProtocolId.IKE:
                continue
            off = _offered(rp)
            if set(off) - {TransformType.ENCR, TransformType.PRF, TransformType.DH}:
                continue  # e.g. INTEG with a non-AEAD cipher we do not implement
            encr = _pick([(e, b or None) for e, b in lp.encryption],
                         off.get(TransformType.ENCR, []))
            prf_ = _pick([(p, None) for p in lp.prf], off.get(TransformType.PRF, []))
            dh_choices: list[tuple[int, int | None]] = [
                (d, None) for d in lp.dh if d in SUPPORTED_GROUPS]
            if ke_group is not None and (ke_group, None) in dh_choices:
                dh_choices.insert(0, (ke_group, None))
            dh = _pick(dh_choices, off.get(TransformType.DH, []))
            if encr and prf_ and dh:
                return SelectedIke(EncrId(encr[0]), encr[1] or 0, PrfId(prf_[0]),
                                   DhGroup(dh[0]), rp.spi, rp.number)
    return None


def select_child(local: tuple[ChildProposal, ...], remote: list[pl.Proposal], pfs: bool,
                 ke_group: int | None = None) -> SelectedChild | None:
    """As ``select_ike`` for ESP/AH; with ``pfs`` the DH group must match too."""
    for lp in local:
        for rp in remote:
            if rp.protocol != lp.protocol or len(rp.spi) != 4:
                continue
            off = _offered(rp)
            encr = _pick([(e, b or None) for e, b in lp.encryption],
                         off.get(TransformType.ENCR, []))
            integ = _pick([(i, None) for i in lp.integrity], off.get(TransformType.INTEG, []))
            esn = _pick([(int(e), None) for e in lp.esn], off.get(TransformType.ESN, []))
            if lp.protocol == ProtocolId.ESP:
                if encr is None or off.get(TransformType.INTEG, [(0, None)]) != [(0, None)]:
                    continue
            elif integ is None or TransformType.ENCR in off:
                continue
            if esn is None:
                continue
            dh = DhGroup.NONE
            if pfs and lp.dh:
                choices: list[tuple[int, int | None]] = [
                    (d, None) for d in lp.dh if d in SUPPORTED_GROUPS]
                if ke_group is not None and (ke_group, None) in choices:
                    choices.insert(0, (ke_group, None))
                picked = _pick(choices, off.get(TransformType.DH, []))
                if picked is None:
                    continue
                dh = DhGroup(picked[0])
            elif off.get(TransformType.DH, [(0, None)]) and (0, None) not in off.get(
                    TransformType.DH, [(0, None)]):
                continue  # the peer insists on PFS we do not do
            return SelectedChild(
                lp.protocol, EncrId(encr[0]) if encr else None,
                (encr[1] or 0) if encr else 0, IntegId(integ[0]) if integ else None, dh,
                bool(esn[0]), rp.spi, rp.number)
    return None


DEFAULT_IKE = (IkeProposal.parse("aes256gcm16-prfsha256-x25519-ecp256-ecp384-modp2048"),
               IkeProposal.parse("aes128gcm16-prfsha256-x25519-ecp256"))
DEFAULT_CHILD = (ChildProposal.parse("aes256gcm16-esn-noesn"),
                 ChildProposal.parse("aes128gcm16-esn-noesn"))
