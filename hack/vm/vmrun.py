"""Run one command from this machine's filesystem inside a real Linux kernel under qemu TCG.

Why: the development/CI kernel has no ESP/AH, so datapath tests need another kernel. The guest
boots Debian's stock kernel (PVH entry of the extracted vmlinux: no firmware, no in-guest
decompression), sees the host's `/` read-only over 9p under a tmpfs overlay, and runs the
command in the host's cwd with the host's environment. Output comes back through a file on a
9p share (the virtio console is far too slow under TCG). Stdlib only: it runs before any venv.

Exit status: the command's, 124 on timeout, 125 if the guest died before reporting one.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import lzma
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import BinaryIO

HERE = Path(__file__).resolve().parent
# Loaded by stage 1 (with their dependencies) to reach the root filesystem.
STAGE1_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def cache_dir() -> Path:
    base = os.environ.get("KUBE_IPSEC_CACHE") or os.path.expanduser("~/.cache/kube-ipsec")
    path = Path(base) / "vm"
    path.mkdir(parents=True, exist_ok=True)
    return path


def pick_kernel() -> tuple[str, Path]:
    """Newest /boot/vmlinuz-*-amd64 whose modules are installed (the ABI name moves)."""
    found = []
    for image in Path("/boot").glob("vmlinuz-*-amd64"):
        version = image.name.removeprefix("vmlinuz-")
        if (Path("/lib/modules") / version / "modules.dep").is_file():
            key = [int(n) for n in re.findall(r"\d+", version)]
            found.append((key, version, image))
    if not found:
        sys.exit("vmrun: no /boot/vmlinuz-*-amd64 with modules; run hack/install-deps.sh")
    _, version, image = max(found)
    return version, image


def write_atomic(path: Path, data: bytes) -> None:
    """Concurrent vmruns may fill the cache at once: publish whole files only."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        os.fchmod(f.fileno(), 0o644)
    os.replace(tmp, path)


def boot_image(version: str, vmlinuz: Path) -> Path:
    """The uncompressed ELF vmlinux (PVH boot saves ~7 s under TCG), or the bzImage itself."""
    cached = cache_dir() / f"vmlinux-{version}"
    if cached.exists() and cached.stat().st_mtime >= vmlinuz.stat().st_mtime:
        return cached
    data = vmlinuz.read_bytes()
    offset = data.find(b"\xfd7zXZ\x00")
    while offset != -1:
        try:
            elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[offset:])
        except lzma.LZMAError:
            elf = b""
        if elf.startswith(b"\x7fELF"):
            write_atomic(cached, elf)
            return cached
        offset = data.find(b"\xfd7zXZ\x00", offset + 1)
    print(f"vmrun: no XZ vmlinux inside {vmlinuz}; booting it directly (slower)", file=sys.stderr)
    return vmlinuz


def module_order(version: str, names: tuple[str, ...]) -> list[str]:
    """Module files (relative to /lib/modules/VERSION) in load order, built-ins left out."""
    root = Path("/lib/modules") / version
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (root / "modules.dep").read_text().splitlines():
        mod, _, rest = line.partition(":")
        deps[mod] = rest.split()
        by_name[Path(mod).name.split(".")[0].replace("-", "_")] = mod
    builtin = {
        Path(m).name.split(".")[0].replace("-", "_")
        for m in (root / "modules.builtin").read_text().split()
    }
    order: list[str] = []

    def visit(mod: str) -> None:
        for dep in deps[mod]:
            visit(dep)
        if mod not in order:
            order.append(mod)

    for name in names:
        if name in builtin:
            continue
        if name not in by_name:
            sys.exit(f"vmrun: kernel {version} has no module {name}")
        visit(by_name[name])
    return order


