"""strongSwan's charon (5.9.8) as an independent IKEv2 peer, one instance per network namespace.

    charon = Charon(ns, workdir, address="192.0.2.2")
    charon.start()                               # its own STRONGSWAN_CONF, vici socket, /run
    charon.load(peer_conn(...), psk, ids)        # replaces every connection and secret
    charon.initiate(); charon.sas(); charon.rekey_child(); charon.terminate_ike()
    charon.log()                                 # its filelog, for AUTHENTICATION_FAILED & co.
    charon.stop()

What keeps instances apart (research/datapath-vm.md, research/ikev2.md §4): ``STRONGSWAN_CONF``
points at a file of our own (vici socket, filelog), and a private tmpfs on ``/run`` inside the
mount namespace ``ip netns exec`` creates, because the pid file ``/run/charon.pid`` is compiled
in. Configuration goes over vici (PyPI ``vici``): loading a connection again replaces it, so one
charon serves a whole test module. ``kernel-netlink`` installs the SAs in the namespace's
kernel; ``kernel_libipsec=True`` (the benchmark on the host, whose kernel has no ESP) uses
strongSwan's userspace ESP instead, which only does tunnel mode and always floats to 4500.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import vici
import vici.exception

CHARON = "/usr/lib/ipsec/charon"
CONN, CHILD = "peer", "node"

CONF = """\
charon {{
  # only what the tests need (libcharon-extra-plugins would add forecast, farp, dhcp...)
  load = random nonce openssl gcm aes sha1 sha2 hmac kdf gmp pem pkcs1 x509 pubkey \
{kernel} socket-default vici
  plugins {{
    vici {{
      socket = unix://{dir}/charon.vici
    }}
    kernel-libipsec {{
      allow_peer_ts = yes
    }}
  }}
  install_routes = no
  install_virtual_ip = no
  retransmit_timeout = 1.0
  retransmit_tries = 3
  cookie_threshold = {cookie_threshold}
  init_limit_half_open = 0
  {extra}
  filelog {{
    log {{
      path = {dir}/charon.log
      time_format = %T
      flush_line = yes
      default = {default}
      ike = {loglevel}
      knl = {loglevel}
      cfg = {loglevel}
    }}
  }}
  syslog {{
    daemon {{
      default = -1
    }}
  }}
}}
"""


def quiet_ipv6(ns: str) -> None:
    """No IPv6 in ``ns``: a fresh veth's link-local address finishing DAD makes charon's
    kernel-netlink start a roam, and charon stalled ~14 s there (seen here, host and VM)."""
    subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"],
                   check=True)


def peer_conn(local: str, remote: str, *, mode: str = "transport",
              proposals: str = "aes256gcm16-prfsha256-x25519",
              esp_proposals: str = "aes256gcm16-esn,aes256gcm16-noesn",
              local_ts: str = "dynamic", remote_ts: str = "dynamic",
              rekey_time: str = "0", dpd_delay: str = "0s", encap: str = "no",
              local_id: str | None = None, remote_id: str | None = None,
              unique: str = "never") -> dict[str, Any]:
    """The vici form of one swanctl connection ``peer`` with Child SA ``node`` (PSK, IDs =
    addresses unless given). Rekeying on its own is off (rekey_time 0): tests say when."""
    return {CONN: {
        "version": "2",
        "local_addrs": [local],
        "remote_addrs": [remote],
        "proposals": proposals.split(","),
        "rekey_time": rekey_time,
        "reauth_time": "0",
        "dpd_delay": dpd_delay,
        "encap": encap,
        "mobike": "no",  # otherwise charon floats IKE to 4500 after IKE_SA_INIT
        "fragmentation": "no",
        "unique": unique,
        "local": {"auth": "psk", "id": local_id or local},
        "remote": {"auth": "psk", "id": remote_id or remote},
        "children": {CHILD: {
            "mode": mode,
            "local_ts": local_ts.split(","),
            "remote_ts": remote_ts.split(","),
            "esp_proposals": esp_proposals.split(","),
            "rekey_time": rekey_time,
            "replay_window": "1024",
            "start_action": "none",
            "dpd_action": "clear",
        }},
    }}


class Charon:
    """One charon process in namespace ``ns`` (None: this one), files under ``workdir``."""

    def __init__(self, ns: str | None, workdir: Path, *, kernel_libipsec: bool = False,
                 loglevel: int = 2, cookie_threshold: int = 10, extra: str = "") -> None:
        self.ns, self.dir = ns, Path(workdir)
        self.kernel_libipsec = kernel_libipsec
        self.loglevel, self.cookie_threshold, self.extra = loglevel, cookie_threshold, extra
        self.proc: subprocess.Popen[bytes] | None = None
        self._session: vici.Session | None = None
        self._sock: socket.socket | None = None

    @property
    def vici_path(self) -> Path:
        return self.dir / "charon.vici"

    @property
    def log_path(self) -> Path:
        return self.dir / "charon.log"

    def start(self, timeout: float = 60.0) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "strongswan.conf"
        # kernel-libipsec only does the IPsec half; addresses and routes stay kernel-netlink's
        kernel = "kernel-libipsec kernel-netlink" if self.kernel_libipsec else "kernel-netlink"
        conf.write_text(CONF.format(
            dir=self.dir, loglevel=self.loglevel, default=min(self.loglevel, 1),
            cookie_threshold=self.cookie_threshold, extra=self.extra, kernel=kernel))
        self.vici_path.unlink(missing_ok=True)
        shell = f"mount -t tmpfs tmpfs /run && exec {CHARON}"
        argv = (["ip", "netns", "exec", self.ns, "sh", "-c", shell] if self.ns
                else ["unshare", "--mount", "sh", "-c", shell])
        self.proc = subprocess.Popen(argv, env={**os.environ, "STRONGSWAN_CONF": str(conf)},
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"charon exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(OSError):
                self._connect()
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"charon's vici socket did not come up:\n{self.log()}")
            time.sleep(0.1)

    def _connect(self) -> None:
        self._sock, self._session = self.connect()
        self._session.version()

    def connect(self) -> tuple[socket.socket, vici.Session]:
        """A vici session of its own (one per thread: a session is not thread-safe)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(self.vici_path))
        except OSError:
            sock.close()
            raise
        return sock, vici.Session(sock)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = self._session = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """Die without a word (no DELETE sent): what a crashed peer looks like."""
        self.stop(signal.SIGKILL)

    @property
    def vici(self) -> vici.Session:
        if self._session is None:
            raise RuntimeError("charon is not running")
        return self._session

    # -- configuration ------------------------------------------------------------------------

    def load(self, conn: dict[str, Any], psk: bytes, owners: tuple[str, ...]) -> None:
        """Replace every IKE SA, connection and secret with ``conn`` and ``psk``."""
        self.terminate_all()
        for name in self.vici.get_conns().get("conns", []):
            self.vici.unload_conn({"name": name})
        self.vici.clear_creds()
        self.vici.load_shared({"type": "IKE", "data": psk, "owners": list(owners)})
        self.vici.load_conn(conn)

    # -- actions ------------------------------------------------------------------------------

    def initiate(self, timeout: float = 60.0) -> None:
        """Bring up ``peer``/``node``; raises vici CommandException when it fails."""
        for _ in self.vici.initiate({"ike": CONN, "child": CHILD,
                                     "timeout": int(timeout * 1000), "loglevel": -1}):
            pass

    def initiate_nowait(self) -> None:
        """Queue an initiation and return at once (vici's negative timeout)."""
        with contextlib.suppress(vici.exception.CommandException):
            for _ in self.vici.initiate({"ike": CONN, "child": CHILD, "timeout": -1,
                                         "loglevel": -1}):
                pass

    def rekey_child(self) -> None:
        self.vici.rekey({"child": CHILD})

    def rekey_ike(self) -> None:
        self.vici.rekey({"ike": CONN})

    def terminate_child(self) -> None:
        for _ in self.vici.terminate({"child": CHILD, "timeout": 20000, "loglevel": -1}):
            pass

    def terminate_ike(self) -> None:
        for _ in self.vici.terminate({"ike": CONN, "timeout": 20000, "loglevel": -1}):
            pass

    def terminate_all(self) -> None:
        for sa in self.sas():
            with contextlib.suppress(vici.exception.CommandException):
                for _ in self.vici.terminate({"ike-id": sa["uniqueid"], "force": "yes",
                                              "timeout": -1, "loglevel": -1}):
                    pass

    # -- read-outs ----------------------------------------------------------------------------

    def sas(self) -> list[dict[str, Any]]:
        """Every IKE SA as a dict of str (vici's bytes decoded), Child SAs under 'child-sas'."""
        return [_text(sa) for entry in self.vici.list_sas() for sa in entry.values()]

    def established(self) -> list[dict[str, Any]]:
        return [sa for sa in self.sas() if sa["state"] == "ESTABLISHED"]

    def children(self) -> list[dict[str, Any]]:
        """Child SAs in state INSTALLED, over every IKE SA."""
        return [c for sa in self.sas() for c in sa.get("child-sas", {}).values()
                if c["state"] == "INSTALLED"]

    def stats(self) -> dict[str, Any]:
        return _text(self.vici.stats())

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def _text(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, dict):
        return {k: _text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_text(v) for v in value]
    return value
