"""We test these aspects of ``kube_ipsec.ike.crypto`` against published known answers:

- the IKEv2 KDF chain: SKEYSEED, prf+ key material, Child SA KEYMAT with and without PFS, and
  the rekey SKEYSEED (NIST ACVP, case "IKEv2 SHA2-256");
- prf = HMAC-SHA-256 (RFC 4231 test case 1);
- ECDH group 19 (RFC 5903 §8.1) and X25519 (RFC 7748 §6.1) through the KE-payload wrappers,
  and rejection of invalid peer values (RFC 6989);
- the SK payload: AES-GCM seal/open with fixed key, salt and IV, tamper detection;
- PSK AUTH and NAT-D hashes recomputed independently.
"""

import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from kube_ipsec.ike import crypto
from kube_ipsec.ike.constants import DhGroup, EncrId, NotifyType, PrfId
from kube_ipsec.ike.errors import MalformedMessage, ProtocolError

SHA256 = PrfId.HMAC_SHA2_256

# NIST ACVP-Server IKEv2Tests.cs, TestName "IKEv2 SHA2-256" (DKM lengths 3072 bits).
ACVP = dict(
    ni="0a58fea9c1d4fee2e74e1aad6fb02dd5f318eb127465a112be8dc3c04d5dba62eae708f9dc1b2362afd6ba4bd"
       "a3cf5000f4979fbcbadbcfda9291593829c4e905c21db0c2ee15175ce77a8a0dadf25c7f175bc53fd91b636a9"
       "b3c50b203de9b9d6dc463dcb4048f101e26498ceaed3afbcd931394a7e099392dfff82e5d6fa85c2e8a8ab90a"
       "d363a66795dc32798847e405acd87988140f973058917273a6b0bafb962c75e2b1a21e79c08beeb82168bf8b4"
       "b57f3dce867bf7862a7b8acbc21be838021913daf64340c055ed17aaf7b6e1d0ca33ae890ddbdb83f4e615aad"
       "5e3bff58c3db70bac81a0dfbabe5391fc62bca4659e22a0741e01d8d06e67d9bb41",
    nr="e4fdfa68df6171d9eaff8b7b5ad31e7c6098d259f3397c9854cbefe7449b0864c1df16ddece8b26567560f8d5"
       "9182a44c19149c2d0d72606a160021ade3d23c7c6936c91a4b6bec37adf38cfc84b851c68dcee06f81306f63a"
       "bbefc07e231e3058c49437a557df617eac01663593d2a3e594699284c0a35eae6931492ccb2a43db72a600a38"
       "99205d681d2b76b1280e456339bb10e0c584aecfdae31c77a4c40dbcb345f782ac32835d4c220c1e97254ded6"
       "a40075dd717b00b69c86a49e801773026536ae02d58a649827f1ba67610ee936dffd11c9d5a9156631916a0a0"
       "046ec0ba42f56f2a18de83d5d71a985b0cc9eec2c06b3d907ca58454419f374069d",
    gir="9d469de41b4739c7dd01f19aa94f17e48150ae9dbede94832142db19",
    gir_new="c2987b0767006c3b9aea491bfed1646a3d7194639492b8d45b23b383",
    spii="c8de93111750e409",
    spir="32d51b33508997fa",
    skeyseed="eec13ac67c2e072abb684ab4e7b6ce3e7f400af8b96bed48e113497ed337f8d4",
    dkm="bc83518f63b762874ac57947cdfae33a8d9724df0b83ee4b6df38c23fc2ad829f4d70b5a68dd1f5a52416f0"
        "9758638aedf919c09a17c5298cdb703bb75b1005cba0109739aaa4efd2fe7534c95ad05e546e4419931270ed"
        "dcab68ac1589d7fde47f5b9e8d5b614cb24ec3caf515497a9e99ee6f1b318ff153b539ef071dcaff9b41945d"
        "cb780700d69e5dc888a91de195c52825badfd0ab4c33cec71ab5c2b4badefe5455455ce5d8ae91721a2091bc"
        "ccc1514e69482c9c8da1d9f0f187eedda916393570a8c0a8dfabc26d8ed31e8ea47662515972a22d11d692bc"
        "1fac6395aecd82a01ab78daafcd6f3070b1201f158a19331b5d21ceee66fccd2ea37bc07648b9539a52dbf79"
        "7af53e31a0e8706dd86cf5081ebabd095f281d23c222dd3bc5abf06869017ca8f751cafcc85abea6ba88c139"
        "d1f32a12f7f486cf57eae5d85551b97f3963616d8f597c70efa98c1e1fa369fb77a80b1ec5fe533890672c45"
        "51172eab1b7fd68ad08c4d4c69f2a867302065ca730aa6915bc2cfb6d93820977",
    dkm_child="c725012285d56e53244a9baaaf95abfca543708d333a3f3a86ba660e00edd4d489bcd631819fda041338"
              "2edd9f53d1ed718e056c2ad91d38de90f06cd434de70141d051c021e7ddd6e4137946b4770dca59a4dec"
              "abdd866852eb557fdd995646613ff2923f5f23aa58c8fbd5ad52cf2eac9bda97faad5596695f4a747a0f"
              "1cc6a1f78b2181138fb19ac24574d2e6b3a40d6e688abb919a27d793b76568ec66bd099f6f476b705c14"
              "72d774a1516a11311b887688f36649e24227640ea8d8666b9f452217e7103b6f0a92b6adb8fbda650ba5"
              "8d6ac13ac6f6b6361a5d1c44f1e9f22196c96295115c5d01a120e7265962d20353a049286908da776c21"
              "65f706a16f43d85fcd319f89c4386340bcb8ed10df38345cb68af719abaf997e9789a5f19a392dcecd78"
              "168ba282f0b30555c7a47031a3156d12d7158aa41b863b8394d30fec63120e89cbc5750eed7786f7d596"
              "1b1f2e6faca641ed776d2211bee757b68b77f94056172553715da9fbd1c9a8728f28a2f3c9714a491749"
              "0132562484cd",
    dkm_child_dh="140a1f2a3c94318ece6edfa8c63f37d8d45982de8b6cbfe34011150db0253e34de3796d4aa57995"
                 "4a0bbf234794eb6e7ece2a8f91100f5507df4ee8e66c7813d4c0ff64d484a3494c54b0d9c605ea2"
                 "4234a49a010ce5c352feb9e1060c8c787229466296cdc9d11bb9d221ed2bb39544572464254ec02"
                 "a0fbe777b07402c775eb6d3e53cd16214c707f851942cc7da92a811b6c5c82f29d9fc3751b0ebff"
                 "9898fb14372402a6989ffb9cc32dfe7e2cea32fd882e09804d7fea34ce3b5eb6f303e095c48a452"
                 "b0a3eccada81af22195ebbaad289aeabdab074c94e751496bde39d868ebf1d693f36d1c3c672bbb"
                 "59c9f77aeb68de57d77da231b7f13d6d277f600c3d3086c4de7b3a59127f4cb9c118935574f30e1"
                 "b7c88b52c8c3531fdbd38ee3d14c69e81803ced6e7501fa0180f6d110b648272002dc1ad5bf09dc"
                 "83188011da1d48632e0d2453c8abdd8e9fd32a576aeb9ddfb0a024f674441c20a950d9bd8cd7b30"
                 "933cc0d8e87b55e8aa9d913579b410417b3acc13c14bf73c457327873",
    skeyseed_rekey="05f796c8df322a7e33283ae5fa2f376d8d5efa0ac3745fc548e430031424c121",
)
V = {k: bytes.fromhex(v) for k, v in ACVP.items()}


