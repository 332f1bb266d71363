"""Apply 500 IPsecTunnels at once to one operator on a real apiserver; time and count requests.

Starts etcd + kube-apiserver with the test fixture's code (``make k8s`` builds them), one
operator process (standalone), then creates N tunnels as fast as the client can and waits
until every one reports ``KeysDistributed=True``. Prints:

* the time until all tunnels have keys, against a reference measured in the same run: this
  client creating N Secrets itself, one request each (the least work N key Secrets can cost);
* the operator's CPU time per tunnel (unlike wall time, not inflated by a busy machine);
* API requests the operator made per tunnel, from the apiserver's ``apiserver_request_total``
  (the benchmark's own requests are counted and subtracted), by verb and resource;
* requests per tunnel per minute while idle (steady state, resync every ``--resync``), less
  the apiserver's own background requests measured over the same window before the operator.

    .venv/bin/python benchmarks/operator_scale.py [--tunnels 500] [--idle 30]
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kubernetes

from kube_ipsec import contract
from tests.fixtures.apiserver import APIServer, start_apiserver

METRIC = re.compile(r'^apiserver_request_total\{([^}]*)\} ([0-9.e+]+)$')


def request_totals(server: APIServer) -> collections.Counter[tuple[str, str]]:
    """apiserver_request_total summed by (verb, resource)."""
    ctx = ssl.create_default_context(cafile=str(server.ca_path))
    req = urllib.request.Request(f"{server.url}/metrics",  # noqa: S310 (https, fixed URL)
                                 headers={"Authorization": f"Bearer {server.token}"})
    with urllib.request.urlopen(req, context=ctx, timeout=30) as rsp:  # noqa: S310
        text = rsp.read().decode()
    totals: collections.Counter[tuple[str, str]] = collections.Counter()
    for line in text.splitlines():
        match = METRIC.match(line)
        if match:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
            totals[(labels.get("verb", ""), labels.get("resource", ""))] += int(
                float(match.group(2)))
    return totals


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (load on a shared machine does not inflate it)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def settle(server: APIServer, quiet: float = 3.0, limit: float = 180.0) -> None:
    """Wait until no tunnel is patched for ``quiet`` seconds (kopf's backlog drained)."""
    deadline = time.monotonic() + limit
    last = request_totals(server)[("PATCH", contract.TUNNEL_PLURAL)]
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = request_totals(server)[("PATCH", contract.TUNNEL_PLURAL)]
        if now == last:
            return
        last = now


def tunnel(name: str) -> dict[str, Any]:
    return {"apiVersion": contract.API_VERSION, "kind": contract.TUNNEL_KIND,
            "metadata": {"name": name},
            "spec": {"nodeSelector": {"matchLabels": {"bench": "none"}}}}


def keys_distributed(obj: dict[str, Any]) -> bool:
    return any(c.get("type") == contract.Condition.KEYS_DISTRIBUTED.value
               and c.get("status") == "True"
               for c in (obj.get("status") or {}).get("conditions") or [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tunnels", type=int, default=500)
    parser.add_argument("--idle", type=float, default=30.0, help="idle window to measure (s)")
    parser.add_argument("--resync", type=float, default=10.0, help="operator resync interval")
    args = parser.parse_args()
    n = args.tunnels

    tmp = Path(tempfile.mkdtemp(prefix="operator-scale-"))
    server = start_apiserver(tmp)
    operator = None
    try:
        client = server.api_client()
        core = kubernetes.client.CoreV1Api(client)
        custom = kubernetes.client.CustomObjectsApi(client)
        for ns in ("bench-ref", "bench-op"):
            core.create_namespace({"metadata": {"name": ns}})

        # Reference: N Secrets created directly, one request each.
        data = {"k": "AAAA"}
        started = time.monotonic()
        for i in range(n):
            core.create_namespaced_secret("bench-ref", {"metadata": {"name": f"ref-{i}"},
                                                        "data": data})
        reference = time.monotonic() - started

        baseline_start = request_totals(server)  # the apiserver's own background requests
        time.sleep(args.idle)
        baseline = sum((request_totals(server) - baseline_start).values())

        log = tmp / "operator.log"
        with log.open("wb") as out:
            operator = subprocess.Popen(
                [sys.executable, "-m", "kube_ipsec.operator", "--namespace", "bench-op",
                 "--standalone", "--metrics-port", "0", "--liveness", "",
                 "--resync-interval", str(args.resync)],
                stdout=out, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[1],
                env={**os.environ, "KUBECONFIG": str(server.kubeconfig)},
            )
        while "Initial authentication has finished" not in log.read_text(errors="replace"):
            if operator.poll() is not None:
                raise SystemExit(f"operator exited:\n{log.read_text()}")
            time.sleep(0.2)
        time.sleep(2)  # let its watches settle before counting

        before = request_totals(server)
        cpu_before = cpu_seconds(operator.pid)
        own: collections.Counter[tuple[str, str]] = collections.Counter()
        started = time.monotonic()
        for i in range(n):
            custom.create_cluster_custom_object(
                contract.GROUP, contract.VERSION, contract.TUNNEL_PLURAL, tunnel(f"t{i:04d}"))
        own[("POST", contract.TUNNEL_PLURAL)] += n
        created = time.monotonic() - started
        ready = 0
        while ready < n:
            time.sleep(0.5)
            items = custom.list_cluster_custom_object(
                contract.GROUP, contract.VERSION, contract.TUNNEL_PLURAL)["items"]
            own[("LIST", contract.TUNNEL_PLURAL)] += 1
            ready = sum(1 for obj in items if keys_distributed(obj))
            if operator.poll() is not None:
                raise SystemExit(f"operator exited:\n{log.read_text()[-3000:]}")
        elapsed = time.monotonic() - started
        cpu_ready = cpu_seconds(operator.pid) - cpu_before
        settle(server)  # kopf's own bookkeeping (finalizers, handler progress) may lag
        after = request_totals(server)
        by_kind = (after - before) - own
        total = sum(by_kind.values())

        idle_start = request_totals(server)
        time.sleep(args.idle)
        idle_by_kind = request_totals(server) - idle_start
        idle = sum(idle_by_kind.values()) - baseline
        secrets = len(core.list_namespaced_secret(
            "bench-op", label_selector=f"{contract.LABEL_COMPONENT}={contract.COMPONENT_KEYS}"
        ).items)
    finally:
        if operator is not None:
            operator.terminate()
            operator.wait(timeout=30)
        server.close()

    print(f"tunnels: {n}, key Secrets: {secrets}")
    print(f"reference, {n} Secrets created by the client itself: {reference:.2f} s")
    print(f"tunnel creation requests took {created:.2f} s")
    print(f"all KeysDistributed after: {elapsed:.2f} s "
          f"(ratio to reference {elapsed / reference:.2f}x)")
    print(f"operator CPU until all ready: {cpu_ready:.1f} s = "
          f"{cpu_ready / n * 1000:.1f} ms per tunnel")
    print(f"operator API requests (until quiet): {total} = {total / n:.2f} per tunnel")
    for (verb, resource), count in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"  {verb:7s} {resource or '(non-resource)':28s} {count:6d} "
              f"{count / n:6.2f}/tunnel")
    print(f"idle: {idle} requests in {args.idle:.0f} s = "
          f"{idle / n / (args.idle / 60):.3f} per tunnel per minute "
          f"(resync every {args.resync:.0f} s; {baseline} background requests subtracted)")
    for (verb, resource), count in sorted(idle_by_kind.items(), key=lambda kv: -kv[1]):
        print(f"  {verb:7s} {resource or '(non-resource)':28s} {count:6d}")


if __name__ == "__main__":
    main()
