"""The ``Kernel`` interface the agent programs against (charon's ``kernel_ipsec_t``).

Two implementations: :class:`~kube_ipsec.xfrm.netlink.NetlinkKernel` (the real one) and
:class:`~kube_ipsec.xfrm.fake.FakeKernel` (in memory, for hosts without ESP). Both raise the
exceptions of ``errors.py``. Dumps return lists: the agent diffs whole sets (``reconcile.py``),
and a few thousand SAs fit easily.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from kube_ipsec.xfrm import constants as c
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


class EventStream(Protocol):
    """ACQUIRE and EXPIRE events; subscribed once entered, so nothing between is lost.

    ``overflows`` counts the times the kernel dropped events because they were not read fast
    enough (netlink ENOBUFS).
    """

    overflows: int

    async def __aenter__(self) -> EventStream: ...

    async def __aexit__(self, *exc: object) -> None: ...

    def __aiter__(self) -> AsyncIterator[Event]: ...

    async def __anext__(self) -> Event: ...


class Kernel(Protocol):
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
        """Reserve an inbound SPI (a larval SA, gone after ``xfrm_acq_expires``, 30 s)."""
        ...

    async def add_sa(self, sa: SA) -> None: ...

    async def update_sa(self, sa: SA) -> None:
        """Complete the larval SA of an ALLOCSPI with keys (or refresh a valid SA's lifetime)."""
        ...

    async def delete_sa(self, sa: SA | SaId) -> None: ...

    async def get_sa(self, sa: SA | SaId) -> SA: ...

    async def dump_sas(self) -> list[SA]: ...

    async def add_policy(self, policy: Policy) -> None: ...

    async def update_policy(self, policy: Policy) -> None:
        """Replace (or create) the policy with the same selector/dir/mark, atomically."""
        ...

    async def delete_policy(self, policy: Policy | PolicyId) -> None: ...

    async def dump_policies(self) -> list[Policy]: ...

    async def flush_owned(self) -> tuple[int, int]:
        """Delete every policy and SA kube-ipsec owns; returns (policies, SAs) deleted."""
        ...

    def events(self) -> EventStream: ...

    async def close(self) -> None: ...


def sa_id(sa: SA | SaId) -> SaId:
    return sa.id if isinstance(sa, SA) else sa


def policy_id(policy: Policy | PolicyId) -> PolicyId:
    return policy.id if isinstance(policy, Policy) else policy
