"""XFRM netlink messages declared on pyroute2's nlmsg/nla framework.

pyroute2 0.9 has no XFRM family, so the structs of ``include/uapi/linux/xfrm.h`` are declared
here the way pyroute2 declares rtnetlink: one class per kernel struct, named like it, ``fields``
in C order and an ``nla_map`` whose position is the ``XFRMA_*`` number.

Two things pyroute2 does not do for us (``research/ikev2.md`` §6):

* it packs every field with its own struct format and applies no C alignment, so each
  implicit pad of the x86_64 layout is spelled out (``'3x'``, ``'7x'``) and big-endian members
  (``__be32 spi``, ``__be16`` ports) use ``'>I'``/``'>H'``;
* nested structs (selector, id, lifetimes) are not NLAs but inline members, so they are
  :class:`cstruct` subclasses used as a field *format*: pyroute2 calls their
  ``decode_from``/``encode_into``.

Addresses (``xfrm_address_t``) encode from a string or 16 bytes and decode to 16 raw bytes;
only the owner of the ``family`` field can tell IPv4 from IPv6 (``codec.py`` does).
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any, ClassVar

from pyroute2.netlink import nla, nlmsg
from pyroute2.netlink.exceptions import NetlinkNLADecodeError
from pyroute2.netlink.marshal import Marshal

from kube_ipsec.xfrm import constants as c


def pack_address(value: Any) -> bytes:
    """``xfrm_address_t``: IPv4 in the first 4 bytes, network order; zero for None/''."""
    if value in (None, '', 0):
        return bytes(16)
    if isinstance(value, bytes | bytearray):
        return bytes(value).ljust(16, b'\0')
    return ipaddress.ip_address(value).packed.ljust(16, b'\0')


class xfrm_address_t:
    """A 16-byte address as a field format."""

    size = 16

    @staticmethod
    def unpack_from(data: bytes, offset: int) -> bytes:
        return bytes(data[offset : offset + 16])

    @staticmethod
    def pack_into(buf: bytearray, offset: int, value: Any) -> None:
        buf[offset : offset + 16] = pack_address(value)

    @staticmethod
    def decode_from(data: bytes, offset: int) -> tuple[bytes, int]:
        return bytes(data[offset : offset + 16]), offset + 16

    @staticmethod
    def encode_into(data: bytearray, offset: int, value: Any) -> int:
        data.extend(pack_address(value))
        return offset + 16


class cstruct:
    """An inline C struct used as a pyroute2 field format; the value is a dict.

    Members missing from the dict encode as zero; pads (``'3x'``) are not in the dict. The
    layout is compiled once per class: per-field ``struct.Struct`` objects at fixed offsets.
    """

    fields: ClassVar[tuple[tuple[str, Any], ...]] = ()
    size: ClassVar[int] = 0
    layout: ClassVar[tuple[tuple[str, Any, int], ...]] = ()

    def __init_subclass__(cls) -> None:
        layout, offset = [], 0
        for name, fmt in cls.fields:
            codec = struct.Struct(fmt) if isinstance(fmt, str) else fmt
            if not (isinstance(fmt, str) and fmt.endswith('x')):
                layout.append((name, codec, offset))
            offset += codec.size
        cls.size, cls.layout = offset, tuple(layout)

    @classmethod
    def unpack_from(cls, data: bytes, offset: int) -> dict[str, Any]:
        value = {}
        for name, codec, at in cls.layout:
            got = codec.unpack_from(data, offset + at)
            value[name] = got[0] if isinstance(got, tuple) else got
        return value

    @classmethod
    def pack_into(cls, buf: bytearray, offset: int, value: dict[str, Any]) -> None:
        for name, codec, at in cls.layout:
            member = dict.get(value, name)  # not nlmsg.get(), which searches NLAs too
            if member:
                codec.pack_into(buf, offset + at, member)

    @classmethod
    def decode_from(cls, data: bytes, offset: int) -> tuple[dict[str, Any], int]:
        return cls.unpack_from(data, offset), offset + cls.size

    @classmethod
    def encode_into(cls, data: bytearray, offset: int, value: dict[str, Any] | None) -> int:
        data.extend(bytes(cls.size))
        if value:
            cls.pack_into(data, offset, value)
        return offset + cls.size


class xfrm_selector(cstruct):
    fields = (
        ('daddr', xfrm_address_t),
        ('saddr', xfrm_address_t),
        ('dport', '>H'),
        ('dport_mask', '>H'),
        ('sport', '>H'),
        ('sport_mask', '>H'),
        ('family', 'H'),
        ('prefixlen_d', 'B'),
        ('prefixlen_s', 'B'),
        ('proto', 'B'),
        ('__pad', '3x'),
        ('ifindex', 'i'),
        ('user', 'I'),
    )


class xfrm_id(cstruct):
    fields = (('daddr', xfrm_address_t), ('spi', '>I'), ('proto', 'B'), ('__pad', '3x'))


class xfrm_lifetime_cfg(cstruct):
    fields = tuple(
        (name, 'Q')
        for name in (
            'soft_byte_limit',
            'hard_byte_limit',
            'soft_packet_limit',
            'hard_packet_limit',
            'soft_add_expires_seconds',
            'hard_add_expires_seconds',
            'soft_use_expires_seconds',
            'hard_use_expires_seconds',
        )
    )


class xfrm_lifetime_cur(cstruct):
    fields = (('bytes', 'Q'), ('packets', 'Q'), ('add_time', 'Q'), ('use_time', 'Q'))


class xfrm_stats(cstruct):
    fields = (('replay_window', 'I'), ('replay', 'I'), ('integrity_failed', 'I'))


class xfrm_user_tmpl(cstruct):
    fields = (
        ('id', xfrm_id),
        ('family', 'H'),
        ('__pad', '2x'),
        ('saddr', xfrm_address_t),
        ('reqid', 'I'),
        ('mode', 'B'),
        ('share', 'B'),
        ('optional', 'B'),
        ('__pad1', 'x'),
        ('aalgos', 'I'),
        ('ealgos', 'I'),
        ('calgos', 'I'),
    )


class xfrm_tmpl_array:
    """XFRMA_TMPL's payload: ``xfrm_user_tmpl[]`` with no per-element header."""

    size = 0

    @staticmethod
    def decode_from(data: bytes, offset: int) -> tuple[list[Any], int]:
        return [], offset  # the owning NLA knows its length and slices (xfrm_attrs.tmpl)

    @staticmethod
    def encode_into(data: bytearray, offset: int, value: list[dict[str, Any]]) -> int:
        for tmpl in value:
            offset = xfrm_user_tmpl.encode_into(data, offset, tmpl)
        return offset


