"""An in-memory ``Kernel`` (charon's ``mock_ipsec``) for agent tests on hosts without ESP.

It keeps the kernel rules callers depend on, with the same exceptions as the real one:
ALLOCSPI creates a larval SA with the next free SPI (sequential, so tests can predict them),
and a failed one leaves an SPI-0 larval SA behind, as the kernel does;
NEWSA refuses an existing (dst, SPI, proto, mark), larval ones included; UPDSA completes a
larval SA or, on a valid one, changes only lifetimes/encap; NEWPOLICY refuses a duplicate
selector/dir/mark while UPDPOLICY upserts. Every call is appended to ``ops`` so tests can
assert ordering (make-before-break). ``emit``/``expire`` inject events.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
from typing import Any

from kube_ipsec.xfrm import constants as c
from kube_ipsec.xfrm import errors, reconcile
from kube_ipsec.xfrm.kernel import policy_id, sa_id
from kube_ipsec.xfrm.model import (
    SA,
    Address,
    Event,
    Expire,
    Lifetime,
    Mark,
    Mode,
    Policy,
    PolicyId,
    Proto,
    SaCounters,
    SaId,
    Selector,
)

ACQ_EXPIRES = 30  # net.core.xfrm_acq_expires default, seconds
ALGORITHMS = frozenset({
    'rfc4106(gcm(aes))',
    'rfc7539esp(chacha20,poly1305)',
    'hmac(sha256)',
})


class FakeEventStream:
    def __init__(self, kernel: FakeKernel) -> None:
        self.overflows = 0
        self._kernel = kernel
        self.queue: asyncio.Queue[Event] = asyncio.Queue()

    async def __aenter__(self) -> FakeEventStream:
        self._kernel.streams.append(self)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._kernel.streams.remove(self)

    def __aiter__(self) -> FakeEventStream:
        return self

    async def __anext__(self) -> Event:
        return await self.queue.get()


class FakeKernel:
    def __init__(self, algorithms: frozenset[str] = ALGORITHMS) -> None:
        self.algorithms = algorithms
        self.sas: dict[SaId, SA] = {}
        self.policies: dict[PolicyId, Policy] = {}
        self.ops: list[tuple[str, Any]] = []
        self.streams: list[FakeEventStream] = []
        self._last_spi = 0

    @staticmethod
    def _key(sa: SA | SaId) -> SaId:
        return dataclasses.replace(sa_id(sa), src=None)

    def _fail(self, code: int, msg_type: int, obj: object) -> errors.XfrmError:
        return errors.from_errno(code, msg_type, obj)

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
        spi = max(spi_min, self._last_spi + 1)
        while self._key(SaId(dst, spi, proto, mark)) in self.sas and spi <= spi_max:
            spi += 1
        # as the kernel's: /32 selector, gone after xfrm_acq_expires unless completed by UPDSA
        larval = SA(src, dst, spi, reqid, proto, mode, replay_window=0, mark=mark,
                    lifetime=Lifetime(hard_seconds=ACQ_EXPIRES),
                    selector=Selector.hosts(src, dst), counters=SaCounters())
        if spi > spi_max:
            # the kernel has already created the larval state when the SPI search fails;
            # it stays with SPI 0 (unreachable by DELSA) until it expires
            unnumbered = dataclasses.replace(larval, spi=0)
            self.sas[self._key(unnumbered)] = unnumbered
            raise self._fail(errno.ENOENT, c.XFRM_MSG_ALLOCSPI, larval)
        self._last_spi = spi
        self.sas[self._key(larval)] = larval
        self.ops.append(('allocspi', larval))
        return spi

    def _check_algorithms(self, sa: SA, msg_type: int) -> None:
        for alg in (sa.aead, sa.auth):
            if alg is not None and alg.name not in self.algorithms:
                raise self._fail(errno.ENOSYS, msg_type, sa)

    async def add_sa(self, sa: SA) -> None:
        self._check_algorithms(sa, c.XFRM_MSG_NEWSA)
        if self._key(sa) in self.sas:
            raise self._fail(errno.EEXIST, c.XFRM_MSG_NEWSA, sa)
        self.sas[self._key(sa)] = dataclasses.replace(sa, counters=SaCounters())
        self.ops.append(('add_sa', sa))

    async def update_sa(self, sa: SA) -> None:
        self._check_algorithms(sa, c.XFRM_MSG_UPDSA)
        old = self.sas.get(self._key(sa))
        if old is None:
            raise self._fail(errno.ESRCH, c.XFRM_MSG_UPDSA, sa)
        if reconcile.is_larval(old):
            new = dataclasses.replace(sa, counters=SaCounters())
        else:
            new = dataclasses.replace(old, lifetime=sa.lifetime, encap=sa.encap)
        self.sas[self._key(sa)] = new
        self.ops.append(('update_sa', sa))

    async def delete_sa(self, sa: SA | SaId) -> None:
        if sa_id(sa).spi == 0 or self.sas.pop(self._key(sa), None) is None:
            raise self._fail(errno.ESRCH, c.XFRM_MSG_DELSA, sa_id(sa))
        self.ops.append(('delete_sa', sa_id(sa)))

    async def get_sa(self, sa: SA | SaId) -> SA:
        found = self.sas.get(self._key(sa))
        if found is None:
            raise self._fail(errno.ESRCH, c.XFRM_MSG_GETSA, sa_id(sa))
        return found

    async def dump_sas(self) -> list[SA]:
        return list(self.sas.values())

    async def add_policy(self, policy: Policy) -> None:
        if policy.id in self.policies:
            raise self._fail(errno.EEXIST, c.XFRM_MSG_NEWPOLICY, policy)
        self.policies[policy.id] = policy
        self.ops.append(('add_policy', policy))

    async def update_policy(self, policy: Policy) -> None:
        self.policies[policy.id] = policy
        self.ops.append(('update_policy', policy))

    async def delete_policy(self, policy: Policy | PolicyId) -> None:
        if self.policies.pop(policy_id(policy), None) is None:
            raise self._fail(errno.ENOENT, c.XFRM_MSG_DELPOLICY, policy_id(policy))
        self.ops.append(('delete_policy', policy_id(policy)))

    async def dump_policies(self) -> list[Policy]:
        return list(self.policies.values())

    async def flush_owned(self) -> tuple[int, int]:
        return await reconcile.flush_owned(self)

    def events(self) -> FakeEventStream:
        return FakeEventStream(self)

    def emit(self, event: Event) -> None:
        for stream in self.streams:
            stream.queue.put_nowait(event)

    def expire(self, sa: SA | SaId, hard: bool) -> None:
        """Simulate a lifetime expiry: the event, and for ``hard`` the SA's removal."""
        found = self.sas[self._key(sa)]
        if hard:
            del self.sas[self._key(sa)]
        self.emit(Expire(found.id, found.reqid, hard))

    async def close(self) -> None:
        self.streams.clear()
