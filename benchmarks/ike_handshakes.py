"""IKEv2 handshake rate: two of our engines against two strongSwan 5.9.8 charons, same run.

One handshake = IKE_SA_INIT + IKE_AUTH with its Child SA: PSK, AES-GCM-256 + PRF-HMAC-SHA256 +
x25519 for IKE, ESP AES-GCM-256 (no ESN) in tunnel mode between two /32 selectors, UDP
encapsulation on the NAT-T port. Both pairs keep ``--window`` handshakes in flight until N have
completed, and print handshakes/s of wall clock and per CPU-second of both sides; ``--rounds``
alternate the two, and the closing line compares the best round of each (this machine is
shared: single rounds vary by 3x).

    .venv/bin/python benchmarks/ike_handshakes.py 1000            # as root (netns, /dev/net/tun)
    .venv/bin/python benchmarks/ike_handshakes.py 1000 --window 4 --only ours

The host kernel here has no ESP, so neither side installs SAs in the kernel, and both use a
userspace stand-in in the same place:

* ours: an initiator and a responder engine, each in its own process (each side one core, as
  each charon is one process), on UDP sockets over loopback; every Child SA is handed to a
  recording kernel stand-in (SPIs from a counter, the two SAs kept in a list) exactly where the
  agent would call the XFRM layer;
* strongSwan: two charons, each in its own network namespace on a veth pair, with the
  ``kernel-libipsec`` plugin (strongSwan's userspace ESP; Debian's libcharon-extra-plugins)
  instead of ``kernel-netlink``, driven over vici by ``--window`` threads each running a
  blocking ``initiate``. kernel-libipsec only does tunnel mode and always floats to 4500
  (it fakes NAT detection); ours is told ``force_encap`` so both pairs run the same exchanges.
  Both charons log nothing, have the cookie and half-open limits (``cookie_threshold``,
  ``cookie_threshold_ip``, ``block_threshold``) raised as ours is, an IKE_SA hash table
  of 1024 rows (the default is one row, a list scan per lookup) and ``reuse_ikesa = no``, so
  that every initiate is a full handshake rather than a CREATE_CHILD_SA in an existing IKE SA,
  and 16 + 2 x window worker threads (a blocking vici initiate holds one until it completes;
  with the default 16 and 8 in flight, charon starved and stalled for its retransmit timer).

Each line also says how many IKE SAs the initiator holds at the end. Our engine keeps one IKE SA
per peer and deletes the older duplicate after each handshake (an extra INFORMATIONAL exchange
counted in our time); charon runs with ``unique = never`` and keeps all N (with ``replace`` it
only schedules the deletes 10 s later, "suspected reauthentication", outside the measurement).
So strongSwan does less work per handshake here: the comparison is conservative for us.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import select
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kube_ipsec import ike
from tests.e2e.strongswan import Charon, peer_conn, quiet_ipv6
from tests.netns import veth_pair

PSK = bytes(range(32))
IKE_PROPOSAL = "aes256gcm16-prfsha256-x25519"
ESP_PROPOSAL = "aes256gcm16-noesn"
TS = ("198.51.100.1/32", "198.51.100.2/32")  # inner selectors, as in the charon config
PORTS = (15500, 15501)  # our pair's IKE and NAT-T ports on loopback
NO_COOKIES = 1_000_000


@dataclass
class RecordingKernel:
    """Where the agent calls the XFRM layer: SPIs from a counter, Child SAs recorded."""

    next_spi: int = 0xD0000000
    installed: list[tuple[ike.SaParams, ike.SaParams]] = field(default_factory=list)

    def allocspi(self, count: int) -> list[int]:
        spis = list(range(self.next_spi, self.next_spi + count))
        self.next_spi += count
        return spis

    def install(self, child: ike.ChildSa) -> None:
        self.installed.append((child.inbound, child.outbound))


class Side:
    """One engine on its two UDP sockets, pumped by a select loop (no asyncio: less overhead)."""

    def __init__(self, host: str, peer_host: str, initiator: bool) -> None:
        self.host = host
        local_ts, remote_ts = TS if initiator else TS[::-1]
        self.peer = ike.PeerConfig(
            remote_host=peer_host, local_id=ike.Identity.address(host),
            remote_id=ike.Identity.address(peer_host),
            ike_proposals=(ike.IkeProposal.parse(IKE_PROPOSAL),),
            child=ike.ChildConfig(
                mode=ike.Mode.TUNNEL, proposals=(ike.ChildProposal.parse(ESP_PROPOSAL),),
                local_ts=(ike.TrafficSelector.from_network(local_ts),),
                remote_ts=(ike.TrafficSelector.from_network(remote_ts),),
                rekey_time=0, rand_time=0),
            ike_rekey_time=0, ike_rand_time=0, dpd_delay=0, force_encap=initiator,
            send_initial_contact=False)
        self.engine = ike.Engine(ike.EngineConfig(
            local_host=host, psk_provider=lambda _l, _r: [(1, PSK)],
            peer_lookup=lambda h: self.peer if h == peer_host else None,
            ike_port=PORTS[0], nat_t_port=PORTS[1], cookie_threshold=NO_COOKIES), os.urandom)
        self.kernel = RecordingKernel()
        self.socks: dict[int, socket.socket] = {}
        for port in PORTS:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            sock.bind((host, port))
            sock.setblocking(False)
            self.socks[port] = sock
        self.children = self.failed = 0

    def close(self) -> None:
        for sock in self.socks.values():
            sock.close()

    def pump(self, now: float) -> None:
        """Apply the engine's events, then send what it produced (the agent's order)."""
        engine = self.engine
        while (event := engine.next_event()) is not None:
            if isinstance(event, ike.SpisNeeded):
                engine.provide_spis(self.kernel.allocspi(event.count), now)
            elif isinstance(event, ike.ChildSaEstablished):
                self.kernel.install(event.child)
                self.children += 1
            elif isinstance(event, ike.IkeSaDeleted) and not event.established:
                self.failed += 1
        for data, src, dst in engine.datagrams_to_send():
            self.socks[src[1]].sendto(data, dst)

    def poll(self, timeout: float) -> None:
        deadline = self.engine.get_timer()
        now = time.monotonic()
        if deadline is not None:
            timeout = max(0.0, min(timeout, deadline - now))
        ready, _, _ = select.select(list(self.socks.values()), [], [], timeout)
        for sock in ready:
            port = sock.getsockname()[1]
            while True:
                try:
                    data, addr = sock.recvfrom(65535)
                except BlockingIOError:
                    break
                now = time.monotonic()
                self.engine.receive_datagram(data, addr, (self.host, port), now)
                self.pump(now)
        now = time.monotonic()
        deadline = self.engine.get_timer()
        if deadline is not None and deadline <= now:
            self.engine.handle_timer(now)
            self.pump(now)


def _responder(conn: Connection, host: str, peer_host: str) -> None:
    side = Side(host, peer_host, initiator=False)
    conn.send("ready")
    while True:
        side.poll(0.05)
        if conn.poll():
            if conn.recv() == "cpu":
                conn.send(time.process_time())
            else:
                conn.send((side.children, side.failed, len(side.kernel.installed)))
                side.close()
                return


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (the whole thread group) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    n: int
    wall: float  # seconds for n handshakes
    cpu: float  # CPU seconds of both sides meanwhile
    alive: int  # IKE SAs the initiator still holds at the end
    detail: str

    @property
    def rate(self) -> float:
        return self.n / self.wall

    @property
    def per_cpu(self) -> float:
        return self.n / self.cpu


def run_ours(n: int, window: int) -> Result:
    here, there = "127.0.0.1", "127.0.0.2"
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    responder = ctx.Process(target=_responder, args=(child, there, here), daemon=True)
    responder.start()
    assert parent.recv() == "ready"
    side = Side(here, there, initiator=True)

    def handshakes(count: int) -> float:
        start, started, base = time.monotonic(), 0, side.children
        while side.children - base < count:
            while started < count and started - (side.children - base) < window:
                side.engine.initiate(side.peer, time.monotonic())
                side.pump(time.monotonic())
                started += 1
            side.poll(1.0)
            if side.failed:
                raise RuntimeError(f"{side.failed} handshakes failed: {side.engine.stats}")
        return time.monotonic() - start

    try:
        handshakes(window)  # warm-up, not counted
        parent.send("cpu")
        cpu = -time.process_time() - parent.recv()
        elapsed = handshakes(n)
        parent.send("cpu")
        cpu += time.process_time() + parent.recv()
        parent.send("stop")
        children, failed, installed = parent.recv()
    finally:
        side.close()
        responder.join(10)
        if responder.is_alive():
            responder.kill()
    total = n + window
    if (children, failed, installed) != (total, 0, total):
        raise RuntimeError(f"responder saw {children} Child SAs, {failed} failures")
    alive = len(side.engine.snapshot())
    return Result(n, elapsed, cpu, alive, f"responder installed {installed} Child SAs, "
                                          f"retransmits {side.engine.stats.retransmits}")


def run_strongswan(n: int, window: int) -> Result:
    # every initiate a new IKE SA (by default charon reuses an established one for the child)
    extra = (f"ikesa_table_size = 1024\n  ikesa_table_segments = 16\n  reuse_ikesa = no\n"
             f"  cookie_threshold_ip = {NO_COOKIES}\n  block_threshold = {NO_COOKIES}\n"
             f"  threads = {16 + 2 * window}")
    with veth_pair() as pair, tempfile.TemporaryDirectory(prefix="ike-bench-") as tmp:
        left = Charon(pair.left, Path(tmp, "left"), kernel_libipsec=True, loglevel=-1,
                      cookie_threshold=NO_COOKIES, extra=extra)
        right = Charon(pair.right, Path(tmp, "right"), kernel_libipsec=True, loglevel=-1,
                       cookie_threshold=NO_COOKIES, extra=extra)
        owners = (pair.left_ip, pair.right_ip)
        # libipsec routes the inner selectors into its TUN device: they must be local addresses
        pair.run(pair.left, "ip", "addr", "add", TS[0], "dev", "lo")
        pair.run(pair.right, "ip", "addr", "add", TS[1], "dev", "lo")
        for ns in (pair.left, pair.right):
            quiet_ipv6(ns)
        try:
            for charon, (me, peer), (lts, rts) in ((left, owners, TS),
                                                   (right, owners[::-1], TS[::-1])):
                charon.start()
                charon.load(peer_conn(me, peer, mode="tunnel", proposals=IKE_PROPOSAL,
                                      esp_proposals=ESP_PROPOSAL, local_ts=lts, remote_ts=rts),
                            PSK, owners)
            left.initiate()  # warm-up, not counted
            remaining = [n]
            lock = threading.Lock()
            errors: list[BaseException] = []

            def worker() -> None:
                sock, session = left.connect()
                try:
                    while True:
                        with lock:
                            if remaining[0] == 0:
                                return
                            remaining[0] -= 1
                        for _ in session.initiate({"ike": "peer", "child": "node",
                                                   "timeout": 60000, "loglevel": -1}):
                            pass
                except BaseException as exc:  # reported below
                    errors.append(exc)
                finally:
                    sock.close()

            threads = [threading.Thread(target=worker) for _ in range(window)]
            pids = [c.proc.pid for c in (left, right) if c.proc is not None]
            cpu = -sum(cpu_seconds(pid) for pid in pids)
            start = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.monotonic() - start
            cpu += sum(cpu_seconds(pid) for pid in pids)
            if errors:
                raise RuntimeError(f"strongSwan handshakes failed: {errors[0]!r}")
            time.sleep(0.5)  # deletes of replaced IKE SAs, if any, complete
            alive = len(left.established())
            children = [c for sa in right.sas() for c in sa.get("child-sas", {}).values()]
            mode = children[0]["mode"] if children else "?"
            stats = right.stats()
        finally:
            left.stop()
            right.stop()
    return Result(n, elapsed, cpu, alive, f"responder: {stats['ikesas']['total']} IKE SAs, "
                                          f"Child SAs {mode}-in-UDP via kernel-libipsec")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("n", type=int, nargs="?", default=1000, help="handshakes (default 1000)")
    parser.add_argument("--window", type=int, default=8, help="handshakes in flight (default 8)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating rounds of both; the best of each is compared (default 3)")
    parser.add_argument("--only", choices=("ours", "strongswan"))
    args = parser.parse_args()
    print(f"{args.n} handshakes each, {args.window} in flight, {args.rounds} rounds; load average "
          f"before: {os.getloadavg()[0]:.1f}", flush=True)
    results: dict[str, list[Result]] = {"ours": [], "strongswan": []}
    labels = {"ours": "ours (kube_ipsec.ike, 2 processes, loopback)",
              "strongswan": "strongSwan 5.9.8 (2 charons, veth)"}
    for _ in range(args.rounds):
        for key, label in labels.items():
            if args.only in (None, key):
                r = (run_ours if key == "ours" else run_strongswan)(args.n, args.window)
                results[key].append(r)
                print(f"{label:46} {r.rate:8.1f} handshakes/s wall ({r.wall:.2f} s), "
                      f"{r.per_cpu:8.1f} per CPU-second ({r.cpu:.2f} CPU-s); "
                      f"{r.alive} IKE SAs alive at the end; {r.detail}", flush=True)
    if results["ours"] and results["strongswan"]:
        ours, theirs = results["ours"], results["strongswan"]
        wall = max(r.rate for r in ours) / max(r.rate for r in theirs)
        cpu = max(r.per_cpu for r in ours) / max(r.per_cpu for r in theirs)
        print(f"ratio ours/strongSwan, best round of each: {wall:.2f}x wall-clock rate, "
              f"{cpu:.2f}x per CPU-second (target >= 2x)")


if __name__ == "__main__":
    main()
