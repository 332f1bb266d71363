"""Counters and per-SA snapshots for the agent's metrics: plain data, never key material."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kube_ipsec.ike.sa import IkeSa
    from kube_ipsec.ike.tasks.base import Task


@dataclass
class Stats:
    received: int = 0
    accepted: int = 0  # received and handled; received == accepted + sum(dropped.values())
    sent: int = 0
    dropped: Counter[str] = field(default_factory=Counter)  # by reason
    # (exchange, 'initiator'|'responder', 'ok' | notify name | 'timeout')
    exchanges: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    established: Counter[str] = field(default_factory=Counter)  # 'ike' | 'child'
    rekeys: Counter[str] = field(default_factory=Counter)  # 'ike' | 'child'
    retransmits: int = 0  # our requests sent again
    retransmitted_responses: int = 0  # cached answers to repeated requests
    cookies_sent: int = 0

    def count_exchange(self, task: Task | None, result: str) -> None:
        if task is not None:
            role = "initiator" if task.initiator else "responder"
            self.exchanges[(task.exchange.name, role, result)] += 1


@dataclass(frozen=True)
class ChildSnapshot:
    name: str
    spi_in: int
    spi_out: int
    state: str
    protocol: str
    mode: str
    proposal: str
    established_at: float
    rekey_at: float | None


@dataclass(frozen=True)
class IkeSaSnapshot:
    ike_sa: int
    state: str
    initiator: bool
    local_spi: str
    remote_spi: str
    local_addr: tuple[str, int]
    remote_addr: tuple[str, int]
    local_id: str
    remote_id: str | None
    psk_generation: int
    proposal: str | None
    nat: bool
    established_at: float | None
    rekey_at: float | None
    children: tuple[ChildSnapshot, ...]

    @classmethod
    def of(cls, sa: IkeSa) -> IkeSaSnapshot:
        children = tuple(ChildSnapshot(
            c.params.name, c.spi_in, c.spi_out, c.state.value, c.params.protocol,
            c.params.mode.value, c.params.proposal, c.established_at, c.rekey_at)
            for c in sa.children.values())
        return cls(sa.id, sa.state.value, sa.initiator, sa.local_spi.hex(), sa.remote_spi.hex(),
                   sa.local, sa.remote, str(sa.local_id),
                   str(sa.remote_id) if sa.remote_id else None, sa.psk_generation,
                   str(sa.selected) if sa.selected else None, sa.nat, sa.established_at,
                   sa.rekey_at, children)