def cpio_newc(entries: list[tuple[str, int, bytes, int]]) -> bytes:
    """A newc archive of (name, mode, data, tty minor or -1); no root needed for device nodes."""
    out = bytearray()

    def add(ino: int, name: str, mode: int, data: bytes, rdev: tuple[int, int]) -> None:
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, *rdev, len(name) + 1, 0)
        out.extend(b"070701" + "".join(f"{v:08x}" for v in fields).encode())
        out.extend(name.encode() + b"\0")
        out.extend(b"\0" * (-len(out) % 4))
        out.extend(data)
        out.extend(b"\0" * (-len(out) % 4))

    for ino, (name, mode, data, minor) in enumerate(entries, start=1):
        add(ino, name, mode, data, (5, minor) if minor >= 0 else (0, 0))
    add(0, "TRAILER!!!", 0, b"", (0, 0))
    return bytes(out)


def initramfs(version: str) -> Path:
    """Busybox + stage 1 + the modules to mount the root; cached per kernel and script."""
    init = (HERE / "init.sh").read_bytes()
    busybox = Path("/bin/busybox")
    if not busybox.exists():
        sys.exit("vmrun: /bin/busybox missing; run hack/install-deps.sh")
    mods = module_order(version, STAGE1_MODULES)
    digest = hashlib.sha256(init + repr(mods).encode() + str(busybox.stat().st_mtime).encode())
    cached = cache_dir() / f"initramfs-{version}-{digest.hexdigest()[:12]}.cpio"
    if cached.exists():
        return cached
    d, f, c = 0o040755, 0o100755, 0o020600
    entries = [(name, d, b"", -1) for name in ("bin", "dev", "lib", "lib/modules")]
    entries += [
        ("dev/console", c, b"", 1),
        ("init", f, init, -1),
        ("bin/busybox", f, busybox.read_bytes(), -1),
        ("modules", 0o100644, "".join(Path(m).name + "\n" for m in mods).encode(), -1),
    ]
    for mod in mods:
        data = (Path("/lib/modules") / version / mod).read_bytes()
        if mod.endswith(".xz"):
            data = lzma.decompress(data)
        entries.append((f"lib/modules/{Path(mod).name}", 0o100644, data, -1))
    write_atomic(cached, cpio_newc(entries))
    return cached


def write_job(ctl: Path, args: argparse.Namespace, rwdirs: list[Path]) -> None:
    """What stage 2 needs, NUL-separated so any byte but NUL survives."""
    env = {k: v for k, v in os.environ.items() if NAME_RE.match(k)}
    env.update(KUBE_IPSEC_VM="1", PYTHONDONTWRITEBYTECODE="1")
    (ctl / "env").write_bytes(b"".join(f"{k}={v}\0".encode() for k, v in env.items()))
    (ctl / "argv").write_bytes(b"".join(a.encode() + b"\0" for a in args.command))
    (ctl / "cwd").write_bytes(os.getcwd().encode())
    (ctl / "rwdirs").write_bytes(b"".join(f"rw{i}\0{d}\0".encode() for i, d in enumerate(rwdirs)))
    if args.net:
        (ctl / "net").touch()
    shutil.copy(HERE / "stage2.sh", ctl / "stage2.sh")
    for name in ("out", "err"):
        (ctl / name).touch()


def qemu_argv(args: argparse.Namespace, kernel: Path, initrd: Path, ctl: Path,
              rwdirs: list[Path]) -> list[str]:
    share = "security_model=none,multidevs=remap"
    # The crypto self-tests alone cost ~4 s of module loading under TCG.
    # no_timer_check: on a loaded host TCG can miss the IO-APIC timer probe and the kernel
    # panics ("IO-APIC + timer doesn't work"), seen once in the lab
    cmdline = "console=ttyS0 panic=-1 mitigations=off cryptomgr.notests=1 no_timer_check"
    cmdline += "" if args.verbose else " quiet"
    argv = [
        "qemu-system-x86_64", "-machine", "q35,accel=tcg", "-cpu", "max",
        "-smp", str(args.cpus), "-m", str(args.mem), "-nodefaults", "-no-user-config",
        "-display", "none", "-no-reboot", "-kernel", str(kernel), "-initrd", str(initrd),
        "-append", cmdline, "-serial", f"file:{ctl / 'console.log'}",
        "-device", "virtio-rng-pci",
        "-virtfs", f"local,path=/,mount_tag=hostroot,readonly=on,{share}",
        "-virtfs", f"local,path={ctl},mount_tag=vmrunctl,{share}",
    ]
    for i, d in enumerate(rwdirs):
        argv += ["-virtfs", f"local,path={d},mount_tag=rw{i},{share}"]
    if args.net:
        argv += ["-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0"]
    return argv


