"""The lab end to end (``make test-vm``): three real agents in the VM's kernel, a real
kube-apiserver and the operator on the host (hack/lab/hostside.py, see hack/lab/README.md).

We test these behaviours, in this order, on one lab (one VM boot, one set of agents):

- applying ``examples/tunnel.yaml`` encrypts every node pair: ping and a TCP transfer pass,
  the wire carries ESP and no plaintext between node addresses (time to all pairs printed);
- a key rotation under 1000 packets/s UDP streams (both ways) loses nothing, every node
  acknowledges the new generation and the operator retires the old one;
- ``kill -9`` of an agent and its restart (streams both ways) lose nothing and leave one SA
  per direction per pair;
- kube-apiserver stopped for 60 s: traffic continues, no agent dies, all report again after;
- a strongSwan gateway listed in ``spec.peers`` (PSK Secret) gets an encrypted tunnel;
- a Node deleted (and its agent stopped): its SAs and policies disappear from the others.
"""

from __future__ import annotations

import contextlib
import itertools
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kube_ipsec import contract
from tests.e2e import lab_cluster as lc
from tests.e2e.strongswan import Charon, peer_conn

pytestmark = pytest.mark.vm

REPO = Path(__file__).resolve().parents[2]
RATE = 1000


class Lab:
    """The shared lab: config, API client, topology, and the tunnel once it is up."""

    def __init__(self) -> None:
        self.cfg = lc.load_config()
        self.kube = lc.Kube(self.cfg)
        self.net = lc.Lab(self.cfg)
        self.names = list(self.cfg.nodes)
        self.tunnel = ""
        self.converged_after = 0.0

    def others(self, name: str) -> set[str]:
        return set(self.names) - {name}

    def all_up(self) -> bool:
        return all(lc.pair_up(self.kube.ipsec_node(n), self.tunnel, self.others(n))
                   for n in self.names)

    def one_sa_per_direction(self) -> bool:
        """Each node holds exactly one ESP SA for each direction of each of its pairs."""
        for name in self.names:
            per_pair = Counter((s.src, s.dst) for s in self.net.sas(name) if s.proto == "esp")
            want = {(self.cfg.nodes[name], self.cfg.nodes[o]) for o in self.others(name)}
            want |= {(b, a) for a, b in want}
            if set(per_pair) != want or any(n != 1 for n in per_pair.values()):
                return False
        return True


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    lab = Lab()
    lab.net.setup_network()
    try:
        for name in lab.names:
            lab.net.start_agent(name)
        t0 = time.monotonic()
        for name in lab.names:
            lab.net.wait_ready(name)
        print(f"\nlab: {len(lab.names)} agents ready {time.monotonic() - t0:.1f} s after start")
        doc = yaml.safe_load((REPO / "examples" / "tunnel.yaml").read_text())
        lab.tunnel = doc["metadata"]["name"]
        t0 = time.monotonic()
        lab.kube.apply_tunnel(doc)
        lc.eventually(lab.all_up, 600, "every node reports every peer up", 2)
        lc.eventually(lambda: lc.mesh_sas_ok(lab.net, lab.names), 60, "ESP SAs in every node")
        lab.converged_after = time.monotonic() - t0
        yield lab
    finally:
        print(f"\nlab logs: {lab.cfg.workdir}/agent-node-N.log (operator.log on the host)")
        lab.net.stop_all()
        lab.net.teardown_network()