def test_skeyseed_matches_acvp():
    assert crypto.skeyseed(SHA256, V["ni"], V["nr"], V["gir"]) == V["skeyseed"]


def test_prf_plus_key_material_matches_acvp():
    seed = V["ni"] + V["nr"] + V["spii"] + V["spir"]
    assert crypto.prf_plus(SHA256, V["skeyseed"], seed, 384) == V["dkm"]


def test_ike_keys_are_split_from_the_key_material_in_order():
    keys = crypto.derive_ike_keys(SHA256, V["skeyseed"], V["ni"], V["nr"], V["spii"], V["spir"],
                                  36)
    dkm = V["dkm"]
    assert keys.sk_d == dkm[:32]
    assert keys.sk_ei == dkm[32:68] and keys.sk_er == dkm[68:104]
    assert keys.sk_pi == dkm[104:136] and keys.sk_pr == dkm[136:168]
    assert "sk_d" not in repr(keys) or dkm[:32].hex() not in repr(keys)


def test_child_keymat_without_and_with_pfs_matches_acvp():
    sk_d = V["dkm"][:32]
    plain = crypto.child_keymat(SHA256, sk_d, V["ni"], V["nr"], b"", 96, 96)
    assert b"".join(plain) == V["dkm_child"][:384]
    pfs = crypto.child_keymat(SHA256, sk_d, V["ni"], V["nr"], V["gir_new"], 96, 96)
    assert b"".join(pfs) == V["dkm_child_dh"][:384]


