"""Rendering the chart with the helm binary that hack/helm.sh fetches (shared by the tests)."""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "kube-ipsec"
NAMESPACE = "kube-ipsec"


@functools.cache
def helm_binary() -> str:
    """Path of helm; fetched once into the cache outside the checkout."""
    env = dict(os.environ, PYTHON=os.environ.get("PYTHON", str(REPO / ".venv" / "bin" / "python")))
    out = subprocess.run(
        ["bash", str(REPO / "hack" / "helm.sh")],
        capture_output=True, text=True, check=True, timeout=300, env=env,
    )
    return out.stdout.strip().splitlines()[-1]


def kubectl_binary() -> str:
    return str(Path(helm_binary()).with_name("kubectl"))


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [helm_binary(), *args], capture_output=True, text=True, check=check, timeout=120
    )


def set_args(values: dict[str, Any] | None) -> list[str]:
    """``--set-json`` arguments for flat ``{"a.b": value}`` overrides."""
    import json

    args: list[str] = []
    for key, value in (values or {}).items():
        args += ["--set-json", f"{key}={json.dumps(value)}"]
    return args


def template(values: dict[str, Any] | None = None, *extra: str,
             release: str = "kube-ipsec", check: bool = True) -> subprocess.CompletedProcess[str]:
    return helm("template", release, str(CHART), "--namespace", NAMESPACE,
                *set_args(values), *extra, check=check)


def render(values: dict[str, Any] | None = None, *extra: str) -> list[dict[str, Any]]:
    """The chart's objects (templates only, no CRDs) for ``values``."""
    return [d for d in yaml.safe_load_all(template(values, *extra).stdout) if d]


def find(docs: list[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    matches = [
        d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)
    ]
    assert len(matches) == 1, f"expected one {kind} *{name_suffix}, got {len(matches)}"
    return matches[0]


def crd_schema(path: Path) -> dict[str, Any]:
    crd = yaml.safe_load(path.read_text())
    return dict(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


ALL_ON = {
    "monitoring.serviceMonitor.enabled": True,
    "monitoring.podMonitor.enabled": True,
    "monitoring.prometheusRule.enabled": True,
    "exampleTunnel.enabled": True,
}
