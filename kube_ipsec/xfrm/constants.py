"""XFRM netlink numbers (``include/uapi/linux/xfrm.h``) and kube-ipsec's ownership convention.

Spelled as in the kernel header, with pyroute2's ``map_namespace`` reverse maps, so a decoded
message can be read next to the C source. The values were checked against Debian's
linux-libc-dev 6.1 header (see ``research/ikev2.md`` §6).

Ownership: the kernel's SAD/SPD are shared with anything else on the node (strongSwan, Cilium,
an admin's ``ip xfrm``). kube-ipsec only ever touches objects it can recognise as its own:

* an SA (larval ones from ALLOCSPI included) is ours iff its ``reqid`` is in
  ``OWNED_REQID_MIN..OWNED_REQID_MAX``;
* a policy is ours iff one of its templates carries such a reqid, or, for a template-less
  policy (the fail-closed ``block`` policy), iff its priority is in
  ``OWNED_PRIORITY_MIN..OWNED_PRIORITY_MAX``.

Marks are deliberately *not* the ownership tag: a mark on an SA or policy changes which
packets it matches, and CNIs (Cilium, Calico) already use skb marks for their own purposes.
"""

from pyroute2.common import map_namespace

# Ownership (see the module docstring). 0x6b69 is "ki".
OWNED_REQID_MIN = 0x6B690000
OWNED_REQID_MAX = 0x6B69FFFF
OWNED_PRIORITY_MIN = 0x6B690000
OWNED_PRIORITY_MAX = 0x6B69FFFF
# Kernel-chosen inbound SPIs come from this range by default (strongSwan uses 0xc0000000..;
# a disjoint range keeps the two recognisable side by side). SPIs 1..255 are reserved.
SPI_MIN = 0xD0000000
SPI_MAX = 0xDFFFFFFF

# message types
XFRM_MSG_NEWSA = 0x10
XFRM_MSG_DELSA = 0x11
XFRM_MSG_GETSA = 0x12
XFRM_MSG_NEWPOLICY = 0x13
XFRM_MSG_DELPOLICY = 0x14
XFRM_MSG_GETPOLICY = 0x15
XFRM_MSG_ALLOCSPI = 0x16
XFRM_MSG_ACQUIRE = 0x17
XFRM_MSG_EXPIRE = 0x18
XFRM_MSG_UPDPOLICY = 0x19
XFRM_MSG_UPDSA = 0x1A
XFRM_MSG_POLEXPIRE = 0x1B
XFRM_MSG_FLUSHSA = 0x1C
XFRM_MSG_FLUSHPOLICY = 0x1D
XFRM_MSG_NEWAE = 0x1E
XFRM_MSG_GETAE = 0x1F
XFRM_MSG_REPORT = 0x20
XFRM_MSG_MIGRATE = 0x21
XFRM_MSG_MAPPING = 0x26
(XFRM_MSG_NAMES, XFRM_MSG_VALUES) = map_namespace('XFRM_MSG', globals())

# multicast groups (numbers for add_membership; bind masks are 1 << (n - 1))
XFRMNLGRP_ACQUIRE = 1
XFRMNLGRP_EXPIRE = 2
XFRMNLGRP_SA = 3
XFRMNLGRP_POLICY = 4
XFRMNLGRP_AEVENTS = 5
XFRMNLGRP_REPORT = 6
XFRMNLGRP_MIGRATE = 7
XFRMNLGRP_MAPPING = 8
(XFRMNLGRP_NAMES, XFRMNLGRP_VALUES) = map_namespace('XFRMNLGRP', globals())

# xfrm_usersa_info.flags
XFRM_STATE_NOECN = 1
XFRM_STATE_DECAP_DSCP = 2
XFRM_STATE_NOPMTUDISC = 4
XFRM_STATE_WILDRECV = 8
XFRM_STATE_ICMP = 16
XFRM_STATE_AF_UNSPEC = 32
XFRM_STATE_ALIGN4 = 64
XFRM_STATE_ESN = 128
(XFRM_STATE_NAMES, XFRM_STATE_VALUES) = map_namespace('XFRM_STATE', globals())

XFRM_MODE_TRANSPORT = 0
XFRM_MODE_TUNNEL = 1
XFRM_MODE_BEET = 4

XFRM_POLICY_IN = 0
XFRM_POLICY_OUT = 1
XFRM_POLICY_FWD = 2
XFRM_POLICY_MAX = 3  # per-socket policies are reported with dir = XFRM_POLICY_MAX + dir
XFRM_POLICY_ALLOW = 0
XFRM_POLICY_BLOCK = 1
XFRM_POLICY_TYPE_MAIN = 0
XFRM_SHARE_ANY = 0

# infinite lifetime
XFRM_INF = 0xFFFFFFFFFFFFFFFF

# UDP encapsulation (NAT-T) and the per-socket policy options
UDP_ENCAP = 100
UDP_ENCAP_ESPINUDP = 2
IP_XFRM_POLICY = 17
IPV6_XFRM_POLICY = 34

IPPROTO_ESP = 50
IPPROTO_AH = 51