SA_INFO_FIELDS: tuple[tuple[str, Any], ...] = (
    ('sel', xfrm_selector),
    ('id', xfrm_id),
    ('saddr', xfrm_address_t),
    ('lft', xfrm_lifetime_cfg),
    ('curlft', xfrm_lifetime_cur),
    ('stats', xfrm_stats),
    ('seq', 'I'),
    ('reqid', 'I'),
    ('family', 'H'),
    ('mode', 'B'),
    ('replay_window', 'B'),
    ('flags', 'B'),
    ('__pad', '7x'),
)
POLICY_INFO_FIELDS: tuple[tuple[str, Any], ...] = (
    ('sel', xfrm_selector),
    ('lft', xfrm_lifetime_cfg),
    ('curlft', xfrm_lifetime_cur),
    ('priority', 'I'),
    ('index', 'I'),
    ('dir', 'B'),
    ('action', 'B'),
    ('flags', 'B'),
    ('share', 'B'),
    ('__pad', '4x'),
)


class policy_info(cstruct):
    """``xfrm_userpolicy_info`` inline, as inside ``xfrm_user_acquire``."""

    fields = POLICY_INFO_FIELDS


class xfrm_attrs:
    """The ``XFRMA_*`` attribute space, shared by every XFRM message."""

    nla_map = (
        ('XFRMA_UNSPEC', 'none'),
        ('XFRMA_ALG_AUTH', 'xfrm_algo'),
        ('XFRMA_ALG_CRYPT', 'xfrm_algo'),
        ('XFRMA_ALG_COMP', 'xfrm_algo'),
        ('XFRMA_ENCAP', 'xfrm_encap_tmpl'),
        ('XFRMA_TMPL', 'tmpl'),
        ('XFRMA_SA', 'hex'),
        ('XFRMA_POLICY', 'hex'),
        ('XFRMA_SEC_CTX', 'hex'),
        ('XFRMA_LTIME_VAL', 'lifetime_cur'),
        ('XFRMA_REPLAY_VAL', 'xfrm_replay_state'),
        ('XFRMA_REPLAY_THRESH', 'uint32'),
        ('XFRMA_ETIMER_THRESH', 'uint32'),
        ('XFRMA_SRCADDR', 'address'),
        ('XFRMA_COADDR', 'address'),
        ('XFRMA_LASTUSED', 'uint64'),
        ('XFRMA_POLICY_TYPE', 'xfrm_userpolicy_type'),
        ('XFRMA_MIGRATE', 'hex'),
        ('XFRMA_ALG_AEAD', 'xfrm_algo_aead'),
        ('XFRMA_KMADDRESS', 'hex'),
        ('XFRMA_ALG_AUTH_TRUNC', 'xfrm_algo_auth'),
        ('XFRMA_MARK', 'xfrm_mark'),
        ('XFRMA_TFCPAD', 'uint32'),
        ('XFRMA_REPLAY_ESN_VAL', 'xfrm_replay_state_esn'),
        ('XFRMA_SA_EXTRA_FLAGS', 'uint32'),
        ('XFRMA_PROTO', 'uint8'),
        ('XFRMA_ADDRESS_FILTER', 'xfrm_address_filter'),
        ('XFRMA_PAD', 'hex'),
        ('XFRMA_OFFLOAD_DEV', 'hex'),
        ('XFRMA_SET_MARK', 'uint32'),
        ('XFRMA_SET_MARK_MASK', 'uint32'),
        ('XFRMA_IF_ID', 'uint32'),
        ('XFRMA_MTIMER_THRESH', 'uint32'),
    )

    class _varlen(nla):
        """A struct ending in a flexible array member (key, bitmap): ``bytes`` under ``tail``.

        The fixed part is in ``fields``; the tail is appended here because pyroute2's ``'s'``
        format would read one byte past the end of the NLA when decoding.
        """

        tail = ''

        def ft_encode(self, offset: int) -> tuple[int, int]:
            offset, _ = nla.ft_encode(self, offset)
            value = bytes(self.get(self.tail) or b'')
            pad = -(offset + len(value)) % 4
            self.data.extend(value + bytes(pad))
            return offset + len(value) + pad, pad

        def decode(self) -> None:
            nla.decode(self)
            start = self.offset + 4 + sum(struct.calcsize(f) for _, f in self.fields)
            self[self.tail] = bytes(self.data[start : self.offset + self.length])

    class xfrm_algo(_varlen):
        fields = (('alg_name', '64s'), ('alg_key_len', 'I'))
        defaults = {'alg_name': b''}
        tail = 'alg_key'

    class xfrm_algo_auth(_varlen):
        fields = (('alg_name', '64s'), ('alg_key_len', 'I'), ('alg_trunc_len', 'I'))
        defaults = {'alg_name': b''}
        tail = 'alg_key'

    class xfrm_algo_aead(_varlen):
        fields = (('alg_name', '64s'), ('alg_key_len', 'I'), ('alg_icv_len', 'I'))
        defaults = {'alg_name': b''}
        tail = 'alg_key'

    class xfrm_replay_state_esn(_varlen):
        fields = (
            ('bmp_len', 'I'),
            ('oseq', 'I'),
            ('seq', 'I'),
            ('oseq_hi', 'I'),
            ('seq_hi', 'I'),
            ('replay_window', 'I'),
        )
        tail = 'bmp'

    class xfrm_address_filter(nla):
        fields = (
            ('saddr', xfrm_address_t),
            ('daddr', xfrm_address_t),
            ('family', 'H'),
            ('splen', 'B'),
            ('dplen', 'B'),
        )

    class xfrm_replay_state(nla):
        fields = (('oseq', 'I'), ('seq', 'I'), ('bitmap', 'I'))

    class xfrm_encap_tmpl(nla):
        fields = (
            ('encap_type', 'H'),
            ('encap_sport', '>H'),
            ('encap_dport', '>H'),
            ('__pad', '2x'),
            ('encap_oa', xfrm_address_t),
        )

    class xfrm_mark(nla):
        fields = (('v', 'I'), ('m', 'I'))

    class xfrm_userpolicy_type(nla):
        fields = (
            ('type', 'B'),
            ('__pad', 'x'),
            ('reserved1', 'H'),
            ('reserved2', 'B'),
            ('__pad1', 'x'),
        )

    class lifetime_cur(nla):
        fields = xfrm_lifetime_cur.fields

    class address(nla):
        fields = (('value', xfrm_address_t),)

    class tmpl(nla):
        """``XFRMA_TMPL``: value is a list of ``xfrm_user_tmpl`` dicts."""

        fields = (('value', xfrm_tmpl_array),)

        def decode(self) -> None:
            nla.decode(self)
            end = self.offset + self.length
            offset, tmpls = self.offset + 4, []
            while offset + xfrm_user_tmpl.size <= end:
                value, offset = xfrm_user_tmpl.decode_from(self.data, offset)
                tmpls.append(value)
            self['value'] = self.value = tmpls