def test_rekey_skeyseed_matches_acvp():
    sk_d = V["dkm"][:32]
    assert crypto.rekey_skeyseed(SHA256, sk_d, V["gir_new"], V["ni"], V["nr"]) == V[
        "skeyseed_rekey"]


def test_prf_is_hmac_sha256_rfc4231():
    out = crypto.prf(SHA256, b"\x0b" * 20, b"Hi There")
    assert out.hex() == "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"


RFC5903_I = "C88F01F510D9AC3F70A292DAA2316DE544E9AAB8AFE84049C62A9C57862D1433"
RFC5903_GI = ("DAD0B65394221CF9B051E1FECA5787D098DFE637FC90B9EF945D0C3772581180"
              "5271A0461CDB8252D61F1C456FA3E59AB1F45B33ACCF5F58389E0577B8990BB3")
RFC5903_R = "C6EF9C5D78AE012A011164ACB397CE2088685D8F06BF9BE0B283AB46476BEE53"
RFC5903_GR = ("D12DFB5289C8D4F81208B70270398C342296970A0BCCB74C736FC7554494BF63"
              "56FBF3CA366CC23E8157854C13C58D6AAC23F046ADA30F8353E74F33039872AB")
RFC5903_GIR = "D6840F6B42F6EDAFD13116E0E12565202FEF8E9ECE7DCE03812464D04B9442DE"


def fixed(value: bytes):
    """A RandomSource that yields ``value`` (left-padded) so the DH private key is pinned."""
    return lambda n: value.rjust(n, b"\x00")


def test_ecp256_ke_data_and_shared_secret_match_rfc5903():
    # key_exchange reduces random(n+8) mod (order-1) and adds 1: feed i-1 to get i exactly.
    i = int(RFC5903_I, 16)
    ke = crypto.key_exchange(DhGroup.ECP_256, fixed((i - 1).to_bytes(32, "big")))
    assert ke.public.hex().upper() == RFC5903_GI
    assert ke.shared_secret(bytes.fromhex(RFC5903_GR)).hex().upper() == RFC5903_GIR
    r = int(RFC5903_R, 16)
    ke_r = crypto.key_exchange(DhGroup.ECP_256, fixed((r - 1).to_bytes(32, "big")))
    assert ke_r.public.hex().upper() == RFC5903_GR


