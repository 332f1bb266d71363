"""The real ``Kernel``: XFRM over a NETLINK_XFRM socket, on pyroute2's asyncio core.

Why ``AsyncNetlinkSocket`` rather than our own asyncio socket: it already demultiplexes
replies by sequence number (several peer workers share one socket), turns NACKs with their
extended-ack text into ``NetlinkError``, and opens sockets inside a named network namespace
(tests, and a node agent that is told a netns). What it lacks is the XFRM family, which
``msgs.MarshalXfrm`` supplies. Requests are built by ``codec`` and identical to iproute2's.

Events use a second socket bound to the ACQUIRE and EXPIRE multicast groups, so requests'
replies and kernel notifications never share a queue.
"""

from __future__ import annotations

import errno
import logging
import os
from typing import Any

from pyroute2.netlink import NETLINK_XFRM, NLMSG_DONE, NLMSG_ERROR, nlmsg
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nlsocket import AsyncNetlinkSocket

from kube_ipsec.xfrm import codec, errors, reconcile
from kube_ipsec.xfrm import constants as c
from kube_ipsec.xfrm.kernel import policy_id, sa_id
from kube_ipsec.xfrm.model import (
    SA,
    Address,
    Event,
    Mark,
    Mode,
    Policy,
    PolicyId,
    Proto,
    SaId,
)
from kube_ipsec.xfrm.msgs import MarshalXfrm

log = logging.getLogger(__name__)
EVENT_GROUPS = (1 << (c.XFRMNLGRP_ACQUIRE - 1)) | (1 << (c.XFRMNLGRP_EXPIRE - 1))


class AsyncXfrmSocket(AsyncNetlinkSocket):
    marshal_class = MarshalXfrm

    def __init__(self, netns: str | None = None, **kw: Any) -> None:
        super().__init__(family=NETLINK_XFRM, netns=netns, ext_ack=True, **kw)


class NetlinkEventStream:
    """ACQUIRE/EXPIRE from the kernel; the multicast subscription starts on enter.

    If events come faster than they are read, the kernel drops some and reports ENOBUFS on
    the socket; the stream counts that in ``overflows`` and goes on (the agent's periodic
    reconcile repairs what a lost event would have triggered).
    """

    def __init__(self, netns: str | None) -> None:
        self.overflows = 0
        self._netns = netns
        self._sock: AsyncXfrmSocket | None = None
        self._closed = False
        self._pending: list[Event] = []

    async def __aenter__(self) -> NetlinkEventStream:
        self._sock = AsyncXfrmSocket(self._netns)
        await self._sock.bind(groups=EVENT_GROUPS)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closed = True
        if self._sock is not None:
            self._sock.close()

    def __aiter__(self) -> NetlinkEventStream:
        return self

    async def __anext__(self) -> Event:
        if self._sock is None:
            raise RuntimeError('enter the event stream (async with) before reading it')
        while not self._pending:
            if self._closed:
                raise StopAsyncIteration
            try:
                async for msg in self._sock.get():
                    if (event := decode_event(msg)) is not None:
                        self._pending.append(event)
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                self.overflows += 1
                log.warning('XFRM event socket overflowed: ACQUIRE/EXPIRE events were lost')
        return self._pending.pop(0)


def decode_event(msg: nlmsg) -> Event | None:
    kind = msg['header']['type']
    if kind == c.XFRM_MSG_ACQUIRE:
        return codec.decode_acquire(msg)
    if kind == c.XFRM_MSG_EXPIRE:
        return codec.decode_expire(msg)
    return None


class NetlinkKernel:
    """``Kernel`` on netlink. ``netns``: a name under /run/netns, None for our own."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self.sock = AsyncXfrmSocket(netns)

    async def __aenter__(self) -> NetlinkKernel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def request(self, req: codec.Request, obj: object) -> list[nlmsg]:
        """Send one request; the replies that carry data (ACKs and DONE dropped)."""
        try:
            replies = await self.sock.nlm_request(req.msg, req.type, req.flags)
            return [m async for m in replies
                    if m['header']['type'] not in (NLMSG_ERROR, NLMSG_DONE)]
        except NetlinkError as e:
            raise errors.from_errno(e.code, req.type, obj, _detail(e)) from None

    async def allocspi(
        self,
        src: Address,
        dst: Address,
        reqid: int,
        *,
        proto: Proto = Proto.ESP,
        mode: Mode = Mode.TRANSPORT,
        spi_min: int = c.SPI_MIN,
        spi_max: int = c.SPI_MAX,
        mark: Mark | None = None,
    ) -> int:
        req = codec.allocspi(src, dst, proto, reqid, mode, spi_min, spi_max, mark)
        what = f'{proto.name} SA to {dst} (reqid 0x{reqid:x})'
        (larval,) = await self.request(req, what)
        return int(larval['id']['spi'])

    async def add_sa(self, sa: SA) -> None:
        await self.request(codec.newsa(sa), sa)

    async def update_sa(self, sa: SA) -> None:
        await self.request(codec.newsa(sa, update=True), sa)

    async def delete_sa(self, sa: SA | SaId) -> None:
        await self.request(codec.delsa(sa_id(sa)), sa_id(sa))

    async def get_sa(self, sa: SA | SaId) -> SA:
        (found,) = await self.request(codec.getsa(sa_id(sa)), sa_id(sa))
        return codec.decode_sa(found)

    async def dump_sas(self) -> list[SA]:
        return [codec.decode_sa(m) for m in await self.request(codec.dump_sas(), 'SA dump')]

    async def add_policy(self, policy: Policy) -> None:
        await self.request(codec.newpolicy(policy), policy)

    async def update_policy(self, policy: Policy) -> None:
        await self.request(codec.newpolicy(policy, update=True), policy)

    async def delete_policy(self, policy: Policy | PolicyId) -> None:
        await self.request(codec.delpolicy(policy_id(policy)), policy_id(policy))

    async def dump_policies(self) -> list[Policy]:
        replies = await self.request(codec.dump_policies(), 'policy dump')
        # Per-socket policies (ours on the IKE sockets among them) come back with
        # dir = XFRM_POLICY_MAX + dir; they belong to sockets, not to the SPD we manage.
        return [codec.decode_policy(m) for m in replies if m['dir'] < c.XFRM_POLICY_MAX]

    async def flush_owned(self) -> tuple[int, int]:
        return await reconcile.flush_owned(self)

    def events(self) -> NetlinkEventStream:
        return NetlinkEventStream(self.netns)

    async def close(self) -> None:
        self.sock.close()


def _detail(e: NetlinkError) -> str:
    """The kernel's extended-ack text, if it sent one (e.g. 'Requested AEAD ... not found')."""
    text = e.args[1] if len(e.args) > 1 else ''
    return text if isinstance(text, str) and text != os.strerror(e.code) else ''
