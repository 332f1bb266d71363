"""What the CLI reads from and writes to the cluster, behind one small interface.

``KubeCluster`` talks to the API server with the kubernetes client; tests substitute a fake
with the same methods. Objects are plain dicts (the API's JSON), so the reports never depend on
the client's model classes.
"""

from __future__ import annotations

from typing import Any, Protocol

from kube_ipsec import contract

AGENT_SELECTOR = "app.kubernetes.io/part-of=kube-ipsec,app.kubernetes.io/component=agent"


class ClusterError(RuntimeError):
    """A request the CLI could not complete (message is for the user)."""


class Cluster(Protocol):
    def tunnels(self) -> list[dict[str, Any]]: ...
    def ipsec_nodes(self) -> list[dict[str, Any]]: ...
    def nodes(self) -> list[dict[str, Any]]: ...
    def annotate_tunnel(self, name: str, annotations: dict[str, str]) -> dict[str, Any]: ...
    def agent_metrics(self, namespace: str, port: int) -> dict[str, str]: ...


class KubeCluster:
    """The real API server (kubeconfig or in-cluster credentials)."""

    def __init__(self, api_client: Any) -> None:
        import kubernetes

        # Typed loosely: the client's generated signatures say ``object`` for JSON results.
        self._client: Any = api_client
        self._custom: Any = kubernetes.client.CustomObjectsApi(api_client)
        self._core: Any = kubernetes.client.CoreV1Api(api_client)
        self._exc = kubernetes.client.ApiException

    @classmethod
    def connect(cls, kubeconfig: str | None = None, context: str | None = None) -> KubeCluster:
        import kubernetes

        try:
            client = kubernetes.config.new_client_from_config(
                config_file=kubeconfig, context=context
            )
        except kubernetes.config.ConfigException as exc:
            if kubeconfig or context:
                raise ClusterError(f"kubeconfig: {exc}") from None
            try:
                kubernetes.config.load_incluster_config()
            except kubernetes.config.ConfigException:
                raise ClusterError("no kubeconfig found and not running in a cluster") from None
            client = kubernetes.client.ApiClient()
        return cls(client)

    def _list(self, plural: str) -> list[dict[str, Any]]:
        try:
            result = self._custom.list_cluster_custom_object(
                contract.GROUP, contract.VERSION, plural
            )
        except self._exc as exc:
            raise ClusterError(f"cannot list {plural}: {exc.status} {exc.reason}") from None
        return list(result.get("items") or [])

    def tunnels(self) -> list[dict[str, Any]]:
        return self._list(contract.TUNNEL_PLURAL)

    def ipsec_nodes(self) -> list[dict[str, Any]]:
        return self._list(contract.NODE_PLURAL)

    def nodes(self) -> list[dict[str, Any]]:
        try:
            items = self._core.list_node().items
        except self._exc as exc:
            raise ClusterError(f"cannot list nodes: {exc.status} {exc.reason}") from None
        return [self._client.sanitize_for_serialization(n) for n in items]

    def annotate_tunnel(self, name: str, annotations: dict[str, str]) -> dict[str, Any]:
        try:
            return dict(
                self._custom.patch_cluster_custom_object(
                    contract.GROUP, contract.VERSION, contract.TUNNEL_PLURAL, name,
                    {"metadata": {"annotations": annotations}},
                )
            )
        except self._exc as exc:
            if exc.status == 404:
                raise ClusterError(f"IPsecTunnel {name!r} not found") from None
            raise ClusterError(f"cannot annotate {name}: {exc.status} {exc.reason}") from None

    def agent_metrics(self, namespace: str, port: int) -> dict[str, str]:
        """Each agent's /metrics text by node name, through the API server's pod proxy."""
        try:
            pods = self._core.list_namespaced_pod(namespace, label_selector=AGENT_SELECTOR).items
        except self._exc as exc:
            raise ClusterError(f"cannot list agent pods: {exc.status} {exc.reason}") from None
        texts: dict[str, str] = {}
        for pod in pods:
            node = pod.spec.node_name or pod.metadata.name
            try:
                texts[node] = self._core.connect_get_namespaced_pod_proxy_with_path(
                    f"{pod.metadata.name}:{port}", namespace, "metrics"
                )
            except self._exc as exc:
                texts[node] = f"# error: {exc.status} {exc.reason}\n"
        return texts
