"""This node's desired peers, computed from what the API server says (pure, no I/O).

Input: the IPsecTunnels, the Nodes (name, labels, InternalIPs, podCIDRs) and each tunnel's
parsed KeySet; output: one ``DesiredPeer`` per (tunnel, peer) this node must talk to, carrying
everything the peer worker needs to configure the IKE core and the kernel — addresses,
ESP/IKE parameters, traffic selectors, the PSK of every accepted key generation, which
generation to initiate with and which side initiates. It is a function of its inputs only, so
the watchers can recompute it on every change and the workers diff old against new.

Decisions that both nodes of a pair must make the same way live here, because each computes
them alone:

- **who initiates**: the node whose name sorts first (external peers: always us), so the pair
  does not race to create two IKE SAs;
- **identities**: ``ID_FQDN`` = node name (the PSK derivation binds the same names); an
  external gateway is identified by its ``spec.peers[].name``, with PSK generation 0;
- **addresses**: IPv4 when both nodes have one, else IPv6 (one pair of outer addresses);
- **overlaps**: two tunnels selecting the same node pair would install conflicting kernel
  policies, so the tunnel whose name sorts first owns the pair and the other reports it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kube_ipsec import contract

EXTERNAL_GENERATION = 0  # the static PSK of an external peer (spec.peers[].pskSecretRef)


@dataclass(frozen=True)
class NodeInfo:
    """The parts of a Node object the agent uses."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict, hash=False, compare=True)
    addresses: tuple[str, ...] = ()  # InternalIP, in the Node's order
    pod_cidrs: tuple[str, ...] = ()

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> NodeInfo:
        meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
        status = obj.get("status") or {}
        addresses = tuple(
            a["address"] for a in status.get("addresses") or []
            if a.get("type") == "InternalIP" and a.get("address")
        )
        cidrs = tuple(spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else []))
        return cls(meta.get("name", ""), dict(meta.get("labels") or {}), addresses, cidrs)


@dataclass(frozen=True)
class TunnelInfo:
    """An IPsecTunnel as the agent sees it: name, parsed spec, or why it cannot be used."""

    name: str
    spec: contract.TunnelSpec | None
    error: str | None = None

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> TunnelInfo:
        name = (obj.get("metadata") or {}).get("name", "")
        try:
            return cls(name, contract.TunnelSpec.parse(obj.get("spec") or {}))
        except contract.SpecError as exc:
            return cls(name, None, str(exc))


@dataclass(frozen=True)
class Selector:
    """One traffic-selector pair: ``local`` <-> ``remote`` networks (CIDR strings)."""

    local: str
    remote: str


@dataclass(frozen=True)
class DesiredPeer:
    tunnel: str
    name: str  # peer node name, or the external peer's name
    external: bool
    local_id: str
    remote_id: str
    local_address: str
    remote_address: str
    spec: contract.TunnelSpec
    selectors: tuple[Selector, ...]
    initiator: bool
    initiate_generation: int | None  # None: no keys yet, do not initiate
    psks: tuple[tuple[int, bytes], ...] = field(default=(), repr=False)

    @property
    def key(self) -> tuple[str, str]:
        return (self.tunnel, self.name)

    @property
    def generations(self) -> tuple[int, ...]:
        return tuple(g for g, _ in self.psks)

    def config_key(self) -> tuple[Any, ...]:
        """What, when it changes, needs new SAs (keys excluded: those change by re-auth)."""
        return (self.local_id, self.remote_id, self.local_address, self.remote_address,
                self.spec, self.selectors, self.initiator)


@dataclass(frozen=True)
class Desired:
    """Everything this node should have, plus what it could not use and why."""

    peers: Mapping[tuple[str, str], DesiredPeer]
    # tunnel name -> accepted generations (status keyGenerationsLoaded); only member tunnels
    tunnels: Mapping[str, tuple[int, ...]]
    errors: Mapping[str, str]  # tunnel name -> problem (bad spec, no address, overlap)
    local_address: str | None


def _family(address: str) -> int:
    return ipaddress.ip_address(address).version


def pick_addresses(local: NodeInfo, remote_addresses: Iterable[str]) -> tuple[str, str] | None:
    """Outer addresses for a pair: IPv4 when both have one, else IPv6, else None."""
    remote = list(remote_addresses)
    for version in (4, 6):
        mine = [a for a in local.addresses if _family(a) == version]
        theirs = [a for a in remote if _family(a) == version]
        if mine and theirs:
            return mine[0], theirs[0]
    return None


def _host_net(address: str) -> str:
    return str(ipaddress.ip_network(address))


