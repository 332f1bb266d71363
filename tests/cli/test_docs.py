"""The docs stay in step with the code they describe."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from kube_ipsec.cli import xfrmstat
from tests.helm.test_monitoring import _alert_rules, _dashboard_exprs, _queried

DOCS = Path(__file__).resolve().parents[2] / "docs"
EXPECTED = {"install.md", "upgrade.md", "operations.md", "troubleshooting.md", "metrics.md",
            "security.md", "architecture.md"}


def test_every_doc_exists_and_links_resolve() -> None:
    assert EXPECTED <= {p.name for p in DOCS.glob("*.md")}
    for page in DOCS.glob("*.md"):
        for target in re.findall(r"\]\(([a-z-]+\.md)(?:#[^)]*)?\)", page.read_text()):
            assert (DOCS / target).exists(), f"{page.name} links to missing {target}"


def test_troubleshooting_explains_every_xfrm_counter() -> None:
    text = (DOCS / "troubleshooting.md").read_text()
    for name, counter in xfrmstat.COUNTERS.items():
        row = next((ln for ln in text.splitlines() if ln.startswith(f"| `{name}` |")), None)
        assert row is not None, f"{name} missing from troubleshooting.md"
        assert counter.cause in row and counter.fix in row, f"{name}: docs differ from the CLI"


def test_xfrm_counters_cover_the_running_kernel() -> None:
    """Every counter this kernel exports has an explanation (new kernels add counters)."""
    stat = Path("/proc/net/xfrm_stat")
    names = {line.split()[0] for line in stat.read_text().splitlines() if line.strip()}
    assert names and names <= set(xfrmstat.COUNTERS), names - set(xfrmstat.COUNTERS)


def test_metrics_reference_lists_every_queried_metric_and_alert() -> None:
    text = (DOCS / "metrics.md").read_text()
    queried = _queried(_dashboard_exprs()) | _queried([r["expr"] for r in _alert_rules()])
    base = {re.sub(r"_(bucket|sum|count)$", "", name) for name in queried}
    assert {n for n in base if f"`{n}`" not in text} == set()
    assert {r["alert"] for r in _alert_rules() if f"`{r['alert']}`" not in text} == set()


def test_operations_rotate_annotation_matches_the_contract() -> None:
    from kube_ipsec import contract

    assert contract.ANNOTATION_ROTATE_NOW in (DOCS / "operations.md").read_text()


def test_examples_in_docs_are_valid_yaml() -> None:
    for page in DOCS.glob("*.md"):
        for block in re.findall(r"```yaml\n(.*?)```", page.read_text(), re.S):
            assert yaml.safe_load(block) is not None
