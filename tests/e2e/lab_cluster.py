"""The lab's guest side: node namespaces, one real agent per node, and the checks on them.

Used by ``hack/lab/demo.py`` (``make demo``) and ``tests/e2e/test_lab.py`` (``make test-vm``),
both inside the VM, around the host side that ``hack/lab/hostside.py`` runs (kube-apiserver,
operator, Node objects; it passes ``KUBE_IPSEC_LAB``).

Topology: the guest's eth0 (qemu user network) is enslaved to a bridge ``labbr``; every node
is a network namespace with a veth on that bridge and its own address in 10.0.2.0/24. qemu's
user network answers for 10.0.2.2 to every address on that segment, so each node reaches the
API server directly, as a real node does, without NAT; node-to-node traffic never leaves the
bridge. The API client here is a few lines of ``http.client``: the ``kubernetes`` package
takes many seconds to import under TCG.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import ipaddress
import json
import os
import re
import signal
import ssl
import struct
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from kube_ipsec import contract
from tests import netns
from tests.netns import run

BRIDGE = "labbr"
METRICS_PORT = 9101
T = TypeVar("T")


@dataclass(frozen=True)
class LabConfig:
    """What the host side wrote into ``lab.json``."""

    server: str
    token: str = field(repr=False)
    ca: str = field(repr=False)
    kubeconfig: str
    kubectl: str
    namespace: str
    nodes: dict[str, str]
    control: str
    control_token: str = field(repr=False)
    workdir: str


def load_config() -> LabConfig:
    path = os.environ.get("KUBE_IPSEC_LAB")
    if not path:
        raise RuntimeError("KUBE_IPSEC_LAB is not set: run the lab through hack/lab/hostside.py "
                           "(make demo / make test-vm)")
    return LabConfig(**json.loads(Path(path).read_text()))


def eventually(check: Callable[[], T], timeout: float, what: str, interval: float = 0.5) -> T:
    """Poll ``check`` until it returns something truthy; raise naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except (OSError, ApiError) as exc:  # the API may be down on purpose
            last = exc
        if last and not isinstance(last, Exception):
            return last
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s (last: {last!r})")
        time.sleep(interval)


class ApiError(Exception):
    def __init__(self, status: int, text: str) -> None:
        super().__init__(f"HTTP {status}: {text[:200]}")
        self.status = status


class Kube:
    """JSON requests to the lab's kube-apiserver with the admin token."""

    def __init__(self, cfg: LabConfig) -> None:
        url = urllib.parse.urlsplit(cfg.server)
        self.host, self.port = url.hostname or "", url.port or 443
        self.token = cfg.token
        self.ctx = ssl.create_default_context(cadata=cfg.ca)
        self.namespace = cfg.namespace

    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/json") -> Any:
        conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=15)
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        data = None
        if body is not None:
            data, headers["Content-Type"] = json.dumps(body), content_type
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            text = resp.read().decode()
        finally:
            conn.close()
        if resp.status >= 300:
            raise ApiError(resp.status, text)
        return json.loads(text) if text else None

    # the lab's objects
    _CUSTOM = f"/apis/{contract.GROUP}/{contract.VERSION}"

    def apply_tunnel(self, doc: dict[str, Any]) -> None:
        try:
            self.request("POST", f"{self._CUSTOM}/{contract.TUNNEL_PLURAL}", doc)
        except ApiError as exc:
            if exc.status != 409:
                raise
            self.request("PATCH", f"{self._CUSTOM}/{contract.TUNNEL_PLURAL}/"
                         f"{doc['metadata']['name']}", {"spec": doc["spec"]},
                         "application/merge-patch+json")

    def tunnel(self, name: str) -> dict[str, Any]:
        return dict(self.request("GET", f"{self._CUSTOM}/{contract.TUNNEL_PLURAL}/{name}"))

    def ipsec_node(self, name: str) -> dict[str, Any]:
        try:
            return dict(self.request("GET", f"{self._CUSTOM}/{contract.NODE_PLURAL}/{name}"))
        except ApiError as exc:
            if exc.status == 404:
                return {}
            raise

    def annotate_tunnel(self, name: str, key: str, value: str) -> None:
        self.request("PATCH", f"{self._CUSTOM}/{contract.TUNNEL_PLURAL}/{name}",
                     {"metadata": {"annotations": {key: value}}}, "application/merge-patch+json")

    def key_manifest(self, tunnel: str) -> dict[str, Any]:
        """The key Secret's manifest (generation numbers and current; never the keys)."""
        secret = self.request("GET", f"/api/v1/namespaces/{self.namespace}/secrets/"
                              f"{contract.secret_name(tunnel)}")
        raw = base64.b64decode(secret["data"][contract.SECRET_MANIFEST])
        return dict(json.loads(raw))

    def create_secret(self, name: str, data: dict[str, bytes]) -> None:
        self.request("POST", f"/api/v1/namespaces/{self.namespace}/secrets", {
            "metadata": {"name": name},
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()}})

    def delete_node(self, name: str) -> None:
        self.request("DELETE", f"/api/v1/nodes/{name}")


