"""values.schema.json rejects bad values before anything reaches the cluster."""

from __future__ import annotations

import pytest

from tests.helm.chart import template

BAD_VALUES = {
    "zero-operator-replicas": ({"operator.replicas": 0}, "/operator/replicas"),
    "unknown-log-format": ({"logFormat": "xml"}, "/logFormat"),
    "agent-without-net-admin": ({"agent.capabilities": ["NET_RAW"]}, "/agent/capabilities"),
    "bad-pull-policy": ({"image.pullPolicy": "Sometimes"}, "/image/pullPolicy"),
    "unknown-top-level-key": ({"replicaCount": 3}, "replicaCount"),
    "privileged-as-string": ({"agent.privileged": "yes"}, "/agent/privileged"),
    "headroom-ratio-above-one": (
        {"monitoring.prometheusRule.seqHeadroomRatio": 1.5},
        "/monitoring/prometheusRule/seqHeadroomRatio",
    ),
    "ike-port-not-500": ({"agent.ikePort": 501}, "/agent/ikePort"),
    "interval-not-a-duration": (
        {"monitoring.serviceMonitor.interval": "thirty seconds"},
        "/monitoring/serviceMonitor/interval",
    ),
    "unknown-operator-key": ({"operator.replica": 2}, "replica"),
    "bad-memory-quantity": ({"agent.resources.limits.memory": "lots"}, "/agent/resources"),
    "tunnel-name-not-dns": ({"exampleTunnel.name": "Mesh_1"}, "/exampleTunnel/name"),
    "no-apiserver-port": ({"agent.apiserverPorts": []}, "/agent/apiserverPorts"),
    "extra-arg-not-a-flag": ({"agent.extraArgs": ["rm -rf"]}, "/agent/extraArgs/0"),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_schema_rejects(case: str) -> None:
    values, where = BAD_VALUES[case]
    out = template(values, check=False)
    assert out.returncode != 0, f"{values} was accepted"
    assert "schema" in out.stderr.lower()
    assert where in out.stderr, out.stderr


@pytest.mark.parametrize(
    "values",
    [
        {"agent.capabilities": ["NET_ADMIN"]},
        {"agent.updateStrategy.maxUnavailable": "10%"},
        {"operator.replicas": 3, "logFormat": "text"},
        {"monitoring.serviceMonitor.interval": "1m30s"},
        {"image.repository": "registry.example:5000/team/kube-ipsec", "image.tag": "0.1.0-rc1"},
    ],
    ids=str,
)
def test_schema_accepts_reasonable_values(values: dict[str, object]) -> None:
    out = template(values, check=False)
    assert out.returncode == 0, out.stderr
