"""The kopf operator: key Secrets and acknowledged key rotation for IPsecTunnels.

Modules, from the bottom up:

* :mod:`~kube_ipsec.operator.rotation`: pure planning of key generations (the protocol).
* :mod:`~kube_ipsec.operator.nodes`: which Nodes a tunnel selects and what their IPsecNodes say.
* :mod:`~kube_ipsec.operator.status`: conditions and summaries; the smallest status patch.
* :mod:`~kube_ipsec.operator.secrets`: key Secret and peer PSK I/O with optimistic concurrency.
* :mod:`~kube_ipsec.operator.reconcile`: one reconciliation of one tunnel (blocking I/O).
* :mod:`~kube_ipsec.operator.metrics`: Prometheus metrics.
* :mod:`~kube_ipsec.operator.handlers`: kopf registrations that gather inputs and delegate.
* :mod:`~kube_ipsec.operator.__main__`: command line, logging, kopf's loop.

Decisions worth knowing before reading the code:

* All rotation state is in the API: the Secret's manifest (generations, ``createdAt``, current)
  and tunnel status. Due times derive from ``createdAt``; every Secret write carries the
  ``resourceVersion`` it was planned from. A restart or a failover resumes the rotation in
  progress and never starts a second one.
* On-demand rotation: set the annotation ``kube-ipsec.dev/rotate-now`` to a *new* value (e.g. a
  timestamp). The value is recorded in the Secret's ``kube-ipsec.dev/rotate-now-handled``
  annotation in the very write that stages the new generation, so it is acted on exactly once.
* ``KeysDistributed`` means the Secret holds a valid current generation (shown within seconds,
  before any agent runs); node acknowledgement is in ``nodes.acknowledged`` and ``Ready``.
* Generation numbers never go backwards: ``status.highestKeyGeneration`` is written before any
  Secret carrying a higher number, and a recreated Secret continues above it.
* A selected Node without an IPsecNode counts as not acknowledging: rotations wait for it
  (Degraded after the overlap) rather than retire a key it might use.

What a deployment needs (the Helm chart): the ClusterKopfPeering CRD in ``peering-crd.yaml``
next to this module; RBAC for get/list/watch on ipsectunnels, ipsecnodes, nodes and
customresourcedefinitions, patch on ipsectunnels and ipsectunnels/status, get/list/watch/patch
on clusterkopfpeerings (plus create if the chart does not make the peering object), all Secret
verbs in the operator namespace, and create on events.
"""
