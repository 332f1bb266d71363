"""``kube-ipsec-operator``: command line, logging, metrics endpoint, then kopf's loop.

The operator watches IPsecTunnels, IPsecNodes and Nodes cluster-wide, and Secrets only in its
own namespace (``--namespace`` or the environment variable the contract names), where the key
Secrets live. Replicas elect one active instance through kopf peering on a ClusterKopfPeering
object (its CRD ships with the chart: ``kube_ipsec/operator/peering-crd.yaml``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
from collections.abc import Sequence
from typing import Any

import kopf
import kubernetes

from kube_ipsec import contract
from kube_ipsec.operator import handlers, reconcile, secrets
from kube_ipsec.operator.metrics import Metrics

logger = logging.getLogger(__name__)

API_CONNECTIONS = 16  # the worker threads share one client; keep its pool as wide


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kube-ipsec-operator", description=__doc__)
    parser.add_argument(
        "--namespace", default=os.environ.get(contract.NAMESPACE_ENV, contract.DEFAULT_NAMESPACE),
        help=f"namespace of the key Secrets (default: ${contract.NAMESPACE_ENV} or "
             f"{contract.DEFAULT_NAMESPACE})")
    parser.add_argument("--resync-interval", type=float, default=10.0, metavar="SECONDS",
                        help="how often each tunnel is re-checked (default: 10)")
    parser.add_argument("--metrics-port", type=int, default=9090,
                        help="Prometheus metrics port; 0 disables (default: 9090)")
    parser.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", metavar="URL",
                        help="kopf liveness endpoint; empty disables")
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    parser.add_argument("--peering", default="kube-ipsec", metavar="NAME",
                        help="ClusterKopfPeering object shared by the replicas")
    parser.add_argument("--priority", type=int, default=None,
                        help="peering priority; the highest live replica is active "
                             "(default: random, so replicas never tie)")
    parser.add_argument("--peering-lifetime", type=int, default=60, metavar="SECONDS",
                        help="how long a silent replica counts as alive (failover delay)")
    parser.add_argument("--standalone", action="store_true",
                        help="no peering: for a single replica or development")
    return parser.parse_args(argv)


def api_client() -> Any:
    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config(client_configuration=configuration)
    configuration.connection_pool_maxsize = API_CONNECTIONS
    return kubernetes.client.ApiClient(configuration)


async def run(args: argparse.Namespace) -> None:
    config = handlers.Config(
        namespace=args.namespace,
        resync_interval=args.resync_interval,
        peering_name=args.peering,
        standalone=args.standalone,
        priority=args.priority if args.priority is not None else random.randint(1, 2**30),
        peering_lifetime=args.peering_lifetime,
    )
    client = api_client()
    metrics = Metrics()
    if args.metrics_port:
        metrics.serve(args.metrics_port)
    reconciler = reconcile.Reconciler(
        secrets.SecretStore(client, config.namespace), reconcile.TunnelStatusApi(client))
    op = handlers.Operator(config, reconciler, metrics, client)
    registry = kopf.OperatorRegistry()
    handlers.register(registry, op)
    settings = kopf.OperatorSettings()
    handlers.configure(settings, config)
    logger.info("Serving tunnels; key Secrets in namespace %s; peering %s.", config.namespace,
                "off" if config.standalone else f"{config.peering_name} "
                f"(priority {config.priority})")
    await kopf.operator(
        registry=registry,
        settings=settings,
        namespaces=[config.namespace],
        standalone=config.standalone,
        priority=config.priority,
        peering_name=None if config.standalone else config.peering_name,
        liveness_endpoint=args.liveness or None,
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    kopf.configure(
        verbose=args.verbose,
        log_format=kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.FULL,
    )
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