def selectors(spec: contract.TunnelSpec, local_addr: str, remote_addr: str,
              local_cidrs: Iterable[str], remote_cidrs: Iterable[str]) -> tuple[Selector, ...]:
    """Transport: node IP <-> node IP. Tunnel: every same-family pod CIDR pair."""
    if spec.mode is contract.Mode.TRANSPORT:
        return (Selector(_host_net(local_addr), _host_net(remote_addr)),)
    pairs = []
    for mine in local_cidrs:
        for theirs in remote_cidrs:
            a = ipaddress.ip_network(mine, strict=False)
            b = ipaddress.ip_network(theirs, strict=False)
            if a.version == b.version:
                pairs.append(Selector(str(a), str(b)))
    return tuple(pairs)


def node_psks(keys: contract.KeySet | None, tunnel: str, me: str,
              peer: str) -> tuple[tuple[int, bytes], ...]:
    if keys is None:
        return ()
    return tuple(
        (g.number, contract.derive_pair_psk(g.key, tunnel, me, peer, g.number))
        for g in keys.generations
    )


def compute(node_name: str, nodes: Mapping[str, NodeInfo], tunnels: Iterable[TunnelInfo],
            keys: Mapping[str, contract.KeySet]) -> Desired:
    """This node's desired peers (see the module docstring for the rules)."""
    me = nodes.get(node_name)
    peers: dict[tuple[str, str], DesiredPeer] = {}
    loaded: dict[str, tuple[int, ...]] = {}
    errors: dict[str, str] = {}
    pair_owner: dict[tuple[str, str], str] = {}  # (local addr, remote addr) -> tunnel
    local_address = me.addresses[0] if me and me.addresses else None
    for tunnel in sorted(tunnels, key=lambda t: t.name):
        if tunnel.spec is None:
            errors[tunnel.name] = f"invalid spec: {tunnel.error}"
            continue
        spec = tunnel.spec
        if me is None or not contract.selector_matches(spec.node_selector, me.labels):
            continue
        keyset = keys.get(tunnel.name)
        loaded[tunnel.name] = tuple(keyset.numbers) if keyset else ()
        problems: list[str] = []
        candidates: list[DesiredPeer] = []
        for other in sorted(nodes.values(), key=lambda n: n.name):
            if other.name == node_name or not contract.selector_matches(
                spec.node_selector, other.labels
            ):
                continue
            pair = pick_addresses(me, other.addresses)
            if pair is None:
                problems.append(f"node {other.name}: no address in a common family")
                continue
            sels = selectors(spec, pair[0], pair[1], me.pod_cidrs, other.pod_cidrs)
            if not sels:
                problems.append(f"node {other.name}: no pod CIDR pair for tunnel mode")
                continue
            candidates.append(DesiredPeer(
                tunnel=tunnel.name, name=other.name, external=False,
                local_id=node_name, remote_id=other.name,
                local_address=pair[0], remote_address=pair[1], spec=spec, selectors=sels,
                initiator=node_name < other.name,
                initiate_generation=keyset.current if keyset else None,
                psks=node_psks(keyset, tunnel.name, node_name, other.name),
            ))
        for ext in spec.peers:
            candidates.extend(_external_peer(tunnel.name, spec, ext, me, keyset, problems))
        for peer in candidates:
            owner = pair_owner.setdefault((peer.local_address, peer.remote_address), tunnel.name)
            if owner != tunnel.name:
                problems.append(f"peer {peer.name}: pair already encrypted by tunnel {owner}")
                continue
            peers[peer.key] = peer
        if keyset is None:
            problems.append("no key Secret yet")
        if problems:
            errors[tunnel.name] = "; ".join(problems)
    return Desired(peers, loaded, errors, local_address)


def _external_peer(tunnel: str, spec: contract.TunnelSpec, ext: contract.PeerSpec,
                   me: NodeInfo, keyset: contract.KeySet | None,
                   problems: list[str]) -> list[DesiredPeer]:
    pair = pick_addresses(me, [ext.address])
    if pair is None:
        problems.append(f"peer {ext.name}: no local address in its family")
        return []
    remote_nets = ext.remote_subnets or (_host_net(ext.address),)
    sels = selectors(spec, pair[0], pair[1], me.pod_cidrs, remote_nets)
    if not sels:
        problems.append(f"peer {ext.name}: no local pod CIDR matches its subnets")
        return []
    psk = keyset.peer_psks.get(ext.name) if keyset else None
    if keyset is not None and psk is None:
        problems.append(f"peer {ext.name}: no PSK in the key Secret")
    return [DesiredPeer(
        tunnel=tunnel, name=ext.name, external=True, local_id=me.name, remote_id=ext.name,
        local_address=pair[0], remote_address=pair[1], spec=spec, selectors=sels,
        initiator=True, initiate_generation=EXTERNAL_GENERATION if psk else None,
        psks=((EXTERNAL_GENERATION, psk),) if psk else (),
    )]
