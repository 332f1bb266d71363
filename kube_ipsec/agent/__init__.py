"""The node agent: turns IPsecTunnels into IKEv2-negotiated XFRM state on its node.

Modules, top-down (each with one job; the daemon wires them):

- ``__main__``  command line (``kube-ipsec-agent``) and logging
- ``daemon``    start-up order, the status/metrics loops, graceful shutdown (SAs stay)
- ``watchers``  list+watch of IPsecTunnels, Nodes and key Secrets over ``kube``; survives outages
- ``desired``   pure: the cluster snapshot -> this node's desired peers
- ``peers``     the IKE engine's events applied to the kernel in order, one ``Peer`` per peer
- ``peerstate`` the per-peer data (policies, Child SAs in the kernel, status) ``peers`` keeps
- ``translate`` pure: desired peers / Child SAs -> IKE config and XFRM policies/SAs
- ``ikesocket`` the UDP 500/4500 sockets (XFRM bypass, UDP_ENCAP)
- ``status``    the IPsecNode status (rendered purely) and its writer
- ``metrics``   Prometheus metrics and the /metrics, /healthz, /readyz endpoint
- ``mtu``       pure: the inner MTU left after ESP/AH

Running one agent per network namespace (the lab)::

    ip netns exec node-a kube-ipsec-agent --node-name node-a --kubeconfig lab.kubeconfig \\
        --namespace kube-ipsec --metrics-port 9101

The IKE address defaults to the Node's first InternalIP (``--ike-address`` overrides it), so
the lab's Node objects must carry each namespace's address. Peers always use the same IKE
ports as we do (``--ike-port``/``--natt-port``), so agents side by side in one namespace need
distinct addresses (e.g. 127.0.0.1 and 127.0.0.2), not distinct ports.
"""
