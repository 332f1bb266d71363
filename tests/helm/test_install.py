"""`helm install` on a real kube-apiserver, then exactly what each ServiceAccount may do.

Permissions are asked of the real RBAC authorizer (SubjectAccessReview as the ServiceAccount,
with its groups), and the decisive ones are also tried as real requests while impersonating it.
"""

from __future__ import annotations

from collections.abc import Iterator

import kubernetes
import pytest
import yaml

from tests.fixtures.apiserver import APIServer
from tests.helm.chart import CHART, helm_binary
from tests.helm.install import Release, installed
from tests.helm.install import run as _run

pytestmark = pytest.mark.apiserver

RELEASE = "helmtest"
TUNNEL = "helm-test-mesh"
G = "kube-ipsec.dev"


@pytest.fixture(scope="module")
def release(apiserver: APIServer) -> Iterator[Release]:
    with installed(apiserver, RELEASE, "exampleTunnel.enabled=true",
                   f"exampleTunnel.name={TUNNEL}") as rel:
        yield rel


def test_install_creates_every_object(apiserver: APIServer, release: Release) -> None:
    docs = [d for d in yaml.safe_load_all(release.manifest) if d]
    assert len(docs) >= 15
    out = _run(
        [str(apiserver.kubectl), "--kubeconfig", str(apiserver.kubeconfig), "get", "-f", "-",
         "-o", "name", "-n", release.namespace],
        input=release.manifest,
    )
    assert out.returncode == 0, out.stderr
    created = set(out.stdout.split())
    for doc in docs:
        name = doc["metadata"]["name"]
        assert any(line.endswith("/" + name) and doc["kind"].lower() in line.lower()
                   for line in created), f"{doc['kind']}/{name} was not created"
    with apiserver.api_client() as client:
        custom = kubernetes.client.CustomObjectsApi(client)
        tunnel = custom.get_cluster_custom_object(G, "v1alpha1", "ipsectunnels", TUNNEL)
        peering = custom.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings",
                                                   "kube-ipsec")
        ds = kubernetes.client.AppsV1Api(client).read_namespaced_daemon_set(
            f"{RELEASE}-kube-ipsec-agent", release.namespace
        )
    # The API server applied the CRD's defaults to the example tunnel.
    assert tunnel["spec"]["protocol"] == "esp" and tunnel["spec"]["ike"]["dhGroup"] == "x25519"
    assert peering["metadata"]["name"] == "kube-ipsec"
    assert ds.spec.template.spec.host_network is True


def _allowed(apiserver: APIServer, user: str, verb: str, resource: str, *, group: str = "",
             namespace: str = "", subresource: str = "") -> bool:
    ns_of_sa = user.split(":")[2]
    review = {
        "spec": {
            "user": user,
            "groups": ["system:serviceaccounts", f"system:serviceaccounts:{ns_of_sa}",
                       "system:authenticated"],
            "resourceAttributes": {
                "verb": verb, "group": group, "resource": resource,
                "namespace": namespace, "subresource": subresource,
            },
        }
    }
    with apiserver.api_client() as client:
        result = kubernetes.client.AuthorizationV1Api(client).create_subject_access_review(review)
    return bool(result.status.allowed)


# (verb, resource, group, subresource, where): where is "own" (release namespace),
# "other" (another namespace) or "cluster" (cluster-wide / cluster-scoped).
Perm = tuple[str, str, str, str, str]