def test_applied_tunnel_encrypts_every_pair(lab: Lab) -> None:
    print(f"\ntunnel applied -> all {len(lab.names)} nodes' pairs encrypted in "
          f"{lab.converged_after:.1f} s")
    lc.eventually(lambda: lc.tunnel_condition(lab.kube.tunnel(lab.tunnel), "Ready") == "True",
                  120, "tunnel Ready", 2)
    assert lab.kube.tunnel(lab.tunnel)["status"]["nodes"]["ready"] == len(lab.names)
    with contextlib.ExitStack() as stack:
        captures = [stack.enter_context(lc.capture(n)) for n in lab.names]
        pings = {(a, b): lab.net.ping(a, lab.cfg.nodes[b])
                 for a, b in itertools.permutations(lab.names, 2)}
        tcp = lab.net.tcp_transfer(lab.names[0], lab.names[2], megabytes=1)
    counts = lc.classify([p for c in captures for p in lc.wire_packets(c)],
                         set(lab.cfg.nodes.values()))
    print(f"wire: {counts}; pings {pings}; 1 MiB TCP {'ok' if tcp else 'failed'}")
    assert all(pings.values()) and tcp
    assert counts["esp"] > 0 and counts["plaintext"] == 0


def test_rotation_under_1000pps_loses_nothing(lab: Lab) -> None:
    before = lab.kube.key_manifest(lab.tunnel)["current"]
    new = before + 1
    streams = lc.Duplex(lab.net, lab.names[0], lab.names[1], rate=RATE)
    try:
        time.sleep(2)
        t0 = time.monotonic()
        lab.kube.annotate_tunnel(lab.tunnel, contract.ANNOTATION_ROTATE_NOW, f"e2e-{time.time()}")
        lc.eventually(lambda: all(
            contract.node_generation_in_use(lab.kube.ipsec_node(n), lab.tunnel) == new
            for n in lab.names), 600, f"every node uses generation {new}", 1)
        acked = time.monotonic() - t0
        lc.eventually(lambda: [g["generation"] for g in
                               lab.kube.key_manifest(lab.tunnel)["generations"]] == [new],
                      300, f"generation {before} retired", 1)
        retired = time.monotonic() - t0
        time.sleep(2)
    finally:
        results = streams.stop()
    print(f"\nrotation {before}->{new} under {RATE} pkt/s each way: acknowledged by all "
          f"{len(lab.names)} nodes after {acked:.1f} s, old key retired after {retired:.1f} s; "
          f"{lc.Duplex.describe(results)}")
    assert lab.kube.key_manifest(lab.tunnel)["current"] == new
    assert lc.Duplex.lost(results) == 0 and all(got["ended"] for _, _, got in results)
    lc.eventually(lab.one_sa_per_direction, 60, "old SAs gone after the rotation")


def test_agent_kill9_and_restart_lose_nothing(lab: Lab) -> None:
    victim = lab.names[1]
    streams = lc.Duplex(lab.net, lab.names[0], victim, rate=RATE)
    try:
        time.sleep(2)
        lab.net.stop_agent(victim, signal.SIGKILL)
        time.sleep(3)
        lab.net.start_agent(victim)
        t0 = time.monotonic()
        lab.net.wait_ready(victim)
        lc.eventually(lab.all_up, 300, "every pair up again", 2)
        recovered = time.monotonic() - t0
        lc.eventually(lab.one_sa_per_direction, 120, "one SA per direction per pair", 1)
        time.sleep(2)
    finally:
        results = streams.stop()
    print(f"\nkill -9 {victim}, restart: ready and all pairs up {recovered:.1f} s after the "
          f"restart; {lc.Duplex.describe(results)}; "
          f"SAs per node {[len(lab.net.sas(n)) for n in lab.names]}")
    assert lc.Duplex.lost(results) == 0