def test_x25519_matches_rfc7748():
    alice = crypto.key_exchange(DhGroup.CURVE25519, fixed(bytes.fromhex(
        "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")))
    assert alice.public.hex() == (
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    bob_pub = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    assert alice.shared_secret(bob_pub).hex() == (
        "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")


@pytest.mark.parametrize("group,bad", [
    (DhGroup.CURVE25519, bytes(32)),  # all-zero: low order
    (DhGroup.CURVE25519, bytes(31)),
    (DhGroup.ECP_256, bytes(64)),  # not on the curve
    (DhGroup.ECP_384, b"\x01" * 96),
    (DhGroup.MODP_2048, (1).to_bytes(256, "big")),
    (DhGroup.MODP_2048, (crypto.MODP_2048_P - 1).to_bytes(256, "big")),
])
def test_invalid_peer_ke_is_rejected(group, bad):
    ke = crypto.key_exchange(group, fixed(b"\x42" * 8))
    with pytest.raises(ProtocolError) as e:
        ke.shared_secret(bad)
    assert e.value.notify == NotifyType.INVALID_SYNTAX


@pytest.mark.parametrize("group", [DhGroup.CURVE25519, DhGroup.ECP_256, DhGroup.ECP_384,
                                   DhGroup.MODP_2048])
def test_both_sides_of_each_group_agree(group):
    a = crypto.key_exchange(group, lambda n: b"\x11" * n)
    b = crypto.key_exchange(group, lambda n: b"\x22" * n)
    assert a.shared_secret(b.public) == b.shared_secret(a.public)
    if group == DhGroup.MODP_2048:
        assert len(a.shared_secret(b.public)) == 256  # padded to the modulus (§2.14)


def test_sk_aes_gcm_seal_is_the_rfc5282_layout_and_opens():
    key = bytes(range(32)) + b"\xca\xfe\xba\xbe"  # AES-256 key | salt
    cipher = crypto.SkCipher(EncrId.AES_GCM_16, key, next_iv=7)
    aad, plaintext = b"A" * 32, b"inner payloads\x00"
    sealed = cipher.seal(aad, plaintext)
    iv = (7).to_bytes(8, "big")
    assert sealed[:8] == iv and cipher.next_iv == 8
    expected = AESGCM(key[:32]).encrypt(b"\xca\xfe\xba\xbe" + iv, plaintext, aad)
    assert sealed[8:] == expected
    assert sealed.hex() == (
        "0000000000000007" + expected.hex())
    assert crypto.SkCipher(EncrId.AES_GCM_16, key).open(aad, sealed) == plaintext


def test_sk_open_rejects_tampering():
    key = bytes(20)
    sealed = crypto.SkCipher(EncrId.AES_GCM_16, key).seal(b"aad", b"x")
    for mutated_aad, blob in ((b"aae", sealed), (b"aad", sealed[:-1] + b"\x00")):
        with pytest.raises(MalformedMessage) as e:
            crypto.SkCipher(EncrId.AES_GCM_16, key).open(mutated_aad, blob)
        assert e.value.reason == "integrity_check_failed"


def test_chacha20poly1305_sk_round_trip():
    key = b"\x07" * 36
    sealed = crypto.SkCipher(EncrId.CHACHA20_POLY1305, key).seal(b"h", b"payload")
    assert crypto.SkCipher(EncrId.CHACHA20_POLY1305, key).open(b"h", sealed) == b"payload"


def test_psk_auth_is_prf_of_prf_keypad():
    octets = b"signed octets"
    inner = hmac.digest(b"secret", b"Key Pad for IKEv2", "sha256")
    assert crypto.psk_auth(SHA256, b"secret", octets) == hmac.digest(inner, octets, "sha256")


def test_natd_hash_is_sha1_of_spis_address_port():
    spi_i, spi_r = b"\x01" * 8, bytes(8)
    want = hashlib.sha1(spi_i + spi_r + bytes([192, 0, 2, 1]) + b"\x01\xf4").digest()  # noqa: S324
    assert crypto.natd_hash(spi_i, spi_r, bytes([192, 0, 2, 1]), 500) == want