def die_with_parent() -> None:
    """qemu must not outlive vmrun, even when vmrun is SIGKILLed."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Pump:
    """Copies what the guest appends to a 9p file onto one of our streams, as it arrives."""

    def __init__(self, path: Path, sink: BinaryIO) -> None:
        self.file = path.open("rb")
        self.sink = sink

    def __call__(self) -> None:
        while chunk := self.file.read(1 << 16):
            self.sink.write(chunk)
            self.sink.flush()


def console_tail(ctl: Path, lines: int = 40) -> str:
    log = ctl / "console.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def run(args: argparse.Namespace) -> int:
    version, vmlinuz = pick_kernel()
    kernel, initrd = boot_image(version, vmlinuz), initramfs(version)
    rwdirs = [Path(d).resolve() for d in (args.rwdir or [".vm-out"])]
    for d in (Path.cwd(), *rwdirs):
        if d.parts[1:2] in (("tmp",), ("run",)):
            sys.exit(f"vmrun: {d} is under /tmp or /run, which are fresh tmpfs in the guest")
    for d in rwdirs:
        d.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vmrun-") as tmp:
        ctl = Path(tmp)
        write_job(ctl, args, rwdirs)
        pumps = [Pump(ctl / "out", sys.stdout.buffer), Pump(ctl / "err", sys.stderr.buffer)]
        start = time.monotonic()
        qemu = subprocess.Popen(
            qemu_argv(args, kernel, initrd, ctl, rwdirs),
            stdin=subprocess.DEVNULL, preexec_fn=die_with_parent,
        )

        def on_signal(signum: int, _frame: object) -> None:
            qemu.kill()
            qemu.wait()
            sys.exit(128 + signum)

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, on_signal)
        timed_out = False
        while qemu.poll() is None:
            for pump in pumps:
                pump()
            if args.timeout and time.monotonic() - start > args.timeout:
                timed_out = True
                qemu.kill()
                qemu.wait()
                break
            time.sleep(0.1)
        for pump in pumps:
            pump()
        elapsed = time.monotonic() - start
        rc_file = ctl / "rc"
        if timed_out:
            print(f"vmrun: timed out after {args.timeout}s; console tail:\n"
                  f"{console_tail(ctl)}", file=sys.stderr)
            return 124
        if not rc_file.exists() or not rc_file.read_text().strip():
            print(f"vmrun: guest ended without an exit status (qemu rc {qemu.returncode}); "
                  f"console tail:\n{console_tail(ctl)}", file=sys.stderr)
            return 125
        if args.verbose:
            started = (ctl / "started").read_text().strip()
            print(f"{console_tail(ctl, 400)}\nvmrun: kernel {version}; command started at "
                  f"{started}s guest uptime; {elapsed:.1f}s wall in all", file=sys.stderr)
        return int(rc_file.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="vmrun", usage="vmrun [options] -- CMD [ARGS...]",
        description="Run CMD in the host's cwd inside a TCG VM with a real kernel (ESP, XFRM).")
    parser.add_argument("--timeout", type=float, default=0, help="seconds; exit 124 when hit")
    parser.add_argument("--mem", type=int, default=2048, help="guest RAM in MiB (default 2048)")
    parser.add_argument("--cpus", type=int, default=2, help="vCPUs (default 2)")
    parser.add_argument("--net", action="store_true",
                        help="user-mode network: guest eth0 10.0.2.15, host loopback at 10.0.2.2")
    parser.add_argument("--rwdir", action="append", metavar="DIR",
                        help="directory the guest may write through to the host "
                             "(repeatable; default ./.vm-out)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="full kernel log and timing on stderr")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    if not args.command:
        parser.error("no command given")
    if not shutil.which("qemu-system-x86_64"):
        sys.exit("vmrun: qemu-system-x86_64 missing; run hack/install-deps.sh")
    sys.exit(run(args))


if __name__ == "__main__":
    main()
