"""We test these aspects of the package layout (DESIGN.md §1):

- imports only point down the layers: agent|operator > ike|xfrm > contract;
- agent and operator are independent, and so are ike and xfrm;
- only xfrm imports pyroute2, and the sans-IO ike core imports no I/O or framework;
- ``operator`` from the repo root is still the standard library's module.
"""

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "kube_ipsec"

# For each layer: the kube_ipsec layers it must not import.
FORBIDDEN_LAYERS = {
    "contract": {"ike", "xfrm", "agent", "operator", "cli", "lab"},
    "ike": {"xfrm", "agent", "operator", "cli", "lab"},
    "xfrm": {"ike", "agent", "operator", "cli", "lab"},
    "operator": {"agent", "xfrm", "ike", "lab"},
    "agent": {"operator", "lab"},
}
FORBIDDEN_THIRD_PARTY = {
    "ike": {"asyncio", "socket", "pyroute2", "kopf", "kubernetes", "time", "random"},
    "contract": {"pyroute2", "kopf", "kubernetes"},
    "operator": {"pyroute2"},
    "agent": {"pyroute2"},
}


def layer_of(path: pathlib.Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def imported_modules(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            if node.module == "kube_ipsec":
                names.update(f"kube_ipsec.{alias.name}" for alias in node.names)
    return names


def python_files():
    return sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE or p.stem != "__init__")


@pytest.mark.parametrize("path", python_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_respect_layers(path):
    layer = layer_of(path)
    imports = imported_modules(path)
    for name in imports:
        parts = name.split(".")
        if parts[0] == "kube_ipsec" and len(parts) > 1:
            assert parts[1] not in FORBIDDEN_LAYERS.get(layer, set()), f"{layer} imports {name}"
        assert parts[0] not in FORBIDDEN_THIRD_PARTY.get(layer, set()), f"{layer} imports {name}"


def test_stdlib_operator_is_not_shadowed():
    out = subprocess.run(
        [sys.executable, "-c", "import operator; print(operator.__file__)"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout
    assert "kube_ipsec" not in out and out.strip().endswith("operator.py")
