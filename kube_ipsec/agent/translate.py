"""Pure translations between the agent's three vocabularies: desired peers, the IKE core's
configuration and events, and the kernel's XFRM objects.

Kept apart from the peer workers so the mapping rules can be read (and tested) on their own:

- a ``DesiredPeer`` becomes an ``ike.PeerConfig`` (proposals from the tunnel spec, lifetimes,
  traffic selectors; transport mode leaves the selectors dynamic = the two node addresses);
- its selectors become the pair's policies: ``out`` local->remote, ``in`` remote->local, plus
  ``fwd`` in tunnel mode, each with one template (our reqid; ``optional`` under
  ``enforcement: allow-plaintext``). They go in before any SA exists: with a required template
  and no SA the kernel drops the packet and raises an ACQUIRE — fail closed;
- a negotiated ``ike.ChildSa`` becomes two kernel SAs (inbound, outbound);
- the API server's port gets template-less allow policies at a higher priority, so the agent's
  path to the control plane never waits for an SA whose keys it has yet to fetch.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from kube_ipsec import contract, ike
from kube_ipsec.agent.desired import DesiredPeer
from kube_ipsec.ike import constants as ike_constants
from kube_ipsec.xfrm import constants as xc
from kube_ipsec.xfrm import model as xm

POOL_REQID = xc.OWNED_REQID_MIN  # larval SAs of the engine-wide inbound SPI pool
FIRST_PEER_REQID = xc.OWNED_REQID_MIN + 1
BYPASS_PRIORITY = xc.OWNED_PRIORITY_MIN  # lower value = consulted first
PAIR_PRIORITY = xc.OWNED_PRIORITY_MIN + 0x100
IPPROTO_TCP = 6

_ESP_TOKENS = {"aes-gcm-128": "aes128gcm16", "aes-gcm-256": "aes256gcm16",
               "chacha20-poly1305": "chacha20poly1305"}
_AH_TOKENS = {"hmac-sha256-128": "sha256"}


def child_proposal(spec: contract.TunnelSpec) -> ike.ChildProposal:
    """The one ESP/AH proposal the tunnel allows (both ends read the same spec)."""
    esn = "esn" if spec.esn else "noesn"
    dh = f"-{spec.ike.dh_group}" if spec.pfs else ""
    if spec.protocol is contract.Protocol.AH:
        token = _AH_TOKENS[spec.integrity or "hmac-sha256-128"]
        return ike.ChildProposal.parse(f"{token}{dh}-{esn}", ike_constants.ProtocolId.AH)
    return ike.ChildProposal.parse(f"{_ESP_TOKENS[spec.cipher or 'aes-gcm-256']}{dh}-{esn}")


def ike_proposal(spec: contract.TunnelSpec) -> ike.IkeProposal:
    return ike.IkeProposal.parse(f"aes256gcm16-aes128gcm16-prf{spec.ike.prf}-{spec.ike.dh_group}")


def peer_config(peer: DesiredPeer) -> ike.PeerConfig:
    spec = peer.spec
    tunnel = spec.mode is contract.Mode.TUNNEL
    child_life = spec.ike.child_lifetime.total_seconds()
    child = ike.ChildConfig(
        name=f"{peer.tunnel}/{peer.name}",
        mode=ike.Mode.TUNNEL if tunnel else ike.Mode.TRANSPORT,
        proposals=(child_proposal(spec),),
        local_ts=tuple(ike.TrafficSelector.from_network(s.local) for s in peer.selectors)
        if tunnel else (),
        remote_ts=tuple(ike.TrafficSelector.from_network(s.remote) for s in peer.selectors)
        if tunnel else (),
        replay_window=spec.replay_window,
        rekey_time=child_life,
        life_time=child_life * 1.1,
        rand_time=child_life * 0.1,
    )
    ike_life = spec.ike.lifetime.total_seconds()
    return ike.PeerConfig(
        remote_host=peer.remote_address,
        local_id=ike.Identity.fqdn(peer.local_id),
        remote_id=ike.Identity.fqdn(peer.remote_id),
        name=f"{peer.tunnel}/{peer.name}",
        ike_proposals=(ike_proposal(spec),),
        child=child,
        ike_rekey_time=ike_life,
        ike_rand_time=ike_life * 0.1,
        dpd_delay=spec.ike.dpd_interval.total_seconds(),
    )


def _proto(spec: contract.TunnelSpec) -> xm.Proto:
    return xm.Proto.AH if spec.protocol is contract.Protocol.AH else xm.Proto.ESP


def _mode(spec: contract.TunnelSpec) -> xm.Mode:
    return xm.Mode.TUNNEL if spec.mode is contract.Mode.TUNNEL else xm.Mode.TRANSPORT


def _net(cidr: str) -> xm.Network:
    return ipaddress.ip_network(cidr, strict=False)


def _addr(address: str) -> xm.Address:
    return ipaddress.ip_address(address)


def pair_policies(peer: DesiredPeer, reqid: int) -> list[xm.Policy]:
    """The pair's policies (out first), templates unpinned (SPI 0)."""
    spec = peer.spec
    local, remote = _addr(peer.local_address), _addr(peer.remote_address)
    optional = spec.enforcement is contract.Enforcement.ALLOW_PLAINTEXT
    proto, mode = _proto(spec), _mode(spec)
    out_t = xm.Template(local, remote, reqid, proto, mode, optional=optional)
    in_t = xm.Template(remote, local, reqid, proto, mode, optional=optional)
    policies = []
    for sel in peer.selectors:
        there = xm.Selector(_net(sel.local), _net(sel.remote))
        back = xm.Selector(_net(sel.remote), _net(sel.local))
        policies.append(xm.Policy(there, xm.Dir.OUT, (out_t,), priority=PAIR_PRIORITY))
        policies.append(xm.Policy(back, xm.Dir.IN, (in_t,), priority=PAIR_PRIORITY))
        if mode is xm.Mode.TUNNEL:
            policies.append(xm.Policy(back, xm.Dir.FWD, (in_t,), priority=PAIR_PRIORITY))
    return policies