OPERATOR_ALLOWED: list[Perm] = [
    *[(v, "ipsectunnels", G, "", "cluster") for v in ("get", "list", "watch", "patch", "update")],
    *[(v, "ipsectunnels", G, "status", "cluster") for v in ("patch", "update")],
    *[(v, "ipsecnodes", G, "", "cluster") for v in ("get", "list", "watch")],
    *[(v, "nodes", "", "", "cluster") for v in ("get", "list", "watch")],
    ("create", "events", "", "", "other"), ("patch", "events", "", "", "own"),
    *[(v, "secrets", "", "", "own")
      for v in ("get", "list", "watch", "create", "update", "patch", "delete")],
    *[(v, "clusterkopfpeerings", "kopf.dev", "", "cluster") for v in ("list", "watch", "patch")],
    *[(v, "customresourcedefinitions", "apiextensions.k8s.io", "", "cluster")
      for v in ("list", "watch")],
    *[(v, "namespaces", "", "", "cluster") for v in ("list", "watch")],
]
OPERATOR_DENIED: list[Perm] = [
    ("create", "ipsectunnels", G, "", "cluster"), ("delete", "ipsectunnels", G, "", "cluster"),
    *[(v, "ipsecnodes", G, "", "cluster") for v in ("create", "update", "patch", "delete")],
    ("patch", "ipsecnodes", G, "status", "cluster"),
    *[(v, "secrets", "", "", "other") for v in ("get", "list", "create", "delete")],
    ("list", "secrets", "", "", "cluster"),
    ("patch", "nodes", "", "", "cluster"), ("delete", "nodes", "", "", "cluster"),
    ("create", "customresourcedefinitions", "apiextensions.k8s.io", "", "cluster"),
    ("list", "pods", "", "", "own"), ("create", "pods", "", "", "own"),
    ("get", "configmaps", "", "", "own"), ("create", "serviceaccounts", "", "", "own"),
    ("create", "rolebindings", "rbac.authorization.k8s.io", "", "own"),
    ("create", "namespaces", "", "", "cluster"), ("delete", "namespaces", "", "", "cluster"),
]
AGENT_ALLOWED: list[Perm] = [
    *[(v, "ipsectunnels", G, "", "cluster") for v in ("get", "list", "watch")],
    *[(v, "ipsecnodes", G, "", "cluster")
      for v in ("get", "list", "watch", "create", "patch", "update")],
    *[(v, "ipsecnodes", G, "status", "cluster") for v in ("patch", "update")],
    *[(v, "nodes", "", "", "cluster") for v in ("get", "list", "watch")],
    *[(v, "secrets", "", "", "own") for v in ("get", "list", "watch")],
    ("create", "events", "", "", "own"),
]
AGENT_DENIED: list[Perm] = [
    *[(v, "secrets", "", "", where)
      for v in ("create", "update", "patch", "delete", "deletecollection")
      for where in ("own", "other", "cluster")],
    *[(v, "secrets", "", "", where) for v in ("get", "list", "watch")
      for where in ("other", "cluster")],
    *[(v, "ipsectunnels", G, "", "cluster") for v in ("create", "patch", "update", "delete")],
    ("patch", "ipsectunnels", G, "status", "cluster"),
    ("delete", "ipsecnodes", G, "", "cluster"),
    ("patch", "nodes", "", "", "cluster"), ("update", "nodes", "", "", "cluster"),
    *[(v, "clusterkopfpeerings", "kopf.dev", "", "cluster") for v in ("get", "list", "patch")],
    ("list", "pods", "", "", "own"), ("get", "configmaps", "", "", "own"),
    ("create", "customresourcedefinitions", "apiextensions.k8s.io", "", "cluster"),
    ("create", "serviceaccounts", "", "", "own"),
    ("create", "serviceaccounts", "", "token", "own"),
    ("list", "namespaces", "", "", "cluster"),
]


def _check(apiserver: APIServer, release: Release, user: str, perms: list[Perm],
           expected: bool) -> None:
    where = {"own": release.namespace, "other": "kube-system", "cluster": ""}
    wrong = [
        p for p in perms
        if _allowed(apiserver, user, p[0], p[1], group=p[2], subresource=p[3],
                    namespace=where[p[4]]) is not expected
    ]
    assert wrong == [], f"{'denied' if expected else 'allowed'} but should not be: {wrong}"


def test_operator_may_do_exactly_its_job(apiserver: APIServer, release: Release) -> None:
    _check(apiserver, release, release.operator, OPERATOR_ALLOWED, True)
    _check(apiserver, release, release.operator, OPERATOR_DENIED, False)


def test_agent_may_do_exactly_its_job(apiserver: APIServer, release: Release) -> None:
    _check(apiserver, release, release.agent, AGENT_ALLOWED, True)
    _check(apiserver, release, release.agent, AGENT_DENIED, False)


def test_agent_reads_but_never_writes_secrets(apiserver: APIServer, release: Release) -> None:
    """Real requests as the agent: read a key Secret here; write nothing; read nothing elsewhere."""
    secret = {"metadata": {"name": "ipsec-keys-x"}, "data": {"k": "AA=="}}
    with apiserver.api_client() as admin:
        core = kubernetes.client.CoreV1Api(admin)
        core.create_namespaced_secret(release.namespace, secret)
        core.create_namespaced_secret("default", {**secret, "metadata": {"name": "elsewhere"}})
    try:
        with apiserver.api_client(as_user=release.agent) as client:
            core = kubernetes.client.CoreV1Api(client)
            assert core.read_namespaced_secret("ipsec-keys-x", release.namespace).data == {
                "k": "AA=="
            }
            attempts = [
                lambda: core.read_namespaced_secret("elsewhere", "default"),
                lambda: core.list_secret_for_all_namespaces(),
                lambda: core.create_namespaced_secret(
                    release.namespace, {"metadata": {"name": "planted"}}
                ),
                lambda: core.patch_namespaced_secret(
                    "ipsec-keys-x", release.namespace, {"data": {"k": "AQ=="}}
                ),
                lambda: core.delete_namespaced_secret("ipsec-keys-x", release.namespace),
            ]
            for attempt in attempts:
                with pytest.raises(kubernetes.client.ApiException) as denied:
                    attempt()
                assert denied.value.status == 403
    finally:
        with apiserver.api_client() as admin:
            core = kubernetes.client.CoreV1Api(admin)
            core.delete_namespaced_secret("ipsec-keys-x", release.namespace)
            core.delete_namespaced_secret("elsewhere", "default")