def test_apiserver_down_60s_traffic_continues_agents_recover(lab: Lab) -> None:
    control = lc.Control(lab.cfg)
    stream = lc.Stream(lab.net, lab.names[2], lab.names[0], rate=RATE)
    try:
        time.sleep(2)
        control.stop_apiserver()
        stopped = contract.utcnow_rfc3339()
        time.sleep(60)
        pings = [lab.net.ping(a, lab.cfg.nodes[b]) for a, b in
                 itertools.permutations(lab.names, 2)]
        dead = lab.net.dead_agents()
        control.start_apiserver()
        t0 = time.monotonic()
        lc.eventually(lambda: all((lab.kube.ipsec_node(n).get("status") or {})
                                  .get("heartbeat", "") > stopped for n in lab.names),
                      180, "every agent reports again", 2)
        reported = time.monotonic() - t0
    finally:
        sent, got = stream.stop()
    lost = sent["sent"] - got["unique"]
    print(f"\nkube-apiserver down 60 s: pings while down {pings}, agents died {dead}; "
          f"all agents reported {reported:.1f} s after it returned; "
          f"{stream.describe(sent, got)}")
    assert all(pings) and dead == {}
    assert lost == 0 and sent["send_errors"] == []
    assert lab.all_up()


GATEWAY, GATEWAY_ADDRESS = "gw", "10.0.2.20"


def test_strongswan_gateway_gets_an_encrypted_tunnel(lab: Lab) -> None:
    node = lab.names[0]
    lab.net.add_namespace(GATEWAY, GATEWAY_ADDRESS, "labvgw")
    psk = b"lab-gateway-psk-0123456789abcdef"
    charon = Charon(GATEWAY, Path(tempfile.mkdtemp(prefix="lab-charon-")))
    charon.start()
    try:
        conn = peer_conn(GATEWAY_ADDRESS, lab.cfg.nodes[node])
        conn["peer"]["local"]["id"], conn["peer"]["remote"]["id"] = GATEWAY, node
        charon.load(conn, psk, (GATEWAY, node))
        lab.kube.create_secret("gw-psk", {"psk": psk})
        lab.kube.apply_tunnel(gateway_tunnel(node))
        t0 = time.monotonic()
        lc.eventually(charon.children, 300, "a Child SA installed in charon", 2)
        up = time.monotonic() - t0
        with lc.capture(node) as cap:
            ok = lab.net.ping(node, GATEWAY_ADDRESS)
        counts = lc.classify(lc.wire_packets(cap), {lab.cfg.nodes[node], GATEWAY_ADDRESS})
        child = charon.children()[0]
        print(f"\nstrongSwan gateway: Child SA {child.get('encr-alg')}-{child.get('encr-keysize')} "
              f"{child.get('mode')} up {up:.1f} s after the tunnel; ping {ok}; wire {counts}")
        assert ok and counts["esp"] > 0 and counts["plaintext"] == 0
    except Exception:
        print(charon.log()[-3000:])
        raise
    finally:
        charon.stop()


def gateway_tunnel(node: str) -> dict[str, Any]:
    return {
        "apiVersion": contract.API_VERSION, "kind": contract.TUNNEL_KIND,
        "metadata": {"name": "gateway"},
        "spec": {
            "nodeSelector": {"matchLabels": {"kubernetes.io/hostname": node}},
            "mode": "transport", "cipher": "aes-gcm-256",
            "peers": [{"name": GATEWAY, "address": GATEWAY_ADDRESS,
                       "pskSecretRef": {"name": "gw-psk"}}],
        },
    }


def test_deleted_node_loses_its_sas_on_the_others(lab: Lab) -> None:
    gone = lab.names[2]
    address = lab.cfg.nodes[gone]
    lab.net.stop_agent(gone)
    t0 = time.monotonic()
    lab.kube.delete_node(gone)

    def forgotten() -> bool:
        return all(not any(address in (s.src, s.dst) for s in lab.net.sas(n))
                   and address not in lab.net.policies(n) for n in lab.names if n != gone)

    lc.eventually(forgotten, 180, f"SAs and policies with {gone} removed", 1)
    print(f"\nNode {gone} deleted: its SAs and policies gone from the others after "
          f"{time.monotonic() - t0:.1f} s")
    survivors = [n for n in lab.names if n != gone]
    assert lab.net.ping(survivors[0], lab.cfg.nodes[survivors[1]])
    assert lc.mesh_sas_ok(lab.net, survivors)
