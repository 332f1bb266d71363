"""Per-peer state of the peer workers (``peers.py``): what is in the kernel for one peer.

Plain data plus three small helpers, so the manager's module holds behaviour only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
from dataclasses import dataclass, field
from typing import Any

from kube_ipsec import ike
from kube_ipsec.agent import status, translate
from kube_ipsec.agent.desired import DesiredPeer
from kube_ipsec.xfrm import errors as xerrors
from kube_ipsec.xfrm import model as xm


@dataclass
class Installed:
    ike_sa: int
    inbound: xm.SA
    outbound: xm.SA
    installed_at: float = 0.0
    we_initiated: bool = True  # we initiated the exchange that created it


@dataclass
class Peer:
    """One desired peer: its policies, its Child SAs in the kernel, what status shows."""

    want: DesiredPeer
    reqid: int
    policies: list[xm.Policy]
    state: status.PeerState
    children: dict[int, Installed] = field(default_factory=dict)  # by inbound SPI
    active: int | None = None  # the child the out policies are pinned to
    orphan: Installed | None = None  # a deleted active child still pinned, awaiting a successor
    pending: list[int] = field(default_factory=list)  # installed, not switched to yet
    ike_sas: dict[int, tuple[int, bool]] = field(default_factory=dict)  # id -> (gen, initiator)
    connecting: int | None = None
    adopted: list[xm.SA] = field(default_factory=list)
    retries: int = 0
    retry: asyncio.TimerHandle | None = None
    added_at: float = 0.0

    @property
    def config(self) -> ike.PeerConfig:
        return translate.peer_config(self.want)

    @property
    def current_ike(self) -> int | None:
        return max(self.ike_sas) if self.ike_sas else None

    def wants_to_initiate(self) -> bool:
        return (self.want.initiate_generation is not None
                and (self.want.initiator or bool(self.adopted)))


def unpinned(policy: xm.Policy) -> xm.Policy:
    return dataclasses.replace(
        policy, templates=tuple(dataclasses.replace(t, spi=0) for t in policy.templates))


def set_spis(peer: Peer) -> None:
    local = ipaddress.ip_address(peer.want.local_address)
    adopted_in = [s.spi for s in peer.adopted if s.dst == local]
    adopted_out = [s.spi for s in peer.adopted if s.dst != local]
    peer.state.spis_in = [i.inbound.spi for i in peer.children.values()] + adopted_in
    orphan_out = [peer.orphan.outbound.spi] if peer.orphan else []
    children_out = [i.outbound.spi for i in peer.children.values()]
    peer.state.spis_out = children_out + adopted_out + orphan_out


async def quietly(op: Any) -> None:
    """Deleting what vanished meanwhile (expired, deleted by the peer's DELETE) is fine."""
    try:
        await op
    except (xerrors.NoSuchSa, xerrors.NoSuchPolicy):
        pass
