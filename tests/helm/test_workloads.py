"""What the operator Deployment and agent DaemonSet promise: flags, identity, privileges."""

from __future__ import annotations

from typing import Any

from tests.helm.chart import find, render


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return dict(container)


def test_operator_runs_two_peered_replicas_unprivileged() -> None:
    deployment = find(render(), "Deployment", "-operator")
    spec = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    assert deployment["spec"]["replicas"] == 2
    assert container["command"] == ["kube-ipsec-operator"]
    assert container["args"] == [
        "--namespace=kube-ipsec",
        "--metrics-port=9090",
        "--liveness=http://0.0.0.0:8080/healthz",
        "--log-format=json",
    ]
    env = {e["name"]: e for e in container["env"]}
    assert env["KUBE_IPSEC_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert not spec.get("hostNetwork")
    assert find(render(), "PodDisruptionBudget")["spec"]["minAvailable"] == 1


def test_agent_runs_on_every_node_in_the_host_network() -> None:
    daemonset = find(render({"logFormat": "text"}), "DaemonSet", "-agent")
    spec = daemonset["spec"]["template"]["spec"]
    container = _container(daemonset)
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert {"operator": "Exists"} in spec["tolerations"]
    assert container["args"] == [
        "--node-name=$(NODE_NAME)",
        "--namespace=kube-ipsec",
        "--metrics-port=9101",
        "--log-format=text",
        "--link-mtu=1500",
        "--apiserver-port=6443",
    ]
    more = _container(find(render({"agent.apiserverPorts": [6443, 443],
                                   "agent.extraArgs": ["--status-interval=10"]}), "DaemonSet"))
    assert more["args"][-3:] == ["--apiserver-port=6443", "--apiserver-port=443",
                                 "--status-interval=10"]
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    ports = {(p["containerPort"], p["protocol"]) for p in container["ports"]}
    assert {(500, "UDP"), (4500, "UDP"), (9101, "TCP")} <= ports
    probes = (container["livenessProbe"]["httpGet"], container["readinessProbe"]["httpGet"])
    assert [p["path"] for p in probes] == ["/healthz", "/readyz"]


def test_agent_has_only_network_capabilities_unless_privileged() -> None:
    ctx = _container(find(render(), "DaemonSet"))["securityContext"]
    assert ctx["runAsUser"] == 0
    assert ctx["privileged"] is False
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"]["drop"] == ["ALL"]
    assert ctx["capabilities"]["add"] == ["NET_ADMIN", "NET_BIND_SERVICE"]

    privileged = _container(find(render({"agent.privileged": True}), "DaemonSet"))
    assert privileged["securityContext"]["privileged"] is True
    assert "allowPrivilegeEscalation" not in privileged["securityContext"]


def _rules(docs: list[dict[str, Any]], kind: str, suffix: str) -> list[dict[str, Any]]:
    return list(find(docs, kind, suffix)["rules"])


def _verbs(rules: list[dict[str, Any]], resource: str) -> set[str]:
    return {v for r in rules if resource in r["resources"] for v in r["verbs"]}


def test_rbac_secrets_are_namespaced_and_read_only_for_the_agent() -> None:
    docs = render()
    for component in ("-operator", "-agent"):
        assert _verbs(_rules(docs, "ClusterRole", component), "secrets") == set()
        assert "*" not in {v for r in _rules(docs, "ClusterRole", component) for v in r["verbs"]}
    assert _verbs(_rules(docs, "Role", "-agent"), "secrets") == {"get", "list", "watch"}
    assert _verbs(_rules(docs, "Role", "-operator"), "secrets") == {
        "get", "list", "watch", "create", "update", "patch", "delete"
    }
    agent = _rules(docs, "ClusterRole", "-agent")
    assert _verbs(agent, "ipsectunnels") == {"get", "list", "watch"}
    assert "create" in _verbs(agent, "ipsecnodes")
    operator = _rules(docs, "ClusterRole", "-operator")
    assert _verbs(operator, "ipsecnodes") == {"get", "list", "watch"}
    assert _verbs(operator, "clusterkopfpeerings") >= {"list", "watch", "patch"}
