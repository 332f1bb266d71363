"""Pure cryptography of IKEv2: prf/prf+, Diffie-Hellman groups, SK AEAD, key derivation, PSK AUTH.

Everything here is a function of its arguments; randomness (DH private keys) comes from the
``RandomSource`` passed in, so tests can pin it. Peer public values are validated on import
(RFC 6989): bad points and low-order X25519 results raise ``ProtocolError(INVALID_SYNTAX)``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from kube_ipsec.ike.constants import DhGroup, EncrId, NotifyType, PrfId
from kube_ipsec.ike.errors import MalformedMessage, ProtocolError

RandomSource = Callable[[int], bytes]
"""``random(n) -> n random bytes``; the shell passes ``os.urandom``, tests a seeded DRBG."""

_PRF_HASH = {PrfId.HMAC_SHA2_256: "sha256", PrfId.HMAC_SHA2_384: "sha384",
             PrfId.HMAC_SHA2_512: "sha512"}
PSK_PAD = b"Key Pad for IKEv2"


def prf_key_size(prf_id: int) -> int:
    return hashlib.new(_PRF_HASH[PrfId(prf_id)]).digest_size


def prf(prf_id: int, key: bytes, data: bytes) -> bytes:
    return hmac.digest(key, data, _PRF_HASH[PrfId(prf_id)])


def prf_plus(prf_id: int, key: bytes, seed: bytes, length: int) -> bytes:
    """prf+ of RFC 7296 §2.13: T1 = prf(K, S|0x01), Tn = prf(K, Tn-1|S|n)."""
    out = b""
    block = b""
    n = 1
    while len(out) < length:
        if n > 255:
            raise ValueError("prf+ output too long")
        block = prf(prf_id, key, block + seed + bytes([n]))
        out += block
        n += 1
    return out[:length]


# -- Diffie-Hellman ----------------------------------------------------------------------------

MODP_2048_P = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A0879"
    "8E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B"
    "0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA4836"
    "1C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804"
    "F1746C08CA18217C32905E462E36CE3BE39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6"
    "955817183995497CEA956AE515D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF", 16)
_CURVES: dict[int, ec.EllipticCurve] = {DhGroup.ECP_256: ec.SECP256R1(),
                                        DhGroup.ECP_384: ec.SECP384R1()}
_COORD = {DhGroup.ECP_256: 32, DhGroup.ECP_384: 48}
_ORDER = {
    DhGroup.ECP_256: int("FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551", 16),
    DhGroup.ECP_384: int("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB2"
                         "48B0A77AECEC196ACCC52973", 16),
}
SUPPORTED_GROUPS = (DhGroup.CURVE25519, DhGroup.ECP_256, DhGroup.ECP_384, DhGroup.MODP_2048)


@dataclass
class KeyExchange:
    """One side of a DH exchange: ``public`` goes into the KE payload."""

    group: DhGroup
    public: bytes
    _private: object = field(repr=False)

    def shared_secret(self, peer: bytes) -> bytes:
        bad = ProtocolError(NotifyType.INVALID_SYNTAX, "bad KE data")
        if self.group == DhGroup.CURVE25519:
            if len(peer) != 32:
                raise bad
            try:
                assert isinstance(self._private, x25519.X25519PrivateKey)
                return self._private.exchange(x25519.X25519PublicKey.from_public_bytes(peer))
            except ValueError:
                raise bad from None
        if self.group in _CURVES:
            if len(peer) != 2 * _COORD[self.group]:
                raise bad
            try:
                pub = ec.EllipticCurvePublicKey.from_encoded_point(
                    _CURVES[self.group], b"\x04" + peer)
                assert isinstance(self._private, ec.EllipticCurvePrivateKey)
                return self._private.exchange(ec.ECDH(), pub)
            except ValueError:
                raise bad from None
        # MODP: g^ir padded to the modulus size (§2.14); reject 0, 1 and p-1 (RFC 6989).
        if len(peer) != 256:
            raise bad
        y = int.from_bytes(peer, "big")
        if not 1 < y < MODP_2048_P - 1:
            raise bad
        assert isinstance(self._private, int)
        return pow(y, self._private, MODP_2048_P).to_bytes(256, "big")


def key_exchange(group: int, random: RandomSource) -> KeyExchange:
    g = DhGroup(group)
    if g == DhGroup.CURVE25519:
        priv = x25519.X25519PrivateKey.from_private_bytes(random(32))
        return KeyExchange(g, priv.public_key().public_bytes_raw(), priv)
    if g in _CURVES:
        size = _COORD[g]
        scalar = int.from_bytes(random(size + 8), "big") % (_ORDER[g] - 1) + 1
        key = ec.derive_private_key(scalar, _CURVES[g])
        nums = key.public_key().public_numbers()
        return KeyExchange(g, nums.x.to_bytes(size, "big") + nums.y.to_bytes(size, "big"), key)
    if g == DhGroup.MODP_2048:
        x = int.from_bytes(random(32), "big") | (1 << 255)  # 256-bit exponent (RFC 3526 §8)
        return KeyExchange(g, pow(2, x, MODP_2048_P).to_bytes(256, "big"), x)
    raise ValueError(f"unsupported DH group {group}")


# -- SK payload AEAD (RFC 5282, RFC 7634) ------------------------------------------------------

SALT_SIZE = 4
IV_SIZE = 8
ICV_SIZE = 16


@dataclass
class SkCipher:
    """AEAD state for one direction of an IKE SA: key, salt and (outbound) the IV counter."""

    encr: EncrId
    key: bytes = field(repr=False)
    next_iv: int = 0

    def _aead(self) -> AESGCM | ChaCha20Poly1305:
        k = self.key[:-SALT_SIZE]
        return ChaCha20Poly1305(k) if self.encr == EncrId.CHACHA20_POLY1305 else AESGCM(k)

    def seal(self, aad: bytes, plaintext: bytes) -> bytes:
        """Return IV | ciphertext | ICV; the IV is a per-key counter, so it never repeats."""
        iv = self.next_iv.to_bytes(IV_SIZE, "big")
        self.next_iv += 1
        return iv + self._aead().encrypt(self.key[-SALT_SIZE:] + iv, plaintext, aad)

    def open(self, aad: bytes, sealed: bytes) -> bytes:
        if len(sealed) < IV_SIZE + ICV_SIZE + 1:
            raise MalformedMessage("short_sk")
        iv = sealed[:IV_SIZE]
        try:
            return self._aead().decrypt(self.key[-SALT_SIZE:] + iv, sealed[IV_SIZE:], aad)
        except InvalidTag:
            raise MalformedMessage("integrity_check_failed") from None


def encr_key_size(encr: int, key_bits: int | None) -> int:
    """Bytes of SK_e / ESP key for an AEAD, salt included."""
    if encr == EncrId.CHACHA20_POLY1305:
        return 32 + SALT_SIZE
    if encr == EncrId.AES_GCM_16 and key_bits in (128, 192, 256):  # 0 = absent: invalid
        return key_bits // 8 + SALT_SIZE
    raise ValueError(f"unsupported encryption {encr}/{key_bits}")


# -- key derivation ----------------------------------------------------------------------------


@dataclass(frozen=True)
class IkeKeys:
    sk_d: bytes = field(repr=False)
    sk_ei: bytes = field(repr=False)
    sk_er: bytes = field(repr=False)
    sk_pi: bytes = field(repr=False)
    sk_pr: bytes = field(repr=False)


def skeyseed(prf_id: int, ni: bytes, nr: bytes, shared: bytes) -> bytes:
    return prf(prf_id, ni + nr, shared)


def rekey_skeyseed(old_prf: int, old_sk_d: bytes, shared: bytes, ni: bytes, nr: bytes) -> bytes:
    return prf(old_prf, old_sk_d, shared + ni + nr)


def derive_ike_keys(prf_id: int, seed: bytes, ni: bytes, nr: bytes, spi_i: bytes,
                    spi_r: bytes, encr_size: int) -> IkeKeys:
    """{SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr}; SK_a* are empty with an AEAD."""
    p = prf_key_size(prf_id)
    km = prf_plus(prf_id, seed, ni + nr + spi_i + spi_r, 3 * p + 2 * encr_size)
    e = encr_size
    return IkeKeys(km[:p], km[p : p + e], km[p + e : p + 2 * e], km[p + 2 * e : 2 * p + 2 * e],
                   km[2 * p + 2 * e :])


def child_keymat(prf_id: int, sk_d: bytes, ni: bytes, nr: bytes, shared: bytes,
                 encr_size: int, integ_size: int) -> tuple[bytes, bytes, bytes, bytes]:
    """KEYMAT = prf+(SK_d, [g^ir] | Ni | Nr) split encr_i | integ_i | encr_r | integ_r."""
    km = prf_plus(prf_id, sk_d, shared + ni + nr, 2 * (encr_size + integ_size))
    e, a = encr_size, integ_size
    return km[:e], km[e : e + a], km[e + a : 2 * e + a], km[2 * e + a :]


def psk_auth(prf_id: int, psk: bytes, signed_octets: bytes) -> bytes:
    """AUTH = prf(prf(PSK, "Key Pad for IKEv2"), <SignedOctets>) (§2.15)."""
    return prf(prf_id, prf(prf_id, psk, PSK_PAD), signed_octets)


def natd_hash(spi_i: bytes, spi_r: bytes, address: bytes, port: int) -> bytes:
    """NAT_DETECTION_*_IP data: SHA-1(SPIi | SPIr | IP | port) (§2.23)."""
    return hashlib.sha1(spi_i + spi_r + address + port.to_bytes(2, "big")).digest()  # noqa: S324


def cookie_mac(secret: bytes, data: bytes) -> bytes:
    return hmac.digest(secret, data, "sha256")
