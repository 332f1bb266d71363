"""The lab's host side: a real kube-apiserver, the operator and the Node objects around one
command — usually ``hack/vm/vmrun --net ...``, whose guest runs the agents.

    .venv/bin/python hack/lab/hostside.py [--workdir .lab] [--nodes 3] -- CMD ARGS...

Why on the host: Python under TCG is 10-15x slower, so everything that need not touch the
VM's kernel (etcd, kube-apiserver, the kopf operator) runs here at full speed. The guest
reaches the host's loopback at 10.0.2.2 (qemu user networking; the serving certificate names
that address). Each run gets a fresh directory under WORKDIR (``WORKDIR/last`` points at it),
so labs started side by side in one checkout never share files; WORKDIR must be a vmrun
``--rwdir``. CMD gets ``KUBE_IPSEC_LAB`` = the path of the run's ``lab.json`` (mode 600): API
URL as the guest sees it, token, CA, kubeconfig, node names and addresses, and a small control
endpoint through which a guest test stops and restarts kube-apiserver (the "API server down"
case). Exit status: CMD's.
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.fixtures.apiserver import VM_HOST_ADDRESS, APIServer, start_apiserver  # noqa: E402

NAMESPACE = "kube-ipsec"
NODE_NET = "10.0.2.{}"  # the guest bridges its node namespaces onto qemu's user network
FIRST_HOST = 11


def log(msg: str) -> None:
    print(f"[lab host {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def node_addresses(count: int) -> dict[str, str]:
    return {f"node-{i}": NODE_NET.format(FIRST_HOST + i - 1) for i in range(1, count + 1)}


def node_body(name: str, address: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {"addresses": [{"type": "Hostname", "address": name},
                                 {"type": "InternalIP", "address": address}]},
    }


def create_objects(server: APIServer, nodes: dict[str, str]) -> None:
    import kubernetes

    with server.api_client() as client:
        core: Any = kubernetes.client.CoreV1Api(client)
        core.create_namespace({"metadata": {"name": NAMESPACE}})
        for name, address in nodes.items():
            core.create_node(node_body(name, address))


class Control(http.server.ThreadingHTTPServer):
    """POST /apiserver/stop and /apiserver/start, with the lab's bearer token."""

    daemon_threads = True

    def __init__(self, server: APIServer, token: str) -> None:
        super().__init__(("127.0.0.1", 0), _ControlHandler)
        self.apiserver, self.token = server, token
        self.lock = threading.Lock()


class _ControlHandler(http.server.BaseHTTPRequestHandler):
    server: Control

    def do_POST(self) -> None:
        if self.headers.get("Authorization") != f"Bearer {self.server.token}":
            self.send_error(401)
            return
        actions = {"/apiserver/stop": self.server.apiserver.stop,
                   "/apiserver/start": self.server.apiserver.start}
        action = actions.get(self.path)
        if action is None:
            self.send_error(404)
            return
        with self.server.lock:
            log(f"control: {self.path}")
            action()
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def start_operator(server: APIServer, workdir: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "KUBECONFIG": str(server.kubeconfig)}
    with (workdir / "operator.log").open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "kube_ipsec.operator", "--namespace", NAMESPACE,
             "--standalone", "--metrics-port", "0", "--liveness", "", "--resync-interval", "2"],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)


def write_lab(workdir: Path, server: APIServer, nodes: dict[str, str],
              control: Control) -> Path:
    url = f"https://{VM_HOST_ADDRESS}:{server.port}"
    lab = {
        "server": url,
        "token": server.token,
        "ca": server.ca_path.read_text(),
        "kubeconfig": str(server.kubeconfig_for(url, name="guest")),
        "kubectl": str(server.kubectl),
        "namespace": NAMESPACE,
        "nodes": nodes,
        "control": f"http://{VM_HOST_ADDRESS}:{control.server_address[1]}",
        "control_token": control.token,
        "workdir": str(workdir),
    }
    path = workdir / "lab.json"
    path.touch(mode=0o600)
    path.write_text(json.dumps(lab, indent=1))
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", type=Path, default=REPO / ".lab")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("command", nargs="+")
    args = p.parse_args()
    # one directory per run: engineers sharing a checkout may run labs side by side
    args.workdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=time.strftime("run-%Y%m%d-%H%M%S-"),
                                    dir=args.workdir.resolve()))
    workdir.chmod(0o755)
    (workdir / "apiserver").mkdir()
    last = args.workdir / "last"
    last.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        last.symlink_to(workdir.name)
    log(f"lab directory {workdir} (also {last})")
    nodes = node_addresses(args.nodes)
    log("starting etcd + kube-apiserver")
    server = start_apiserver(workdir / "apiserver")
    operator = control = None
    try:
        create_objects(server, nodes)
        log(f"kube-apiserver {server.url} (guest: https://{VM_HOST_ADDRESS}:{server.port}); "
            f"Nodes {', '.join(f'{n}={a}' for n, a in nodes.items())}")
        operator = start_operator(server, workdir)
        log(f"operator started (namespace {NAMESPACE}; log {workdir / 'operator.log'})")
        control = Control(server, secrets.token_urlsafe(24))
        threading.Thread(target=control.serve_forever, daemon=True).start()
        lab = write_lab(workdir, server, nodes, control)
        env = {**os.environ, "KUBE_IPSEC_LAB": str(lab)}
        proc = subprocess.Popen(args.command, env=env)
        try:
            rc = proc.wait()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait()
        if operator.poll() is not None:
            log(f"operator exited early with {operator.returncode}: see {workdir}/operator.log")
            rc = rc or 1
        return rc
    finally:
        if control is not None:
            control.shutdown()
        if operator is not None and operator.poll() is None:
            operator.terminate()
            try:
                operator.wait(timeout=20)
            except subprocess.TimeoutExpired:
                operator.kill()
        server.close()
        shutil.rmtree(workdir / "apiserver" / "etcd-data", ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