def bypass_policies(local_address: str, remote_address: str,
                    ports: Iterable[int]) -> list[xm.Policy]:
    """Plaintext TCP to/from the API server ports between the pair's node addresses."""
    here, there = _net(local_address), _net(remote_address)
    out = []
    for port in sorted(set(ports)):
        for sel_out, sel_in in (
            (xm.Selector(here, there, IPPROTO_TCP, dport=port),
             xm.Selector(there, here, IPPROTO_TCP, sport=port)),
            (xm.Selector(here, there, IPPROTO_TCP, sport=port),
             xm.Selector(there, here, IPPROTO_TCP, dport=port)),
        ):
            out.append(xm.Policy(sel_out, xm.Dir.OUT, priority=BYPASS_PRIORITY))
            out.append(xm.Policy(sel_in, xm.Dir.IN, priority=BYPASS_PRIORITY))
    return out


def _algorithm(params: ike.SaParams) -> tuple[xm.Algorithm | None, xm.Algorithm | None]:
    if params.aead:
        return xm.Algorithm(xm.AlgKind.AEAD, params.algorithm, params.key, params.icv_bits), None
    return None, xm.Algorithm(xm.AlgKind.AUTH, params.algorithm, params.key, params.icv_bits)


def kernel_sa(child: ike.ChildSa, params: ike.SaParams, reqid: int) -> xm.SA:
    aead, auth = _algorithm(params)
    tunnel = child.mode is ike.Mode.TUNNEL
    encap = (xm.Encap(params.encap_sport, params.encap_dport)
             if params.encap_sport is not None and params.encap_dport is not None else None)
    return xm.SA(
        src=_addr(params.src), dst=_addr(params.dst), spi=params.spi, reqid=reqid,
        proto=xm.Proto.AH if child.protocol == "ah" else xm.Proto.ESP,
        mode=xm.Mode.TUNNEL if tunnel else xm.Mode.TRANSPORT,
        aead=aead, auth=auth, replay_window=max(child.replay_window, 1), esn=child.esn,
        encap=encap,
        lifetime=xm.Lifetime(hard_seconds=int(child.hard_lifetime) or None),
        selector=None if tunnel else xm.Selector.hosts(params.src, params.dst),
    )


def kernel_pair(child: ike.ChildSa, reqid: int) -> tuple[xm.SA, xm.SA]:
    """(inbound, outbound) kernel SAs of a negotiated Child SA."""
    return kernel_sa(child, child.inbound, reqid), kernel_sa(child, child.outbound, reqid)
