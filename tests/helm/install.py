"""Installing the chart on the test API server (for the apiserver-marked chart tests)."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import kubernetes

from tests.fixtures.apiserver import APIServer
from tests.helm.chart import CHART, helm_binary

PEERING_CRD = "clusterkopfpeerings.kopf.dev"


@dataclass
class Release:
    name: str
    namespace: str
    manifest: str
    operator: str  # the ServiceAccounts' user names
    agent: str

    def account(self, component: str) -> str:
        return f"{self.name}-kube-ipsec-{component}"


def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, **kw)  # type: ignore[call-overload,no-any-return]


@contextlib.contextmanager
def installed(apiserver: APIServer, name: str, *set_values: str) -> Iterator[Release]:
    """`helm install` into a fresh namespace; uninstall and restore the server afterwards."""
    with apiserver.api_client() as client:
        core = kubernetes.client.CoreV1Api(client)
        namespace = core.create_namespace({"metadata": {"generateName": "helm-"}}).metadata.name
        ext = kubernetes.client.ApiextensionsV1Api(client)
        had_peering_crd = any(
            c.metadata.name == PEERING_CRD for c in ext.list_custom_resource_definition().items
        )
    helm = [helm_binary(), "--kubeconfig", str(apiserver.kubeconfig)]
    # The fixture already created our CRDs (same content, another field manager); helm's
    # server-side apply takes them over instead of failing on the conflict. Likewise a
    # peering object "kube-ipsec" left by an operator run in the same API server.
    args = [arg for value in set_values for arg in ("--set", value)]
    out = run([*helm, "install", name, str(CHART), "--namespace", namespace,
               "--force-conflicts", "--take-ownership", *args])
    assert out.returncode == 0, out.stdout + out.stderr
    try:
        manifest = run([*helm, "get", "manifest", name, "-n", namespace], check=True).stdout
        prefix = f"system:serviceaccount:{namespace}:{name}-kube-ipsec"
        yield Release(name, namespace, manifest, f"{prefix}-operator", f"{prefix}-agent")
    finally:
        run([*helm, "uninstall", name, "-n", namespace])
        with apiserver.api_client() as client:
            if not had_peering_crd:
                _delete_crd(kubernetes.client.ApiextensionsV1Api(client), PEERING_CRD)
            kubernetes.client.CoreV1Api(client).delete_namespace(namespace)


def _delete_crd(ext: kubernetes.client.ApiextensionsV1Api, name: str) -> None:
    """Delete a CRD and wait until it is gone: the next install re-creating it while it still
    terminates never sees it Established (helm then fails with 'not ready', seen under load)."""
    with contextlib.suppress(kubernetes.client.ApiException):
        ext.delete_custom_resource_definition(name)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            ext.read_custom_resource_definition(name)
        except kubernetes.client.ApiException as exc:
            if exc.status == 404:
                return
            raise
        time.sleep(0.2)
    raise AssertionError(f"CRD {name} still present 60 s after its deletion")
