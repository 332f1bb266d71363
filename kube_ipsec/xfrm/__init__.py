"""kube_ipsec.xfrm: the agent's only way to the kernel datapath (XFRM over netlink).

``NetlinkKernel`` talks to the kernel, ``FakeKernel`` stands in for it in tests; both
implement ``Kernel``. ``switch_sa_pair`` is the make-before-break rekey, ``reconcile`` the
restart adoption. Ownership constants (reqid and priority ranges) are in ``constants``.
"""

from kube_ipsec.xfrm.bypass import bypass_socket, enable_udp_encap
from kube_ipsec.xfrm.constants import (
    OWNED_PRIORITY_MAX,
    OWNED_PRIORITY_MIN,
    OWNED_REQID_MAX,
    OWNED_REQID_MIN,
    SPI_MAX,
    SPI_MIN,
)
from kube_ipsec.xfrm.errors import (
    AlgorithmUnsupported,
    InvalidRequest,
    NoSuchPolicy,
    NoSuchSa,
    PermissionDenied,
    PolicyExists,
    SaExists,
    SpiRangeExhausted,
    XfrmError,
)
from kube_ipsec.xfrm.fake import FakeKernel
from kube_ipsec.xfrm.kernel import EventStream, Kernel
from kube_ipsec.xfrm.model import (
    SA,
    Acquire,
    Action,
    Algorithm,
    Dir,
    Encap,
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
    Template,
    owned_policy,
    owned_sa,
)
from kube_ipsec.xfrm.netlink import NetlinkKernel
from kube_ipsec.xfrm.reconcile import Changes, flush_owned, reconcile
from kube_ipsec.xfrm.switch import SaPair, install_inbound, pin_outbound, switch_sa_pair

__all__ = [
    'OWNED_PRIORITY_MAX', 'OWNED_PRIORITY_MIN', 'OWNED_REQID_MAX', 'OWNED_REQID_MIN',
    'SA', 'SPI_MAX', 'SPI_MIN', 'Acquire', 'Action', 'Algorithm', 'AlgorithmUnsupported',
    'Changes', 'Dir', 'Encap', 'Event', 'EventStream', 'Expire', 'FakeKernel',
    'InvalidRequest', 'Kernel', 'Lifetime', 'Mark', 'Mode', 'NetlinkKernel', 'NoSuchPolicy',
    'NoSuchSa', 'PermissionDenied', 'Policy', 'PolicyExists', 'PolicyId', 'Proto', 'SaCounters',
    'SaExists', 'SaId', 'SaPair', 'Selector', 'SpiRangeExhausted', 'Template', 'XfrmError',
    'bypass_socket', 'enable_udp_encap', 'flush_owned', 'install_inbound', 'owned_policy',
    'owned_sa', 'pin_outbound', 'reconcile', 'switch_sa_pair',
]