class xfrm_msg(xfrm_attrs, nlmsg):
    """An XFRM message: a fixed C struct (``fields``) then ``XFRMA_*`` attributes.

    The fixed part goes through one compiled :class:`cstruct` instead of pyroute2's
    per-field path, whose ``self.get()`` searches the NLA chain for every field name; that
    halves the cost of encoding a request.
    """

    body: ClassVar[type[cstruct]] = cstruct

    def __init_subclass__(cls) -> None:
        cls.body = type(f'{cls.__name__}_body', (cstruct,), {'fields': cls.fields})

    def ft_encode(self, offset: int) -> tuple[int, int]:
        return self.body.encode_into(self.data, offset, self), 0  # sizes are 4-aligned

    def ft_decode(self, offset: int) -> None:
        self.update(self.body.unpack_from(self.data, offset))
        try:
            self.decode_nlas(offset + self.body.size)
        except Exception as e:
            raise NetlinkNLADecodeError(e) from e


class xfrm_usersa_info(xfrm_msg):
    """``struct xfrm_usersa_info`` (224): NEWSA/UPDSA requests, SA dumps, ALLOCSPI replies."""

    fields = SA_INFO_FIELDS


class xfrm_usersa_id(xfrm_msg):
    """``struct xfrm_usersa_id`` (24): DELSA/GETSA; the mark and source go in NLAs."""

    fields = (
        ('daddr', xfrm_address_t),
        ('spi', '>I'),
        ('family', 'H'),
        ('proto', 'B'),
        ('__pad', 'x'),
    )


