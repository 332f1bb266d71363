"""kube-ipsec: IPsec (IKEv2 + kernel XFRM) between Kubernetes nodes, keyed by an operator.

Layers, top to bottom (imports only point down; ``tests/test_layers.py`` enforces it):
``agent`` and ``operator`` (independent of each other), ``ike`` and ``xfrm`` (independent of
each other), ``contract``.
"""

__version__ = "0.1.0"
