"""We test these aspects: every request kube_ipsec.xfrm sends is byte-for-byte what iproute2
sends for the same ``ip xfrm`` command (captured by ``golden_capture.py``; seq and pid zeroed),
and replies captured from a real kernel decode to the objects we expect.
"""

from __future__ import annotations

import errno
import pathlib

import pytest

from kube_ipsec.xfrm import codec, constants, errors
from kube_ipsec.xfrm.model import SaId
from kube_ipsec.xfrm.msgs import MarshalXfrm
from tests.xfrm.golden_cases import (
    AH96,
    CASES,
    CHACHA_NATT,
    GCM128,
    GCM256_TUNNEL_ESN,
    KEY20,
    POLICY_OUT,
    REQID,
    A,
    B,
    policy_block,
    policy_fwd_v6,
    policy_in_tunnel_mark,
)

GOLDEN = pathlib.Path(__file__).parent / 'golden'


def hexlines(data: bytes) -> list[str]:
    """16 bytes a line, so a failing assert points at the offset that differs."""
    return [f'{i:04x}: {data[i:i + 16].hex(" ")}' for i in range(0, len(data), 16)]


@pytest.mark.parametrize('case', CASES, ids=[c.name for c in CASES])
def test_request_matches_iproute2_bytes(case):
    expected = (GOLDEN / f'{case.name}.bin').read_bytes()
    assert hexlines(case.build().encode()) == hexlines(expected)


def replies(name: str) -> list:
    return list(MarshalXfrm().parse((GOLDEN / f'{name}.reply.bin').read_bytes()))


def test_policy_dump_from_the_kernel_decodes_to_the_policies_installed():
    dumped = [codec.decode_policy(m) for m in replies('policy_dump')
              if m['header']['type'] == constants.XFRM_MSG_NEWPOLICY]
    expected = {POLICY_OUT, policy_in_tunnel_mark(), policy_fwd_v6(), policy_block()}
    assert set(dumped) == expected
    assert all(p.index for p in dumped)  # kernel-assigned, not part of equality


def test_sa_dump_from_a_kernel_with_esp_decodes_to_the_sas_installed():
    """Captured in the test VM: ``ip xfrm state add`` x4, then the dump ``ip`` received."""
    dumped = [codec.decode_sa(m) for m in replies('sa_dump')
              if m['header']['type'] == constants.XFRM_MSG_NEWSA]
    assert set(dumped) == {GCM128, GCM256_TUNNEL_ESN, CHACHA_NATT, AH96}
    assert all(sa.counters is not None and sa.counters.add_time for sa in dumped)


def test_allocspi_reply_is_a_larval_sa_with_an_spi_in_range():
    (reply,) = replies('allocspi')
    sa = codec.decode_sa(reply)
    assert 0xD0000000 <= sa.spi <= 0xDFFFFFFF
    assert (sa.src, sa.dst, sa.reqid, sa.aead) == (A, B, REQID, None)


@pytest.mark.parametrize(('name', 'msg_type', 'obj', 'exc', 'text'), [
    ('delsa_missing', constants.XFRM_MSG_DELSA, SaId(B, 0xD0000001),
     errors.NoSuchSa, 'cannot delete ESP SA spi 0xd0000001 to 10.0.0.2: no such object'),
    ('newsa_no_esp', constants.XFRM_MSG_NEWSA, GCM128, errors.AlgorithmUnsupported,
     'this kernel lacks esp4/rfc4106(gcm(aes)) (Requested AEAD algorithm not found)'),
])
def test_kernel_errors_map_to_exceptions_naming_the_object(name, msg_type, obj, exc, text):
    (nack,) = replies(name)
    err = nack['header']['error']
    mapped = errors.from_errno(err.code, msg_type, obj, err.args[1])
    assert isinstance(mapped, exc)
    assert text in str(mapped)
    assert KEY20.hex() not in str(mapped) and KEY20.hex() not in repr(obj)


def test_sa_repr_never_shows_key_bytes():
    sa = GCM128
    assert KEY20.hex() not in repr(sa) and str(KEY20) not in repr(sa)
    assert 'rfc4106' in repr(sa)


@pytest.mark.parametrize(('code', 'msg_type', 'exc', 'text'), [
    (errno.EPERM, constants.XFRM_MSG_NEWSA, errors.PermissionDenied, 'need CAP_NET_ADMIN'),
    (errno.EEXIST, constants.XFRM_MSG_NEWSA, errors.SaExists, 'already exists'),
    (errno.ESRCH, constants.XFRM_MSG_UPDSA, errors.NoSuchSa, 'no such object'),
    (errno.EPROTONOSUPPORT, constants.XFRM_MSG_NEWSA, errors.AlgorithmUnsupported,
     'lacks esp4/rfc4106(gcm(aes))'),
    (errno.EEXIST, constants.XFRM_MSG_NEWPOLICY, errors.PolicyExists, 'already exists'),
    (errno.ENOENT, constants.XFRM_MSG_DELPOLICY, errors.NoSuchPolicy, 'no such object'),
    (errno.ENOENT, constants.XFRM_MSG_ALLOCSPI, errors.SpiRangeExhausted, 'no free SPI'),
    (errno.EINVAL, constants.XFRM_MSG_NEWSA, errors.InvalidRequest, 'invalid parameters'),
    (errno.ENOMEM, constants.XFRM_MSG_NEWSA, errors.XfrmError, 'ENOMEM'),
])
def test_errno_maps_to_a_named_exception(code, msg_type, exc, text):
    obj = GCM128 if msg_type != constants.XFRM_MSG_NEWPOLICY else POLICY_OUT
    err = errors.from_errno(code, msg_type, obj)
    assert type(err) is exc and err.errno == code and err.obj is obj
    assert text in str(err) and str(obj) in str(err)
