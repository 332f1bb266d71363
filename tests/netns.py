"""Network namespaces and packet capture for datapath tests inside the test VM (marker ``vm``).

Two nodes on a wire, the whole API:

    with veth_pair(ipv6=True) as pair:          # netns pair.left / pair.right, joined by veth
        pair.run(pair.left, "ip", "xfrm", "state", "add", ...)
        with capture(pair.right, pair.right_if) as cap:
            assert pair.ping(pair.left, pair.right_ip)
        assert cap.esp_spis() == {0x1001: 3, ...}

``capture(..., direction="out")`` on both ends shows only what crossed the wire (after tunnel-mode
decryption the kernel re-injects plaintext on the receiving interface); ``esp_in_pcap`` reads
raw and UDP-encapsulated (NAT-T) ESP from any Ethernet pcap.

Names are unique per process and call, so tests can run side by side; namespaces (and with them
the veth and every XFRM state/policy in them) are deleted on exit even when the test fails.
Shells out to iproute2/ping/tcpdump: they are what an operator would type, and they keep this
helper independent of the code under test.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import re
import signal
import struct
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

_ids = itertools.count()
_KEY_RE = re.compile(r"0x[0-9a-fA-F]{16,}")


def run(*cmd: str, ns: str | None = None, check: bool = True,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` (inside netns ``ns`` if given); on failure raise with its stderr."""
    argv = ["ip", "netns", "exec", ns, *cmd] if ns else list(cmd)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        shown = " ".join(_KEY_RE.sub("0x<key>", a) for a in argv)  # keys stay out of reports
        raise RuntimeError(f"{shown} -> rc {proc.returncode}: {proc.stderr.strip()}")
    return proc


