"""The lab's guest script (``make demo``): three nodes, three agents, one tunnel, shown working.

Runs inside the VM, under ``hack/lab/hostside.py`` (see hack/lab/README.md). Steps: node
namespaces on a bridge; one agent per node; ``examples/tunnel.yaml`` applied through the API;
tunnel Ready and the IPsecNodes; ping and a TCP transfer between every pair with ESP on the
wire and no plaintext; a key rotation under a 1000 packets/s UDP stream (acknowledged by all
nodes, old key retired by the operator, packets lost); the agents' metrics. Exit 0 when every
check held.
"""

from __future__ import annotations

import contextlib
import itertools
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from kube_ipsec import contract  # noqa: E402
from tests.e2e import lab_cluster as lc  # noqa: E402

T0 = time.monotonic()
results: list[tuple[str, bool, str]] = []


def say(msg: str) -> None:
    print(f"[lab {time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def check(what: str, ok: bool, detail: str = "") -> bool:
    results.append((what, ok, detail))
    say(f"{'OK  ' if ok else 'FAIL'} {what}{': ' + detail if detail else ''}")
    return ok


def kubectl(cfg: lc.LabConfig, *args: str) -> None:
    out = subprocess.run([cfg.kubectl, "--kubeconfig", cfg.kubeconfig, *args],
                         capture_output=True, text=True, timeout=60)
    print(out.stdout + out.stderr, end="", flush=True)


def main() -> int:
    cfg = lc.load_config()
    kube, lab = lc.Kube(cfg), lc.Lab(cfg)
    names = list(cfg.nodes)
    addresses = set(cfg.nodes.values())
    say(f"nodes {', '.join(f'{n}={a}' for n, a in cfg.nodes.items())} on bridge {lc.BRIDGE}; "
        f"API server {cfg.server}")
    lab.setup_network()
    tunnel_doc = yaml.safe_load((REPO / "examples" / "tunnel.yaml").read_text())
    tunnel = tunnel_doc["metadata"]["name"]
    try:
        for name in names:
            lab.start_agent(name)
        say(f"agents starting, one per node namespace (logs: {cfg.workdir}/agent-*.log); "
            "Python imports "
            "take a while under TCG")
        for name in names:
            lab.wait_ready(name)
        say("agents ready (watchers synced, IKE sockets bound)")
        t_apply = time.monotonic()
        kube.apply_tunnel(tunnel_doc)
        say(f"applied examples/tunnel.yaml (IPsecTunnel {tunnel}: {tunnel_doc['spec']['mode']}, "
            f"{tunnel_doc['spec']['cipher']})")
        lc.eventually(lambda: all(lc.pair_up(kube.ipsec_node(n), tunnel, set(names) - {n})
                                  for n in names), 600, "every node reports every peer up", 2)
        lc.eventually(lambda: lc.mesh_sas_ok(lab, names), 60, "ESP SAs in every node")
        check("all node pairs encrypted", True, f"{time.monotonic() - t_apply:.1f} s after apply")
        ready = lc.eventually(lambda: lc.tunnel_condition(kube.tunnel(tunnel), "Ready") == "True",
                              120, "tunnel Ready", 2)
        check("IPsecTunnel Ready", ready)
        kubectl(cfg, "get", "ipsectunnels")
        kubectl(cfg, "get", "ipsecnodes")
        show_wire(lab, names, addresses)
        rotate_under_traffic(kube, lab, tunnel, names)
        show_metrics(lab, names)
    except Exception as exc:  # show what the agents said, then fail
        check("lab", False, f"{type(exc).__name__}: {exc}")
        for name in names:
            print(f"--- agent {name} (last lines) ---\n{lab.agent_log_tail(name)}")
    finally:
        lab.stop_all()
    print("\n=== summary ===")
    for what, ok, detail in results:
        print(f"  {'OK  ' if ok else 'FAIL'} {what}{': ' + detail if detail else ''}")
    failed = [r for r in results if not r[1]]
    print(f"  {len(results) - len(failed)}/{len(results)} checks passed "
          f"in {time.monotonic() - T0:.0f} s")
    return 1 if failed or not results else 0


def show_wire(lab: lc.Lab, names: list[str], addresses: set[str]) -> None:
    with contextlib.ExitStack() as stack:
        captures = [stack.enter_context(lc.capture(n, Path(lab.workdir) / f"wire-{n}.pcap"))
                    for n in names]
        pings = {(a, b): lab.ping(a, lab.nodes[b]) for a, b in itertools.permutations(names, 2)}
        tcp = lab.tcp_transfer(names[0], names[1], megabytes=2)
    counts = lc.classify([p for c in captures for p in lc.wire_packets(c)], addresses)
    check("ping between every pair", all(pings.values()),
          ", ".join(f"{a}->{b} {'ok' if ok else 'lost'}" for (a, b), ok in pings.items()))
    check(f"TCP transfer {names[0]}->{names[1]} (2 MiB, socat)", tcp)
    check("on the wire: ESP only, no plaintext between nodes",
          counts["esp"] > 0 and counts["plaintext"] == 0,
          f"{counts['esp']} ESP, {counts['plaintext']} plaintext, {counts['ike']} IKE packets")
    for name in names:
        spis = sorted({f"{s.spi:08x}" for s in lab.sas(name) if s.proto == "esp"})
        say(f"{name}: ESP SAs in the kernel, SPIs {' '.join(spis)}")


def rotate_under_traffic(kube: lc.Kube, lab: lc.Lab, tunnel: str, names: list[str]) -> None:
    before = kube.key_manifest(tunnel)["current"]
    stream = lc.Stream(lab, names[0], names[1], rate=1000)
    try:
        time.sleep(2)
        t0 = time.monotonic()
        kube.annotate_tunnel(tunnel, contract.ANNOTATION_ROTATE_NOW, f"demo-{int(time.time())}")
        say(f"rotation requested ({contract.ANNOTATION_ROTATE_NOW}); key generation {before}; "
            f"UDP stream {names[0]}->{names[1]} at 1000 packets/s")
        new = before + 1
        lc.eventually(lambda: all(contract.node_generation_in_use(kube.ipsec_node(n), tunnel)
                                  == new for n in names), 600, f"every node using gen {new}", 2)
        t_ack = time.monotonic() - t0
        manifest = lc.eventually(
            lambda: (m := kube.key_manifest(tunnel))["current"] == new
            and [g["generation"] for g in m["generations"]] == [new] and m, 300,
            f"generation {before} retired", 2)
        t_retired = time.monotonic() - t0
        time.sleep(2)
    finally:
        sent, got = stream.stop()
    lost = sent["sent"] - got["unique"]
    check(f"key generation {new} acknowledged by all {len(names)} nodes", True,
          f"{t_ack:.1f} s after the request")
    check(f"old generation {before} retired by the operator", bool(manifest),
          f"{t_retired:.1f} s after the request")
    check("rotation under 1000 packets/s loses nothing", lost == 0 and not sent["send_errors"],
          f"{stream.describe(sent, got)} (rotation requested at t+{t0 - stream.started:.2f}s)")


def show_metrics(lab: lc.Lab, names: list[str]) -> None:
    for name in names:
        text = lab.metrics(name)
        say(f"curl http://{lab.nodes[name]}:{lc.METRICS_PORT}/metrics ({name}), selected:")
        for line in lc.metric_lines(text, "kube_ipsec_agent_peers",
                                    "kube_ipsec_agent_key_generation_in_use",
                                    "kube_ipsec_agent_rekeys_total"):
            print(f"    {line}")
    check("metrics served by every agent", all(lab.metrics(n) for n in names))


if __name__ == "__main__":
    sys.exit(main())
