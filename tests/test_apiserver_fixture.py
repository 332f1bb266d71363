"""The real-apiserver fixture gives what later tests rely on: CRDs, real RBAC, restarts."""

from __future__ import annotations

import subprocess

import kubernetes
import pytest
import urllib3

from tests.fixtures.apiserver import APIServer, crd_documents, crd_established, k8s_version

pytestmark = pytest.mark.apiserver


def test_server_answers_with_pinned_version(apiserver: APIServer) -> None:
    with apiserver.api_client() as client:
        info = kubernetes.client.VersionApi(client).get_code()
        names = {
            ns.metadata.name for ns in kubernetes.client.CoreV1Api(client).list_namespace().items
        }
    assert info.git_version == k8s_version()
    assert {"default", "kube-system"} <= names


def test_kubectl_uses_admin_kubeconfig(apiserver: APIServer) -> None:
    out = subprocess.run(
        [
            str(apiserver.kubectl),
            "--kubeconfig",
            str(apiserver.kubeconfig),
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.groups}",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert "system:masters" in out


def test_every_crd_is_established_and_served(apiserver: APIServer) -> None:
    docs = crd_documents()
    assert docs, "crds/*.yaml holds no CustomResourceDefinition"
    with apiserver.api_client() as client:
        ext = kubernetes.client.ApiextensionsV1Api(client)
        custom = kubernetes.client.CustomObjectsApi(client)
        for doc in docs:
            assert crd_established(ext.read_custom_resource_definition(doc["metadata"]["name"]))
            spec = doc["spec"]
            version = next(v["name"] for v in spec["versions"] if v.get("served", True))
            listed = custom.list_cluster_custom_object(
                spec["group"], version, spec["names"]["plural"]
            )
            assert listed["items"] == []


def test_rbac_is_enforced_for_impersonated_users(apiserver: APIServer, k8s_namespace: str) -> None:
    user = f"system:serviceaccount:{k8s_namespace}:reader"
    with apiserver.api_client(as_user=user) as client:
        core = kubernetes.client.CoreV1Api(client)
        with pytest.raises(kubernetes.client.ApiException) as denied:
            core.list_namespaced_secret(k8s_namespace)
        assert denied.value.status == 403

        with apiserver.api_client() as admin:
            rbac = kubernetes.client.RbacAuthorizationV1Api(admin)
            rbac.create_namespaced_role(
                k8s_namespace,
                {
                    "metadata": {"name": "secret-reader"},
                    "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}],
                },
            )
            rbac.create_namespaced_role_binding(
                k8s_namespace,
                {
                    "metadata": {"name": "reader"},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "Role",
                        "name": "secret-reader",
                    },
                    "subjects": [
                        {"kind": "ServiceAccount", "name": "reader", "namespace": k8s_namespace}
                    ],
                },
            )
        assert core.list_namespaced_secret(k8s_namespace).items == []
        review = kubernetes.client.AuthorizationV1Api(client).create_self_subject_access_review(
            {
                "spec": {
                    "resourceAttributes": {
                        "namespace": k8s_namespace,
                        "verb": "delete",
                        "resource": "secrets",
                    }
                },
            }
        )
        assert review.status.allowed is False


def test_service_account_tokens_authenticate(apiserver: APIServer, k8s_namespace: str) -> None:
    with apiserver.api_client() as admin:
        core = kubernetes.client.CoreV1Api(admin)
        core.create_namespaced_service_account(k8s_namespace, {"metadata": {"name": "agent"}})
        token = core.create_namespaced_service_account_token(
            "agent", k8s_namespace, {"spec": {"expirationSeconds": 3600}}
        ).status.token
    kubeconfig = apiserver.kubeconfig_for(apiserver.url, token=token, name="agent")
    with kubernetes.config.new_client_from_config(config_file=str(kubeconfig)) as client:
        review = kubernetes.client.AuthenticationV1Api(client).create_self_subject_review({})
        assert review.status.user_info.username == f"system:serviceaccount:{k8s_namespace}:agent"
        with pytest.raises(kubernetes.client.ApiException) as denied:
            kubernetes.client.CoreV1Api(client).list_namespaced_secret(k8s_namespace)
        assert denied.value.status == 403


def test_restart_keeps_data(apiserver: APIServer, k8s_namespace: str) -> None:
    body = {"metadata": {"name": "survivor"}, "data": {"k": "v"}}
    with apiserver.api_client() as client:
        created = kubernetes.client.CoreV1Api(client).create_namespaced_config_map(
            k8s_namespace, body
        )
    apiserver.stop()
    try:
        with apiserver.api_client() as client:
            with pytest.raises(urllib3.exceptions.MaxRetryError, match=r"(?i)refused"):
                kubernetes.client.CoreV1Api(client).list_namespace(_request_timeout=5)
    finally:
        apiserver.start()
    with apiserver.api_client() as client:
        again = kubernetes.client.CoreV1Api(client).read_namespaced_config_map(
            "survivor", k8s_namespace
        )
    assert again.metadata.uid == created.metadata.uid
    assert again.data == {"k": "v"}