@dataclass(frozen=True)
class Pair:
    """Two namespaces ``left``/``right`` joined by veth ``left_if``/``right_if``."""

    left: str
    right: str
    left_if: str
    right_if: str
    left_ip: str = "192.0.2.1"
    right_ip: str = "192.0.2.2"
    left_ip6: str = "2001:db8::1"
    right_ip6: str = "2001:db8::2"

    def run(self, ns: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(*cmd, ns=ns, check=check)

    def ping(self, ns: str, dst: str, count: int = 3, wait: float = 2) -> bool:
        """True when every one of ``count`` echo requests from ``ns`` to ``dst`` is answered."""
        proc = run("ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", str(wait), dst,
                   ns=ns, check=False, timeout=count * (wait + 1) + 10)
        return proc.returncode == 0 and f"{count} received" in proc.stdout


@contextmanager
def veth_pair(ipv6: bool = False) -> Iterator[Pair]:
    """Create two fresh namespaces with a veth between them (IPv4 /24, optionally IPv6 /64)."""
    tag = f"{os.getpid() % 100000}x{next(_ids)}"
    pair = Pair(left=f"kt-l{tag}", right=f"kt-r{tag}", left_if=f"vl{tag}", right_if=f"vr{tag}")
    try:
        run("ip", "netns", "add", pair.left)
        run("ip", "netns", "add", pair.right)
        run("ip", "link", "add", pair.left_if, "netns", pair.left, "type", "veth",
            "peer", "name", pair.right_if, "netns", pair.right)
        for ns, ifname, ip4, ip6 in ((pair.left, pair.left_if, pair.left_ip, pair.left_ip6),
                                     (pair.right, pair.right_if, pair.right_ip, pair.right_ip6)):
            run("ip", "addr", "add", f"{ip4}/24", "dev", ifname, ns=ns)
            if ipv6:
                run("ip", "addr", "add", f"{ip6}/64", "dev", ifname, "nodad", ns=ns)
            run("ip", "link", "set", ifname, "up", ns=ns)
            run("ip", "link", "set", "lo", "up", ns=ns)
        yield pair
    finally:
        for ns in (pair.left, pair.right):
            run("ip", "netns", "del", ns, check=False)


@dataclass(frozen=True)
class EspPacket:
    src: str
    dst: str
    spi: int
    seq: int
    udp_encap: bool  # RFC 3948 ESP-in-UDP (NAT-T, port 4500)


class Capture:
    """A pcap written by tcpdump; read it after the ``capture`` block has ended."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def esp(self) -> list[EspPacket]:
        """Every ESP packet (plain or UDP-encapsulated), in capture order."""
        return list(esp_in_pcap(self.path.read_bytes()))

    def esp_spis(self) -> Counter[int]:
        """How many ESP packets were seen per SPI."""
        return Counter(p.spi for p in self.esp())

    def text(self) -> str:
        """tcpdump's own decoding, for assertion messages and logs."""
        return run("tcpdump", "-n", "-r", str(self.path)).stdout


@contextmanager
def capture(ns: str, ifname: str, path: Path | None = None, bpf: str = "",
            direction: str = "inout") -> Iterator[Capture]:
    """Capture on ``ifname`` in ``ns`` while the block runs (tcpdump is listening on entry).

    The pcap goes to ``path`` (e.g. under pytest's ``tmp_path``) or a fresh temporary file.
    ``direction`` is tcpdump's ``-Q``. Pitfall: after tunnel-mode decryption the kernel
    re-injects the inner packet on the receiving interface, so an ``in`` capture there shows
    plaintext that never crossed the wire; to see only the wire, capture ``out`` on both ends.
    """
    if path is None:
        fd, name = tempfile.mkstemp(prefix=f"kt-{ifname}-", suffix=".pcap")
        os.close(fd)
        path = Path(name)
    # --immediate-mode: packets still in the ring's current block are lost on SIGINT otherwise.
    argv = ["ip", "netns", "exec", ns, "tcpdump", "-i", ifname, "-n", "-U", "--immediate-mode",
            "-s", "128", "-Q", direction, "-Z", "root", "-w", str(path), *bpf.split()]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()  # "listening on ..." once the socket is bound
        if "listening on" not in first:
            raise RuntimeError(f"tcpdump did not start: {first}{proc.stderr.read()}")
        yield Capture(path)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def pcap_frames(pcap: bytes) -> Iterator[bytes]:
    """The Ethernet frames (at least a header long) of a classic pcap file (tcpdump -w)."""
    if len(pcap) < 24:
        return
    endian = "<" if pcap[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    off = 24
    while off + 16 <= len(pcap):
        caplen = struct.unpack_from(endian + "I", pcap, off + 8)[0]
        frame = pcap[off + 16:off + 16 + caplen]
        off += 16 + caplen
        if len(frame) >= 14:
            yield frame


def esp_in_pcap(pcap: bytes) -> Iterator[EspPacket]:
    """Parse a classic Ethernet pcap (tcpdump -w) for ESP over IPv4/IPv6, raw or in UDP 4500."""
    for frame in pcap_frames(pcap):
        ethertype, ip = struct.unpack_from("!H", frame, 12)[0], frame[14:]
        if ethertype == 0x0800 and len(ip) >= 20:
            proto, l4 = ip[9], ip[(ip[0] & 0x0F) * 4:]
            src, dst = _addr(ip[12:16]), _addr(ip[16:20])
        elif ethertype == 0x86DD and len(ip) >= 40:
            proto, l4 = ip[6], ip[40:]
            src, dst = _addr(ip[8:24]), _addr(ip[24:40])
        else:
            continue
        encap = proto == 17 and len(l4) >= 16 and 4500 in struct.unpack_from("!HH", l4)
        if encap:
            l4 = l4[8:]
            if l4[:4] == b"\0\0\0\0":  # non-ESP marker: this is IKE
                continue
        if (proto == 50 or encap) and len(l4) >= 8:
            spi, seq = struct.unpack_from("!II", l4)
            yield EspPacket(src, dst, spi, seq, encap)


def _addr(raw: bytes) -> str:
    return str(ipaddress.ip_address(raw))