class xfrm_userspi_info(xfrm_msg):
    """``struct xfrm_userspi_info`` (232): ALLOCSPI, the kernel picks an SPI in [min, max]."""

    fields = (*SA_INFO_FIELDS, ('min', 'I'), ('max', 'I'))


class xfrm_userpolicy_info(xfrm_msg):
    """``struct xfrm_userpolicy_info`` (168): NEWPOLICY/UPDPOLICY, policy dumps."""

    fields = POLICY_INFO_FIELDS


class xfrm_userpolicy_id(xfrm_msg):
    """``struct xfrm_userpolicy_id`` (64): DELPOLICY/GETPOLICY by selector + dir."""

    fields = (('sel', xfrm_selector), ('index', 'I'), ('dir', 'B'), ('__pad', '3x'))


class xfrm_user_acquire(xfrm_msg):
    """``struct xfrm_user_acquire`` (280): a packet hit a policy whose SA is missing."""

    fields = (
        ('id', xfrm_id),
        ('saddr', xfrm_address_t),
        ('sel', xfrm_selector),
        ('policy', policy_info),
        ('aalgos', 'I'),
        ('ealgos', 'I'),
        ('calgos', 'I'),
        ('seq', 'I'),
    )


class xfrm_user_expire(xfrm_msg):
    """``struct xfrm_user_expire`` (232): soft or hard lifetime of an SA ran out."""

    fields = (*SA_INFO_FIELDS, ('hard', 'B'), ('__pad1', '7x'))


class xfrm_user_polexpire(xfrm_msg):
    """``struct xfrm_user_polexpire`` (176)."""

    fields = (*POLICY_INFO_FIELDS, ('hard', 'B'), ('__pad1', '7x'))


class xfrm_dump(xfrm_msg):
    """A GETSA/GETPOLICY dump request: no struct, attributes (filters) only."""

    fields = ()


class MarshalXfrm(Marshal):
    msg_map = {
        c.XFRM_MSG_NEWSA: xfrm_usersa_info,
        c.XFRM_MSG_UPDSA: xfrm_usersa_info,
        c.XFRM_MSG_DELSA: xfrm_usersa_id,
        c.XFRM_MSG_NEWPOLICY: xfrm_userpolicy_info,
        c.XFRM_MSG_UPDPOLICY: xfrm_userpolicy_info,
        c.XFRM_MSG_DELPOLICY: xfrm_userpolicy_id,
        c.XFRM_MSG_ACQUIRE: xfrm_user_acquire,
        c.XFRM_MSG_EXPIRE: xfrm_user_expire,
        c.XFRM_MSG_POLEXPIRE: xfrm_user_polexpire,
    }
