"""Sans-IO IKEv2 (RFC 7296) for the node agent: bytes, timer ticks and API calls in; datagrams,
one deadline and events out. No sockets, asyncio, clock or OS randomness inside: ``now`` is a
parameter and randomness an injected ``random(n) -> bytes`` (the shell passes ``os.urandom``).

How a shell drives one ``Engine`` (one local address, UDP ports 500 and 4500)::

    engine = Engine(EngineConfig(local_host, psk_provider, peer_lookup), os.urandom)
    engine.provide_spis(allocspi_batch, now)        # keep the inbound SPI pool filled
    engine.initiate(peer_config, now)               # or wait for the peer to initiate
    # on a datagram from socket 500 or 4500 (dst is that socket's (address, port)):
    engine.receive_datagram(data, src, dst, now)
    # after every input, in this order:
    while (event := engine.next_event()) is not None:
        apply(event)                                # kernel SAs/policies, SpisNeeded, status
    for data, src, dst in engine.datagrams_to_send():
        socket_for(src[1]).sendto(data, dst)        # bytes include the non-ESP marker on 4500
    call_at(engine.get_timer(), engine.handle_timer)  # None: no timer needed

Datagrams received on the NAT-T port must be passed with ``dst[1] == nat_t_port`` so the
non-ESP marker is stripped (NAT keepalives are counted and ignored). Event semantics (in
particular make-before-break for rekeys) are documented in ``events.py``; the counters and
per-SA snapshots for metrics in ``stats.py`` (``engine.stats``, ``engine.snapshot()``).
Public names are re-exported here; everything else is internal.
"""

from kube_ipsec.ike.config import (
    ChildConfig,
    EngineConfig,
    Identity,
    Mode,
    PeerConfig,
    PskProvider,
)
from kube_ipsec.ike.engine import Datagram, Engine
from kube_ipsec.ike.events import (
    AuthenticationFailed,
    ChildSa,
    ChildSaDeleted,
    ChildSaEstablished,
    ChildSaFailed,
    ChildSaOutboundActivated,
    ChildSaRekeyed,
    Event,
    IkeSaDeleted,
    IkeSaEstablished,
    IkeSaRekeyed,
    NatDetected,
    NegotiationFailed,
    PeerDead,
    Reason,
    SaParams,
    SpisNeeded,
)
from kube_ipsec.ike.payloads import TrafficSelector
from kube_ipsec.ike.proposals import ChildProposal, IkeProposal
from kube_ipsec.ike.stats import ChildSnapshot, IkeSaSnapshot, Stats

__all__ = [
    "AuthenticationFailed", "ChildConfig", "ChildProposal", "ChildSa", "ChildSaDeleted",
    "ChildSaEstablished", "ChildSaFailed", "ChildSaOutboundActivated", "ChildSaRekeyed",
    "ChildSnapshot", "Datagram", "Engine", "EngineConfig", "Event", "Identity", "IkeProposal",
    "IkeSaDeleted", "IkeSaEstablished", "IkeSaRekeyed", "IkeSaSnapshot", "Mode",
    "NatDetected", "NegotiationFailed", "PeerConfig", "PeerDead", "PskProvider", "Reason",
    "SaParams", "SpisNeeded", "Stats", "TrafficSelector",
]