def test_operator_writes_key_secrets_only_in_its_namespace(
    apiserver: APIServer, release: Release
) -> None:
    with apiserver.api_client(as_user=release.operator) as client:
        core = kubernetes.client.CoreV1Api(client)
        body = {"metadata": {"name": "ipsec-keys-op"}, "data": {"k": "AA=="}}
        core.create_namespaced_secret(release.namespace, body)
        core.delete_namespaced_secret("ipsec-keys-op", release.namespace)
        with pytest.raises(kubernetes.client.ApiException) as denied:
            core.create_namespaced_secret("default", body)
        assert denied.value.status == 403


NODE_NAME_EXTRA = "Impersonate-Extra-authentication.kubernetes.io%2fnode-name"


def _ipsec_node(name: str) -> dict[str, object]:
    return {"apiVersion": f"{G}/v1alpha1", "kind": "IPsecNode", "metadata": {"name": name},
            "spec": {"nodeName": name}}


def test_agent_writes_only_its_own_ipsec_node(apiserver: APIServer, release: Release) -> None:
    """The admission policy holds a node-bound agent token to its own node's IPsecNode."""
    created = []
    try:
        with apiserver.api_client(as_user=release.agent) as client:
            client.set_default_header(NODE_NAME_EXTRA, "helm-node-a")
            custom = kubernetes.client.CustomObjectsApi(client)
            custom.create_cluster_custom_object(G, "v1alpha1", "ipsecnodes",
                                                _ipsec_node("helm-node-a"))
            created.append("helm-node-a")
            custom.patch_cluster_custom_object_status(
                G, "v1alpha1", "ipsecnodes", "helm-node-a", {"status": {"address": "10.1.1.1"}}
            )
            with pytest.raises(kubernetes.client.ApiException) as denied:
                custom.create_cluster_custom_object(G, "v1alpha1", "ipsecnodes",
                                                    _ipsec_node("helm-node-b"))
            assert denied.value.status == 403
            assert "may only write IPsecNode helm-node-a" in str(denied.value.body)
        # Node b's agent cannot touch node a's report either, not even its status.
        with apiserver.api_client(as_user=release.agent) as client:
            client.set_default_header(NODE_NAME_EXTRA, "helm-node-b")
            custom = kubernetes.client.CustomObjectsApi(client)
            with pytest.raises(kubernetes.client.ApiException) as denied:
                custom.patch_cluster_custom_object_status(
                    G, "v1alpha1", "ipsecnodes", "helm-node-a",
                    {"status": {"address": "10.6.6.6"}},
                )
            assert denied.value.status == 403
        with apiserver.api_client() as admin:
            stored = kubernetes.client.CustomObjectsApi(admin).get_cluster_custom_object(
                G, "v1alpha1", "ipsecnodes", "helm-node-a"
            )
        assert stored["status"]["address"] == "10.1.1.1"
    finally:
        with apiserver.api_client() as admin:
            for name in created:
                kubernetes.client.CustomObjectsApi(admin).delete_cluster_custom_object(
                    G, "v1alpha1", "ipsecnodes", name
                )


def test_upgrade_as_documented(apiserver: APIServer, release: Release) -> None:
    """docs/upgrade.md: CRDs by server-side apply, then `helm upgrade --reuse-values`."""
    kubectl = [str(apiserver.kubectl), "--kubeconfig", str(apiserver.kubeconfig)]
    out = _run([*kubectl, "apply", "--server-side", "--force-conflicts",
                "-f", str(CHART / "crds")])
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("serverside-applied") == 3
    helm = [helm_binary(), "--kubeconfig", str(apiserver.kubeconfig)]
    out = _run([*helm, "upgrade", RELEASE, str(CHART), "-n", release.namespace,
                "--reuse-values", "--set", "operator.replicas=3,agent.linkMTU=9000"])
    assert out.returncode == 0, out.stdout + out.stderr
    with apiserver.api_client() as client:
        apps = kubernetes.client.AppsV1Api(client)
        deployment = apps.read_namespaced_deployment(
            f"{RELEASE}-kube-ipsec-operator", release.namespace
        )
        ds = apps.read_namespaced_daemon_set(f"{RELEASE}-kube-ipsec-agent", release.namespace)
        tunnel = kubernetes.client.CustomObjectsApi(client).get_cluster_custom_object(
            G, "v1alpha1", "ipsectunnels", TUNNEL
        )
    assert deployment.spec.replicas == 3
    assert "--link-mtu=9000" in ds.spec.template.spec.containers[0].args
    assert tunnel["metadata"]["name"] == TUNNEL  # --reuse-values kept the example tunnel
    history = _run([*helm, "history", RELEASE, "-n", release.namespace, "-o", "json"])
    assert [r["revision"] for r in yaml.safe_load(history.stdout)] == [1, 2]
