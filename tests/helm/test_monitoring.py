"""The dashboard and alerts are well-formed and only query metrics the code really exports."""

from __future__ import annotations

import importlib
import json
from typing import Any

import prometheus_client
import promql_parser
import pytest
from prometheus_client.registry import CollectorRegistry

from tests.helm.chart import ALL_ON, find, render

METRICS_MODULES = ("kube_ipsec.operator.metrics", "kube_ipsec.agent.metrics")
PREFIXES = ("kube_ipsec_operator_", "kube_ipsec_agent_")
# The sample names a family of each type exposes (what PromQL can select).
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
    "stateset": ("",),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "unknown": ("",),
}


def _dashboard() -> dict[str, Any]:
    configmap = find(render(), "ConfigMap", "-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    return dict(json.loads(configmap["data"]["kube-ipsec.json"]))


def _alert_rules() -> list[dict[str, Any]]:
    rule = find(render(ALL_ON), "PrometheusRule")
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def _dashboard_exprs() -> list[str]:
    return [t["expr"] for p in _dashboard()["panels"] for t in p.get("targets", [])]


def _registries(module: Any) -> list[CollectorRegistry]:
    """Registries a metrics module defines: its own, or metrics it created on the default one."""
    found = [v for v in vars(module).values() if isinstance(v, CollectorRegistry)]
    for value in vars(module).values():
        if not (isinstance(value, type) and value.__module__ == module.__name__):
            continue
        # A class holding its metrics on a registry it creates, or on one it is given.
        for kwargs in ({}, {"registry": CollectorRegistry()}):
            try:
                instance = value(**kwargs)
            except TypeError:
                continue
            found += [
                v for v in vars(instance).values() if isinstance(v, CollectorRegistry)
            ]
            break
    return found or [prometheus_client.REGISTRY]


def exported_names() -> set[str]:
    """Sample names registered by the operator's and agent's metrics modules.

    Fails (never skips) while a module is missing: the dashboard would query nothing.
    """
    names: set[str] = set()
    for module_name in METRICS_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            pytest.fail(f"{module_name} does not exist yet ({exc}); the dashboard and alerts "
                        "cannot be checked against the code")
        for registry in _registries(module):
            for family in registry.collect():
                names.update(family.name + s for s in _SUFFIXES.get(family.type, ("",)))
    return {n for n in names if n.startswith(PREFIXES)}


def _selected_metrics(expr: str) -> set[str]:
    """Metric names an expression selects; parsing fails on invalid or ill-typed PromQL."""
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def _queried(exprs: list[str]) -> set[str]:
    return {m for e in exprs for m in _selected_metrics(e)}


def test_dashboard_is_grafana_dashboard_json() -> None:
    dash = _dashboard()
    assert dash["title"] and dash["uid"] == "kube-ipsec"
    assert isinstance(dash["schemaVersion"], int) and dash["schemaVersion"] >= 30
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in dash["panels"]:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        area = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not area & cells, f"panel {panel['title']!r} overlaps another"
        cells |= area
        if panel["type"] == "row":
            continue
        assert panel["type"] in {"stat", "timeseries", "gauge", "table", "bargauge"}
        assert panel["datasource"]["uid"] == "${datasource}"
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs))
        for target in panel["targets"]:
            assert _selected_metrics(target["expr"]), target["expr"]


def test_alerts_cover_the_failure_modes() -> None:
    rules = _alert_rules()
    names = {r["alert"] for r in rules}
    assert {
        "KubeIPsecTunnelNotReady", "KubeIPsecRotationStuck", "KubeIPsecNodeNotAcknowledging",
        "KubeIPsecXfrmErrorsRising", "KubeIPsecIKEFailures", "KubeIPsecSeqHeadroomLow",
    } <= names
    for rule in rules:
        assert _selected_metrics(rule["expr"]), rule["expr"]
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]
    stuck = next(r for r in rules if r["alert"] == "KubeIPsecRotationStuck")
    assert stuck["for"] == "30m"
    low = next(r for r in rules if r["alert"] == "KubeIPsecSeqHeadroomLow")
    assert low["expr"].rstrip().endswith("< 0.1")


def test_every_queried_metric_covers_both_components() -> None:
    queried = _queried(_dashboard_exprs()) | _queried([r["expr"] for r in _alert_rules()])
    assert any(q.startswith("kube_ipsec_operator_") for q in queried)
    assert any(q.startswith("kube_ipsec_agent_") for q in queried)
    assert all(q.startswith(PREFIXES) for q in queried), queried


def test_promql_checks_reject_bad_queries() -> None:
    """The checks above would notice a broken or ill-typed query, and find every selector."""
    for bad in ("sum(rate(kube_ipsec_agent_peers[5m])", "kube_ipsec_agent_peers + on(x) 1"):
        with pytest.raises(ValueError):
            _selected_metrics(bad)
    assert _queried(["a_total / on (tunnel) group_left max by (tunnel) (b)", "c{d=~'e'}"]) == {
        "a_total", "b", "c"
    }


def test_dashboard_metrics_exist_in_code() -> None:
    missing = _queried(_dashboard_exprs()) - exported_names()
    assert missing == set(), f"dashboard queries metrics the code does not export: {missing}"


def test_alert_metrics_exist_in_code() -> None:
    missing = _queried([r["expr"] for r in _alert_rules()]) - exported_names()
    assert missing == set(), f"alerts query metrics the code does not export: {missing}"
