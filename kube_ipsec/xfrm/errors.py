"""Kernel refusals as exceptions that name the object, never a bare errno.

The netlink backend and the fake raise the same classes, so agent code written against the
fake handles the real kernel's answers. ``errno`` stays available as an attribute for metrics.
"""

from __future__ import annotations

import errno as errno_mod

from kube_ipsec.xfrm import constants as c


class XfrmError(Exception):
    """Base class; ``obj`` is the SA/policy (or its id) concerned, ``errno`` the kernel code."""

    def __init__(self, message: str, obj: object = None, errno: int = 0) -> None:
        super().__init__(message)
        self.obj = obj
        self.errno = errno


class SaExists(XfrmError):
    pass


class NoSuchSa(XfrmError):
    pass


class PolicyExists(XfrmError):
    pass


class NoSuchPolicy(XfrmError):
    pass


class AlgorithmUnsupported(XfrmError):
    """The kernel lacks the protocol (esp4/ah6 ...) or the crypto algorithm asked for."""


class PermissionDenied(XfrmError):
    pass


class SpiRangeExhausted(XfrmError):
    pass


class InvalidRequest(XfrmError):
    """The kernel rejected the parameters (EINVAL); its extended-ack text is included."""


SA_OPS = {c.XFRM_MSG_NEWSA, c.XFRM_MSG_UPDSA, c.XFRM_MSG_DELSA, c.XFRM_MSG_GETSA}
VERBS = {
    c.XFRM_MSG_NEWSA: 'add',
    c.XFRM_MSG_UPDSA: 'update',
    c.XFRM_MSG_DELSA: 'delete',
    c.XFRM_MSG_GETSA: 'get',
    c.XFRM_MSG_ALLOCSPI: 'allocate an SPI for',
    c.XFRM_MSG_NEWPOLICY: 'add',
    c.XFRM_MSG_UPDPOLICY: 'update',
    c.XFRM_MSG_DELPOLICY: 'delete',
    c.XFRM_MSG_GETPOLICY: 'get',
}


def from_errno(code: int, msg_type: int, obj: object, detail: str = '') -> XfrmError:
    """Map a kernel error for request ``msg_type`` about ``obj`` to an exception."""
    verb = VERBS.get(msg_type, 'change')
    why = f' ({detail})' if detail else ''
    is_sa = msg_type in SA_OPS
    if code in (errno_mod.EPERM, errno_mod.EACCES):
        return PermissionDenied(
            f'cannot {verb} {obj}: XFRM changes need CAP_NET_ADMIN in the network namespace',
            obj, code)
    if code == errno_mod.EEXIST:
        exists: type[XfrmError] = SaExists if is_sa else PolicyExists
        return exists(f'cannot {verb} {obj}: it already exists', obj, code)
    if code in (errno_mod.ESRCH, errno_mod.ENOENT) and msg_type != c.XFRM_MSG_ALLOCSPI:
        missing: type[XfrmError] = NoSuchSa if is_sa else NoSuchPolicy
        return missing(f'cannot {verb} {obj}: no such object in the kernel', obj, code)
    if code == errno_mod.ENOENT:
        return SpiRangeExhausted(f'cannot {verb} {obj}: no free SPI in the range', obj, code)
    if code in (errno_mod.ENOSYS, errno_mod.EPROTONOSUPPORT, errno_mod.ENOPROTOOPT):
        return AlgorithmUnsupported(
            f'cannot {verb} {obj}: this kernel lacks {_needs(obj)}{why}', obj, code)
    if code == errno_mod.EINVAL:
        return InvalidRequest(f'cannot {verb} {obj}: invalid parameters{why}', obj, code)
    return XfrmError(f'cannot {verb} {obj}: {errno_mod.errorcode.get(code, code)}{why}',
                     obj, code)


def _needs(obj: object) -> str:
    """What a missing-algorithm error most likely means, in kernel module terms."""
    proto = getattr(obj, 'proto', None)
    dst = getattr(obj, 'dst', None)
    algs = [a.name for a in (getattr(obj, 'aead', None), getattr(obj, 'auth', None)) if a]
    mod = f'{getattr(proto, "name", "esp").lower()}{6 if getattr(dst, "version", 4) == 6 else 4}'
    return '/'.join([mod, *algs])
