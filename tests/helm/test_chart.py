"""The chart lints, renders valid Kubernetes objects, and its CRDs and README stay in sync."""

from __future__ import annotations

import filecmp
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.helm.chart import ALL_ON, CHART, REPO, crd_schema, find, helm, render, template

KUBE_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]


def test_lint_strict_is_clean() -> None:
    for values in ([], ["--set", "agent.privileged=true,exampleTunnel.enabled=true"]):
        out = helm("lint", "--strict", str(CHART), *values, check=False)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "[WARNING]" not in out.stdout and "[ERROR]" not in out.stdout


@pytest.mark.parametrize("values", [{}, ALL_ON, {"agent.privileged": True}], ids=str)
@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_rendered_objects_validate_offline(values: dict[str, object], version: str) -> None:
    docs = render(values)
    validated = 0
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
            validated += 1
        except kubernetes_validate.SchemaNotFoundError:
            # Custom resources: checked by the tests below against their own schemas.
            assert doc["apiVersion"].split("/")[0] in {
                "kopf.dev", "kube-ipsec.dev", "monitoring.coreos.com"
            }, doc["kind"]
    assert validated >= 15


def _tunnel_schema() -> dict[str, object]:
    return crd_schema(REPO / "crds" / "ipsectunnels.yaml")


@pytest.mark.parametrize("path", sorted((REPO / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_examples_validate_against_crd(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc.get("kind") == "IPsecTunnel":
            jsonschema.Draft7Validator(_tunnel_schema()).validate(doc)


def test_chart_example_tunnel_validates_against_crd() -> None:
    tunnel = find(render(ALL_ON), "IPsecTunnel")
    jsonschema.Draft7Validator(_tunnel_schema()).validate(tunnel)
    bad = dict(tunnel, spec=dict(tunnel["spec"], cipher="des"))
    with pytest.raises(jsonschema.ValidationError, match="des"):
        jsonschema.Draft7Validator(_tunnel_schema()).validate(bad)


def test_crd_copies_are_identical() -> None:
    sources = sorted(p.name for p in (REPO / "crds").glob("*.yaml"))
    assert sources
    for name in sources:
        assert filecmp.cmp(REPO / "crds" / name, CHART / "crds" / name, shallow=False), name
    extra = {p.name for p in (CHART / "crds").glob("*.yaml")} - set(sources)
    assert extra == {"clusterkopfpeerings.yaml"}
    # kopf's peering CRD: the operator's own copy is the source.
    assert filecmp.cmp(
        REPO / "kube_ipsec" / "operator" / "peering-crd.yaml",
        CHART / "crds" / "clusterkopfpeerings.yaml",
        shallow=False,
    )


def test_chart_crds_include_kopf_peering_and_render() -> None:
    out = template({}, "--include-crds").stdout
    crds = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "CustomResourceDefinition"]
    names = {d["metadata"]["name"] for d in crds}
    assert names == {
        "ipsectunnels.kube-ipsec.dev", "ipsecnodes.kube-ipsec.dev", "clusterkopfpeerings.kopf.dev"
    }
    peering = next(d for d in crds if d["spec"]["group"] == "kopf.dev")
    assert peering["spec"]["scope"] == "Cluster"
    assert peering["spec"]["names"]["plural"] == "clusterkopfpeerings"
    for crd in crds:
        kubernetes_validate.validate(crd, KUBE_VERSIONS[-1], strict=True)


def _value_paths(values: dict[str, object], prefix: str = "") -> list[str]:
    """Top-level keys, and the keys one level down in sections (what the README must list)."""
    paths = []
    for key, value in values.items():
        path = prefix + key
        if isinstance(value, dict) and value and not prefix:
            paths += _value_paths(value, path + ".")
        else:
            paths.append(path)
    return paths


def test_readme_documents_every_value() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    readme = (CHART / "README.md").read_text().split("## Values", 1)[1]
    missing = [p for p in _value_paths(values) if f"`{p}" not in readme]
    assert missing == []
    # ... and documents nothing that does not exist.
    documented = {
        cell.split("`")[1]
        for line in readme.splitlines() if line.startswith("| `")
        for cell in line.split("|")[1].split(",")
    }
    known = set(_value_paths(values)) | set(values)
    stale = sorted(d for d in documented if d not in known and d.rsplit(".", 1)[0] not in known)
    assert stale == []


def test_default_render_is_minimal_and_namespaced() -> None:
    docs = render()
    kinds = sorted(d["kind"] for d in docs)
    assert "ServiceMonitor" not in kinds and "PrometheusRule" not in kinds
    assert "IPsecTunnel" not in kinds
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering",
                      "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
    for doc in docs:
        if doc["kind"] not in cluster_scoped:
            assert doc["metadata"]["namespace"] == "kube-ipsec", doc["kind"]
    assert find(docs, "ClusterKopfPeering")["metadata"]["name"] == "kube-ipsec"


def test_service_monitor_without_service_fails() -> None:
    out = template(
        {"monitoring.serviceMonitor.enabled": True, "metrics.service.enabled": False}, check=False
    )
    assert out.returncode != 0
    assert "metrics.service.enabled" in out.stderr
