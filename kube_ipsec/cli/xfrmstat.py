"""What each /proc/net/xfrm_stat counter means, and what it usually means in a kube-ipsec mesh.

The kernel's meanings follow Documentation/networking/xfrm_proc.rst; the causes and fixes are
ours (docs/troubleshooting.md says the same at length; a test keeps the two in step).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Counter:
    name: str
    meaning: str  # the kernel's definition
    cause: str  # the likely cause in a kube-ipsec mesh
    fix: str


_ROWS = [
    ("XfrmInError", "inbound error not covered by another counter",
     "often memory pressure or a kernel missing the ESP/AEAD modules",
     "check dmesg; make sure esp4/esp6 and the cipher's modules load"),
    ("XfrmInBufferError", "no buffer left for an inbound packet",
     "memory pressure on the node", "check node memory; not an IPsec misconfiguration"),
    ("XfrmInHdrError", "malformed inbound header",
     "truncated or mangled ESP packets, often an MTU/fragmentation problem on the path",
     "lower the pod MTU by the ESP overhead (~73 bytes with UDP encapsulation)"),
    ("XfrmInNoStates", "no SA for an inbound packet's SPI, address and protocol",
     "the peer sends with an SA this node does not have: a rekey or agent restart out of step, "
     "or an old SA removed too early",
     "kube-ipsec diagnose NODE; a steady rise means a peer keeps using a deleted SA: "
     "restart that peer's agent"),
    ("XfrmInStateProtoError", "protocol error, e.g. wrong SA key (ICV check failed)",
     "the two ends installed different keys: key generation skew or a corrupted Secret",
     "kube-ipsec status (key generation skew); rotate the tunnel if the Secret is suspect"),
    ("XfrmInStateModeError", "transformation mode error",
     "transport vs tunnel mode disagree between the two ends (external peer config)",
     "make spec.mode match the peer's configuration"),
    ("XfrmInStateSeqError", "sequence number outside the replay window",
     "reordering beyond the replay window (multipath, busy links) or replayed packets",
     "raise spec.replayWindow; a steady rise without reordering can be an attack"),
    ("XfrmInStateExpired", "inbound SA expired",
     "traffic arrives on an SA past its hard lifetime: rekeys are late",
     "check kube_ipsec_agent_rekeys_total and IKE failures on both nodes"),
    ("XfrmInStateMismatch", "SA option mismatch, e.g. UDP encapsulation type",
     "NAT traversal on one side only (ESP-in-UDP vs raw ESP)",
     "check for NAT between the nodes; both agents must agree on encapsulation"),
    ("XfrmInStateInvalid", "inbound SA is invalid",
     "an SA being deleted or not yet complete during a rekey",
     "transient during rekeys; persistent means a stuck agent: restart it"),
    ("XfrmInTmplMismatch", "SAs are right but the policy template does not match",
     "policy and SA disagree (reqid/mode) after a partial update",
     "restart the agent (it reconciles its policies and SAs on start)"),
    ("XfrmInNoPols", "no policy for an inbound IPsec packet",
     "this node removed its policy (tunnel deleted or node deselected) while the peer still "
     "encrypts",
     "check the peer's IPsecNode: it should drop the pair within a reconcile"),
    ("XfrmInPolBlock", "inbound packet dropped by a block policy",
     "enforcement: require is blocking plaintext from a peer that has no SA yet",
     "kube-ipsec diagnose NODE; use allow-plaintext while migrating"),
    ("XfrmInPolError", "inbound policy error", "kernel policy error",
     "check dmesg; restart the agent to rebuild its policies"),
    ("XfrmAcquireError", "state not fully acquired before use",
     "traffic started before IKE finished (an ACQUIRE pending)",
     "transient at start; persistent means IKE fails: see kube_ipsec_agent_ike_failures_total"),
    ("XfrmFwdHdrError", "forwarding of a packet not allowed",
     "tunnel-mode traffic forwarded without a forward policy",
     "check spec.mode and the pod CIDRs on both nodes"),
    ("XfrmOutError", "outbound error not covered by another counter",
     "often a kernel missing the ESP/AEAD modules or memory pressure",
     "check dmesg and the kernel modules"),
    ("XfrmOutBundleGenError", "outbound bundle generation error",
     "the route for the encrypted packet failed (policy points at an unroutable peer)",
     "check routes between node addresses"),
    ("XfrmOutBundleCheckError", "outbound bundle check error",
     "a cached bundle went stale during an SA or route change",
     "transient; persistent means route flapping"),
    ("XfrmOutNoStates", "no SA for an outbound packet that a policy requires",
     "the policy is installed but IKE has not (yet) produced an SA: peer down, IKE failing",
     "kube-ipsec diagnose NODE --peer PEER; check UDP 500/4500 between the nodes"),
    ("XfrmOutStateProtoError", "outbound protocol error", "encryption failed in the kernel",
     "check dmesg and the cipher's kernel modules"),
    ("XfrmOutStateModeError", "outbound mode error",
     "mode-specific failure, e.g. MTU in tunnel mode",
     "check MTU and spec.mode"),
    ("XfrmOutStateSeqError", "outbound sequence number overflow",
     "an SA ran out of sequence numbers before being rekeyed (esn: false or rekey failing)",
     "enable spec.esn; alert KubeIPsecSeqHeadroomLow fires before this"),
    ("XfrmOutStateExpired", "outbound SA expired",
     "the SA hit its hard lifetime before a rekey replaced it",
     "check IKE failures; lifetimes too short for the rekey to finish"),
    ("XfrmOutPolBlock", "outbound packet dropped by a block policy",
     "enforcement: require blocks plaintext to a mesh peer without an SA (fail-closed)",
     "kube-ipsec diagnose NODE; allow-plaintext during migration"),
    ("XfrmOutPolDead", "outbound policy is dead",
     "a policy was deleted while packets were using it (agent updating policies)",
     "transient during updates"),
    ("XfrmOutPolError", "outbound policy error", "kernel policy error",
     "check dmesg; restart the agent to rebuild its policies"),
    ("XfrmOutStateInvalid", "outbound SA invalid, perhaps expired",
     "an SA being replaced during a rekey", "transient; persistent means rekeys fail"),
    ("XfrmOutStateDirError", "outbound packet hit an SA marked for the inbound direction",
     "SA direction attribute set wrongly", "restart the agent; report a bug"),
    ("XfrmInStateDirError", "inbound packet hit an SA marked for the outbound direction",
     "SA direction attribute set wrongly", "restart the agent; report a bug"),
    ("XfrmInIptfsError", "IP-TFS inbound error", "not used by kube-ipsec (no IP-TFS SAs)",
     "check for other IPsec software on the node"),
    ("XfrmOutNoQueueSpace", "no queue space for an outbound packet",
     "packets queued while an SA is being acquired overflowed the queue",
     "persistent means IKE does not complete: check IKE failures"),
]

COUNTERS: dict[str, Counter] = {row[0]: Counter(*row) for row in _ROWS}


def explain(name: str) -> Counter:
    """The counter's entry; unknown (newer kernel) counters get a generic one."""
    return COUNTERS.get(name) or Counter(
        name, "see the kernel's Documentation/networking/xfrm_proc.rst", "unknown", "—"
    )
