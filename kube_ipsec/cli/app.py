"""``kube-ipsec``: status, rotate and diagnose from a workstation (or the image).

It reads the API objects both components publish (IPsecTunnel status, IPsecNode status) and,
with ``--metrics``, the agents' /metrics through the API server's pod proxy. It writes only
the rotate-now annotation.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from kube_ipsec import contract
from kube_ipsec.cli import render, report
from kube_ipsec.cli.cluster import Cluster, ClusterError, KubeCluster

AGENT_METRICS_PORT = 9101


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kube-ipsec", description="Inspect and operate a kube-ipsec IPsec mesh."
    )
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube)")
    parser.add_argument("--context", help="kubeconfig context")
    parser.add_argument(
        "-n", "--namespace",
        default=os.environ.get(contract.NAMESPACE_ENV, contract.DEFAULT_NAMESPACE),
        help=f"kube-ipsec's namespace (default: ${contract.NAMESPACE_ENV} or "
             f"{contract.DEFAULT_NAMESPACE})",
    )
    parser.add_argument("-o", "--output", choices=["table", "json"], default="table")
    # -o also after the subcommand (kube-ipsec status -o json), as kubectl users type it.
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("-o", "--output", choices=["table", "json"], default=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)

    st = sub.add_parser("status", parents=[output],
                        help="tunnels, nodes, per-peer SA state, key generation skew")
    st.add_argument("--metrics", action="store_true",
                    help="also read each agent's xfrm_stat counters (needs pods/proxy)")
    st.add_argument("--metrics-port", type=int, default=AGENT_METRICS_PORT)
    st.add_argument("--stale-after", type=int, default=120, metavar="SECONDS",
                    help="heartbeat age after which a node counts as stale")

    rot = sub.add_parser("rotate", parents=[output], help="start a key rotation now")
    rot.add_argument("tunnel")

    diag = sub.add_parser("diagnose", parents=[output],
                          help="explain why a node's pairs are (not) encrypted")
    diag.add_argument("node")
    diag.add_argument("--peer", help="only this peer (node or external peer name)")
    diag.add_argument("--tunnel", help="only this IPsecTunnel")
    diag.add_argument("--stale-after", type=int, default=120, metavar="SECONDS")
    return parser


def _snapshot(cluster: Cluster, now: datetime.datetime) -> report.Snapshot:
    return report.Snapshot(cluster.tunnels(), cluster.ipsec_nodes(), cluster.nodes(), now)


def run(argv: Sequence[str], cluster: Cluster, now: datetime.datetime,
        write: Callable[[str], Any]) -> int:
    """The CLI without process concerns: tests call this with a fake cluster and clock.

    Exit codes: 0 done (diagnose: encrypted), 1 diagnose found a problem, 2 request failed.
    """
    args = _parser().parse_args(argv)
    try:
        return _command(args, cluster, now, write)
    except ClusterError as exc:
        print(f"kube-ipsec: {exc}", file=sys.stderr)
        return 2


def _command(args: argparse.Namespace, cluster: Cluster, now: datetime.datetime,
             write: Callable[[str], Any]) -> int:
    as_json = args.output == "json"
    if args.command == "status":
        result = report.status(
            _snapshot(cluster, now), datetime.timedelta(seconds=args.stale_after)
        )
        if args.metrics:
            result["xfrm"] = report.xfrm_counters(
                cluster.agent_metrics(args.namespace, args.metrics_port)
            )
        write(json.dumps(result, indent=2) if as_json else render.status(result))
        return 0
    if args.command == "rotate":
        stamp = contract.utcnow_rfc3339(now)
        cluster.annotate_tunnel(args.tunnel, {contract.ANNOTATION_ROTATE_NOW: stamp})
        result = {"tunnel": args.tunnel, "annotation": contract.ANNOTATION_ROTATE_NOW,
                  "requestedAt": stamp}
        write(json.dumps(result, indent=2) if as_json else
              f"rotation of {args.tunnel} requested at {stamp}; "
              f"watch: kubectl get ipsectunnel {args.tunnel} -w")
        return 0
    result = report.diagnose(
        _snapshot(cluster, now), args.node, peer=args.peer, tunnel=args.tunnel,
        stale_after=datetime.timedelta(seconds=args.stale_after),
    )
    write(json.dumps(result, indent=2) if as_json else render.diagnosis(result))
    return 0 if result["encrypted"] else 1


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args, _ = _parser().parse_known_args(argv)  # --help and usage errors exit here
    try:
        cluster = KubeCluster.connect(args.kubeconfig, args.context)
    except ClusterError as exc:
        print(f"kube-ipsec: {exc}", file=sys.stderr)
        return 2
    try:
        return run(argv, cluster, datetime.datetime.now(datetime.UTC), print)
    except Exception as exc:  # connection problems: say what, not a traceback
        if type(exc).__module__.startswith(("kubernetes", "urllib3")):
            print(f"kube-ipsec: cannot reach the cluster: {exc}", file=sys.stderr)
            return 2
        raise
