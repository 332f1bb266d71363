"""``kube-ipsec-agent`` / ``python -m kube_ipsec.agent``: command line and logging."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence

from prometheus_client import disable_created_metrics

from kube_ipsec import contract
from kube_ipsec.agent import daemon


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record), "level": record.levelname,
                 "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def parse_args(argv: Sequence[str] | None = None) -> tuple[daemon.Options, str]:
    p = argparse.ArgumentParser(prog="kube-ipsec-agent", description=__doc__)
    p.add_argument("--node-name", default=os.environ.get("NODE_NAME"),
                   help="this node's name (default: $NODE_NAME)")
    p.add_argument("--namespace", default=os.environ.get(contract.NAMESPACE_ENV,
                                                         contract.DEFAULT_NAMESPACE),
                   help="namespace of the key Secrets (default: $KUBE_IPSEC_NAMESPACE)")
    p.add_argument("--kubeconfig", help="default: in-cluster service account, else ~/.kube")
    p.add_argument("--metrics-address", default="0.0.0.0")
    p.add_argument("--metrics-port", type=int, default=9101)
    p.add_argument("--ike-address", help="address to bind IKE to (default: the node's "
                   "first InternalIP)")
    p.add_argument("--ike-port", type=int, default=500)
    p.add_argument("--natt-port", type=int, default=4500)
    p.add_argument("--apiserver-port", type=int, action="append", dest="apiserver_ports",
                   help="TCP port(s) of the API server endpoints to keep in plaintext "
                   "(repeatable; default 6443, plus the kubeconfig server's port)")
    p.add_argument("--link-mtu", type=int, default=0, help="for the reported inner MTU "
                   "(default: the MTU of the interface holding the IKE address)")
    p.add_argument("--status-interval", type=float, default=30.0, help="heartbeat seconds")
    p.add_argument("--no-socket-bypass", action="store_true",
                   help="skip the per-socket XFRM bypass (tests without CAP_NET_ADMIN only)")
    p.add_argument("--fake-kernel", action="store_true",
                   help="in-memory kernel: negotiate but install nothing (development)")
    p.add_argument("--log-format", choices=["text", "json"], default="text")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    if not args.node_name:
        p.error("--node-name or $NODE_NAME is required")
    options = daemon.Options(
        node_name=args.node_name, namespace=args.namespace, kubeconfig=args.kubeconfig,
        metrics_address=args.metrics_address, metrics_port=args.metrics_port,
        ike_address=args.ike_address, ike_port=args.ike_port, natt_port=args.natt_port,
        apiserver_ports=tuple(args.apiserver_ports or (6443,)),
        socket_bypass=not args.no_socket_bypass, fake_kernel=args.fake_kernel,
        link_mtu=args.link_mtu, status_interval=args.status_interval,
    )
    return options, f"{args.log_format}:{args.log_level}"


def setup_logging(spec: str) -> None:
    fmt, level = spec.split(":", 1)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def main(argv: Sequence[str] | None = None) -> None:
    options, log_spec = parse_args(argv)
    setup_logging(log_spec)
    disable_created_metrics()
    asyncio.run(daemon.serve(options))


if __name__ == "__main__":
    main()