class Control:
    """The host side's control endpoint (stop/start kube-apiserver)."""

    def __init__(self, cfg: LabConfig) -> None:
        url = urllib.parse.urlsplit(cfg.control)
        self.host, self.port, self.token = url.hostname or "", url.port or 80, cfg.control_token

    def _post(self, path: str) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=180)
        try:
            conn.request("POST", path, headers={"Authorization": f"Bearer {self.token}"})
            status = conn.getresponse().status
        finally:
            conn.close()
        if status != 204:
            raise RuntimeError(f"control {path}: HTTP {status}")

    def stop_apiserver(self) -> None:
        self._post("/apiserver/stop")

    def start_apiserver(self) -> None:
        self._post("/apiserver/start")


@dataclass(frozen=True)
class KernelSA:
    src: str
    dst: str
    proto: str
    spi: int
    mode: str


_SA_HEAD = re.compile(r"^src (\S+) dst (\S+)$")
_SA_PROTO = re.compile(r"^\s+proto (\S+) spi (0x[0-9a-f]+) reqid \d+ mode (\S+)")


def parse_xfrm_state(text: str) -> list[KernelSA]:
    """SAs from ``ip xfrm state`` output: addresses, protocol, SPI, mode (keys are skipped)."""
    sas, head = [], None
    for line in text.splitlines():
        if m := _SA_HEAD.match(line):
            head = m.groups()
        elif (m := _SA_PROTO.match(line)) and head:
            sas.append(KernelSA(head[0], head[1], m[1], int(m[2], 16), m[3]))
            head = None
    return sas


