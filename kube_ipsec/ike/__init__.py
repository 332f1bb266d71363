"""Sans-IO IKEv2 (RFC 7296) for the node agent: bytes, timer ticks and API calls in; datagrams,
one deadline and events out. No sockets, asyncio, clock or OS randomness inside: ``now`` is a
parameter and randomness an injected ``random(n) -> bytes``.

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