class Lab:
    """Node namespaces on the bridge, and the agent process of each."""

    def __init__(self, cfg: LabConfig) -> None:
        self.cfg = cfg
        self.workdir = Path(cfg.workdir)
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self.port_of: dict[str, str] = {}

    @property
    def nodes(self) -> dict[str, str]:
        return self.cfg.nodes

    def setup_network(self, extra: dict[str, str] | None = None) -> None:
        """Bridge eth0 and one namespace per node (plus ``extra`` name -> address)."""
        run("ip", "link", "add", BRIDGE, "type", "bridge")
        run("ip", "link", "set", "eth0", "master", BRIDGE)
        run("ip", "addr", "del", "10.0.2.15/24", "dev", "eth0")
        run("ip", "addr", "add", "10.0.2.15/24", "dev", BRIDGE)
        run("ip", "link", "set", BRIDGE, "up")
        run("ip", "route", "replace", "default", "via", "10.0.2.2")
        for i, (name, address) in enumerate({**self.nodes, **(extra or {})}.items()):
            self.add_namespace(name, address, f"labv{i}")

    def teardown_network(self) -> None:
        """Delete the namespaces and the bridge; eth0 gets its address back."""
        for name in self.port_of:
            run("ip", "netns", "del", name, check=False)
        self.port_of.clear()
        run("ip", "link", "del", BRIDGE, check=False)
        run("ip", "addr", "replace", "10.0.2.15/24", "dev", "eth0", check=False)
        run("ip", "route", "replace", "default", "via", "10.0.2.2", check=False)

    def add_namespace(self, name: str, address: str, port: str) -> None:
        run("ip", "netns", "add", name)
        run("ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", name)
        run("ip", "link", "set", port, "master", BRIDGE, "up")
        run("ip", "addr", "add", f"{address}/24", "dev", "eth0", ns=name)
        run("ip", "link", "set", "eth0", "up", ns=name)
        run("ip", "link", "set", "lo", "up", ns=name)
        run("ip", "route", "add", "default", "via", "10.0.2.2", ns=name)
        self.port_of[name] = port

    def start_agent(self, name: str) -> None:
        address = self.nodes[name]
        log = (self.workdir / f"agent-{name}.log").open("ab")
        self.agents[name] = subprocess.Popen(
            ["ip", "netns", "exec", name, sys.executable, "-m", "kube_ipsec.agent",
             "--node-name", name, "--namespace", self.cfg.namespace,
             "--kubeconfig", self.cfg.kubeconfig, "--ike-address", address,
             "--metrics-address", address, "--metrics-port", str(METRICS_PORT),
             "--status-interval", "5"],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def stop_agent(self, name: str, sig: int = signal.SIGTERM) -> None:
        proc = self.agents.pop(name)
        proc.send_signal(sig)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def dead_agents(self) -> dict[str, int]:
        return {n: p.returncode for n, p in self.agents.items() if p.poll() is not None}

    def stop_all(self) -> None:
        for name in list(self.agents):
            self.stop_agent(name)

    def agent_log_tail(self, name: str, lines: int = 30) -> str:
        path = self.workdir / f"agent-{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def sas(self, name: str) -> list[KernelSA]:
        return parse_xfrm_state(run("ip", "xfrm", "state", ns=name).stdout)

    def policies(self, name: str) -> str:
        return run("ip", "xfrm", "policy", ns=name).stdout

    def ping(self, src: str, dst_address: str, count: int = 3) -> bool:
        proc = run("ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "2", dst_address,
                   ns=src, check=False, timeout=count * 3 + 10)
        return proc.returncode == 0 and f"{count} received" in proc.stdout

    def tcp_transfer(self, src: str, dst: str, megabytes: int = 1, port: int = 5001) -> bool:
        """``megabytes`` of random bytes over one TCP connection (socat); True if all arrived."""
        size = megabytes * 1024 * 1024
        server = subprocess.Popen(
            ["ip", "netns", "exec", dst, "sh", "-c",
             f"socat -u TCP-LISTEN:{port},bind={self.nodes[dst]},reuseaddr - | wc -c"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            run("sh", "-c", f"head -c {size} /dev/urandom | socat -u - "
                f"TCP:{self.nodes[dst]}:{port},retry=40,interval=0.5", ns=src, timeout=180)
            out, _ = server.communicate(timeout=60)
            return int(out.strip() or 0) == size
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()

    def wait_ready(self, name: str, timeout: float = 900) -> None:
        """Until the agent's /readyz answers 200 (watchers synced, IKE sockets bound)."""
        def ready() -> bool:
            if name in self.dead_agents():
                raise RuntimeError(f"agent {name} exited: {self.agent_log_tail(name)}")
            conn = http.client.HTTPConnection(self.nodes[name], METRICS_PORT, timeout=5)
            try:
                conn.request("GET", "/readyz")
                return conn.getresponse().status == 200
            finally:
                conn.close()
        eventually(ready, timeout, f"agent {name} ready", interval=1)

    def metrics(self, name: str) -> str:
        conn = http.client.HTTPConnection(self.nodes[name], METRICS_PORT, timeout=10)
        try:
            conn.request("GET", "/metrics")
            return conn.getresponse().read().decode()
        finally:
            conn.close()


def metric_lines(text: str, *names: str) -> list[str]:
    return [line for line in text.splitlines()
            if not line.startswith("#") and line.split("{")[0].split(" ")[0] in names]


# --- what the agents report and the kernel holds ----------------------------------------

def pair_up(obj: dict[str, Any], tunnel: str, peers: set[str]) -> bool:
    """True when ``obj`` (an IPsecNode) reports every peer in ``peers`` ESTABLISHED/INSTALLED."""
    for entry in (obj.get("status") or {}).get("tunnels") or []:
        if entry.get("name") != tunnel:
            continue
        up = {p.get("name") for p in entry.get("peers") or []
              if p.get("ikeState") == contract.IKE_ESTABLISHED
              and p.get("childState") == contract.CHILD_INSTALLED}
        return peers <= up
    return False


def mesh_sas_ok(lab: Lab, names: list[str]) -> bool:
    """Every ordered pair of ``names`` has exactly one ESP SA in each node that uses it."""
    for a in names:
        sas = [s for s in lab.sas(a) if s.proto == "esp"]
        for b in names:
            if a == b:
                continue
            out = [s for s in sas if s.src == lab.nodes[a] and s.dst == lab.nodes[b]]
            inn = [s for s in sas if s.src == lab.nodes[b] and s.dst == lab.nodes[a]]
            if not out or not inn:
                return False
    return True


def tunnel_condition(obj: dict[str, Any], ctype: str) -> str | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype:
            return str(cond.get("status"))
    return None


# --- the wire ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Packet:
    src: str
    dst: str
    proto: int
    sport: int = 0
    dport: int = 0


def ip_packets(pcap: bytes) -> Iterator[Packet]:
    """Every IPv4 packet of an Ethernet pcap (tcpdump -w), with ports for TCP/UDP."""
    for frame in netns.pcap_frames(pcap):
        if len(frame) < 34 or struct.unpack_from("!H", frame, 12)[0] != 0x0800:
            continue
        ip = frame[14:]
        proto, l4 = ip[9], ip[(ip[0] & 0x0F) * 4:]
        src, dst = (str(ipaddress.IPv4Address(ip[i:i + 4])) for i in (12, 16))
        sport = dport = 0
        if proto in (6, 17) and len(l4) >= 4:
            sport, dport = struct.unpack_from("!HH", l4)
        yield Packet(src, dst, proto, sport, dport)


IKE_PORTS = {500, 4500}


def classify(packets: list[Packet], addresses: set[str]) -> dict[str, int]:
    """Node-to-node packets by kind: ESP, IKE, and plaintext (anything else between nodes)."""
    out = {"esp": 0, "ike": 0, "plaintext": 0}
    for p in packets:
        if p.src not in addresses or p.dst not in addresses:
            continue
        if p.proto == 50:
            out["esp"] += 1
        elif p.proto == 17 and {p.sport, p.dport} & IKE_PORTS:
            out["ike"] += 1
        else:
            out["plaintext"] += 1
    return out


def capture(ns: str, path: Path | None = None) -> contextlib.AbstractContextManager[Any]:
    """tcpdump of IPv4 sent by node ``ns`` on its eth0 (outbound: what it put on the wire)."""
    return netns.capture(ns, "eth0", path, bpf="ip", direction="out")


def wire_packets(cap: netns.Capture) -> list[Packet]:
    return list(ip_packets(cap.path.read_bytes()))


# --- a paced, sequence-numbered UDP stream (tests/xfrm/udp_stream.py) -----------------------

class Stream:
    """``rate`` packets/s from ``src`` to ``dst``; stop() returns (sender, receiver) summaries.

    The receiver (``tests/e2e/lab_stream.py``) names the missing sequence ranges; the summary
    also carries the nonzero XFRM/UDP drop counters of both namespaces, to explain a loss.
    """

    def __init__(self, lab: Lab, src: str, dst: str, rate: int = 1000, port: int = 7000) -> None:
        self.src, self.dst, self.rate = src, dst, rate
        self.receiver = self._start(dst, "tests.e2e.lab_stream", lab.nodes[dst], str(port))
        self.sender = self._start(src, "tests.xfrm.udp_stream", "send", lab.nodes[dst],
                                  str(port), str(rate))
        self.started = time.monotonic()

    @staticmethod
    def _start(ns: str, module: str, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", module, *args],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{module} did not start")
        return proc

    def at(self, seq: int) -> float:
        """Seconds after the stream started at which ``seq`` was due."""
        return seq / self.rate

    def stop(self) -> tuple[dict[str, Any], dict[str, Any]]:
        self.sender.send_signal(signal.SIGTERM)
        sent = json.loads(self.sender.communicate(timeout=120)[0])
        got = json.loads(self.receiver.communicate(timeout=120)[0])
        got["drops"] = {self.src: kernel_drops(self.src), self.dst: kernel_drops(self.dst)}
        return sent, got

    def describe(self, sent: dict[str, Any], got: dict[str, Any]) -> str:
        lost = sent["sent"] - got["unique"]
        text = f"sent {sent['sent']}, received {got['unique']} unique, lost {lost}"
        if lost:
            spans = ", ".join(f"{a}-{b} (t+{self.at(a):.2f}s..{self.at(b):.2f}s)"
                              for a, b in got["missing"])
            text += f"; missing {spans}; kernel drops {got['drops']}"
        return text


def kernel_drops(ns: str) -> dict[str, int]:
    """Nonzero /proc/net/xfrm_stat counters and UDP error counters of ``ns``."""
    found = {}
    for line in run("cat", "/proc/net/xfrm_stat", ns=ns).stdout.splitlines():
        name, value = line.split()
        if int(value):
            found[name] = int(value)
    udp = [line.split()[1:] for line in run("cat", "/proc/net/snmp", ns=ns).stdout.splitlines()
           if line.startswith("Udp:")]
    if len(udp) == 2:
        found.update({f"Udp{k}": int(v) for k, v in zip(udp[0], udp[1], strict=True)
                      if k.endswith("Errors") and int(v)})
    return found


class Duplex:
    """Streams both ways between ``a`` and ``b``: the initiator's and the responder's switch."""

    def __init__(self, lab: Lab, a: str, b: str, rate: int = 1000) -> None:
        self.streams = [Stream(lab, a, b, rate, 7000), Stream(lab, b, a, rate, 7001)]

    def stop(self) -> list[tuple[Stream, dict[str, Any], dict[str, Any]]]:
        return [(s, *s.stop()) for s in self.streams]

    @staticmethod
    def lost(results: list[tuple[Stream, dict[str, Any], dict[str, Any]]]) -> int:
        return sum(sent["sent"] - got["unique"] + len(sent["send_errors"])
                   for _, sent, got in results)

    @staticmethod
    def describe(results: list[tuple[Stream, dict[str, Any], dict[str, Any]]]) -> str:
        return "; ".join(f"{s.src}->{s.dst}: {s.describe(sent, got)}, "
                         f"send errors {len(sent['send_errors'])}" for s, sent, got in results)
