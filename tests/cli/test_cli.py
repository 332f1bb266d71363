"""The kube-ipsec CLI against a fake cluster: what it reports, explains and changes."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest

from kube_ipsec import contract
from kube_ipsec.cli import app as cli
from tests.cli.fake import NOW, FakeCluster, healthy_mesh, node, peer, tunnel


def run(cluster: FakeCluster, *argv: str) -> tuple[int, str]:
    out: list[str] = []
    code = cli.run(list(argv), cluster, NOW, out.append)
    return code, "\n".join(out)


def run_json(cluster: FakeCluster, *argv: str) -> tuple[int, Any]:
    code, text = run(cluster, "-o", "json", *argv)
    return code, json.loads(text)


# --- status -------------------------------------------------------------------------------------


def test_status_table_shows_tunnels_nodes_and_peers() -> None:
    code, text = run(healthy_mesh(), "status")
    assert code == 0
    assert "TUNNELS" in text and "NODES" in text and "PEERS" in text
    tunnel_line = next(line for line in text.splitlines() if line.startswith("mesh "))
    assert tunnel_line.split()[:5] == ["mesh", "transport", "aes-gcm-256", "require", "True"]
    assert "3/3" in tunnel_line
    node_line = next(line for line in text.splitlines() if line.startswith("a "))
    assert "10.0.0.1" in node_line and "2/2" in node_line and "mesh=2" in node_line
    assert "mesh=1438" in node_line  # the inner MTU the agent reports
    peer_lines = [ln for ln in text.splitlines() if " ESTABLISHED " in ln]
    assert len(peer_lines) == 6  # every node reports both of its peers


def test_status_json_reports_key_generation_skew() -> None:
    cluster = healthy_mesh()
    entry = cluster.ipsec_node("c")["status"]["tunnels"][0]
    entry["keyGenerationInUse"] = 1
    code, report = run_json(cluster, "status")
    assert code == 0
    (skew,) = report["keyGenerations"]
    assert skew == {"tunnel": "mesh", "current": 2, "inUse": {"1": ["c"], "2": ["a", "b"]},
                    "skewed": True, "behind": ["c"], "rotating": False}


def test_status_without_skew() -> None:
    _, report = run_json(healthy_mesh(), "status")
    assert report["keyGenerations"][0]["skewed"] is False
    assert {n["name"]: n["stale"] for n in report["nodes"]} == {"a": False, "b": False, "c": False}


def test_status_marks_stale_heartbeats() -> None:
    cluster = healthy_mesh()
    cluster.ipsec_node("b")["status"]["heartbeat"] = "2026-05-01T11:50:00Z"
    _, report = run_json(cluster, "status", "--stale-after", "60")
    assert {n["name"]: n["stale"] for n in report["nodes"]} == {"a": False, "b": True, "c": False}
    _, text = run(cluster, "status", "--stale-after", "60")
    assert "10m (stale)" in text


def test_status_json_after_subcommand_too() -> None:
    out: list[str] = []
    assert cli.run(["status", "-o", "json"], healthy_mesh(), NOW, out.append) == 0
    assert json.loads(out[0])["tunnels"][0]["name"] == "mesh"


METRICS = """\
# HELP kube_ipsec_agent_xfrm_stat_total Kernel /proc/net/xfrm_stat counters.
# TYPE kube_ipsec_agent_xfrm_stat_total counter
kube_ipsec_agent_xfrm_stat_total{counter="XfrmInNoStates"} 42.0
kube_ipsec_agent_xfrm_stat_total{counter="XfrmInStateProtoError"} 0.0
kube_ipsec_agent_xfrm_stat_total{counter="XfrmOutPolBlock"} 7.0
# TYPE kube_ipsec_agent_peers gauge
kube_ipsec_agent_peers{tunnel="mesh",state="ESTABLISHED"} 2.0
"""


def test_status_metrics_lists_nonzero_xfrm_counters_with_causes() -> None:
    cluster = healthy_mesh()
    untyped = 'kube_ipsec_agent_xfrm_stat_total{counter="XfrmOutNoStates"} 3\n'
    cluster.metrics = {"a": METRICS, "b": "# error: 503 Service Unavailable\n", "c": untyped}
    _, report = run_json(cluster, "status", "--metrics")
    rows = {(r["node"], r["counter"]): r for r in report["xfrm"]}
    assert set(rows) == {
        ("a", "XfrmInNoStates"), ("a", "XfrmOutPolBlock"), ("b", ""), ("c", "XfrmOutNoStates")
    }
    assert rows["a", "XfrmInNoStates"]["value"] == 42
    assert "SA" in rows["a", "XfrmInNoStates"]["cause"]
    assert "require" in rows["a", "XfrmOutPolBlock"]["cause"]
    assert rows["b", ""]["error"] == "503 Service Unavailable"
    _, text = run(cluster, "status", "--metrics")
    assert "XfrmInNoStates" in text and "(metrics unreachable)" in text


# --- rotate -------------------------------------------------------------------------------------


def test_rotate_sets_the_rotate_now_annotation() -> None:
    cluster = healthy_mesh()
    code, result = run_json(cluster, "rotate", "mesh")
    assert code == 0
    assert cluster.annotated == [("mesh", {contract.ANNOTATION_ROTATE_NOW: "2026-05-01T12:00:00Z"})]
    assert result["requestedAt"] == "2026-05-01T12:00:00Z"


def test_rotate_unknown_tunnel_fails(capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = run(healthy_mesh(), "rotate", "nope")
    assert code == 2
    assert "'nope' not found" in capsys.readouterr().err


# --- diagnose -----------------------------------------------------------------------------------


def diagnose(cluster: FakeCluster, *argv: str) -> tuple[int, list[tuple[str, str, str]]]:
    code, report = run_json(cluster, "diagnose", *argv)
    assert report["encrypted"] is (code == 0)
    return code, [(f["severity"], f["peer"], f["message"]) for f in report["findings"]]


def errors(findings: list[tuple[str, str, str]]) -> list[tuple[str, str]]:
    return [(peer, msg) for sev, peer, msg in findings if sev == "error"]


def test_diagnose_healthy_pair() -> None:
    code, findings = diagnose(healthy_mesh(), "a")
    assert code == 0
    assert errors(findings) == []
    ok_peers = {p for sev, p, m in findings if sev == "ok" and "ESTABLISHED" in m}
    assert ok_peers == {"b", "c"}
    code, text = run(healthy_mesh(), "diagnose", "a", "--peer", "b")
    assert code == 0 and text.endswith("Verdict: encrypted")


def test_diagnose_node_not_selected() -> None:
    cluster = healthy_mesh()
    cluster.tunnel_objs = [tunnel(selector={"matchLabels": {"ipsec": "on"}})]
    cluster.node_objs = [node("a", ipsec="on"), node("b", ipsec="on"), node("c")]
    code, findings = diagnose(cluster, "c")
    assert code == 1
    assert "not selected" in errors(findings)[0][1]


def test_diagnose_no_ipsec_node() -> None:
    cluster = healthy_mesh()
    cluster.ipsec_node_objs = [n for n in cluster.ipsec_node_objs if n["metadata"]["name"] != "c"]
    _, findings = diagnose(cluster, "c")
    assert "no IPsecNode c" in errors(findings)[0][1]
    # ... and from the other side, the pair a<->c is explained by c's missing agent.
    _, from_a = diagnose(cluster, "a", "--peer", "c")
    assert any("peer's agent never reported" in m for _, m in errors(from_a))


def test_diagnose_stale_heartbeat() -> None:
    cluster = healthy_mesh()
    cluster.ipsec_node("a")["status"]["heartbeat"] = "2026-05-01T11:00:00Z"
    code, findings = diagnose(cluster, "a")
    assert code == 1
    assert any("stale heartbeat (last 3600s ago)" in m for _, m in errors(findings))


def test_diagnose_peer_not_established_with_last_error() -> None:
    cluster = healthy_mesh()
    cluster.ipsec_node("a")["status"]["tunnels"][0]["peers"][0] = peer(
        "b", "10.0.0.2", ike="CONNECTING", child="", error="AUTHENTICATION_FAILED"
    )
    code, findings = diagnose(cluster, "a")
    assert code == 1
    assert errors(findings) == [("b", "IKE SA is CONNECTING, not ESTABLISHED")]
    assert ("warning", "b", "last error: AUTHENTICATION_FAILED") in findings
    assert any(sev == "info" and "traffic to b is dropped" in m for sev, _, m in findings)


def test_diagnose_child_sa_missing_under_allow_plaintext() -> None:
    cluster = healthy_mesh()
    cluster.tunnel_objs = [tunnel(enforcement="allow-plaintext")]
    cluster.ipsec_node("a")["status"]["tunnels"][0]["peers"][1] = peer(
        "c", "10.0.0.3", child="REKEYING"
    )
    _, findings = diagnose(cluster, "a", "--peer", "c")
    assert errors(findings) == [("c", "Child SA is REKEYING, not INSTALLED")]
    assert any("flows unencrypted" in m for _, _, m in findings)


def test_diagnose_key_generation_skew() -> None:
    cluster = healthy_mesh()
    cluster.tunnel_objs = [tunnel(gen=3)]
    code, findings = diagnose(cluster, "a")
    assert code == 1
    assert any("has not loaded the current generation 3" in m for _, m in errors(findings))


def test_diagnose_generation_in_use_lags_during_rotation_is_informational() -> None:
    cluster = healthy_mesh()
    cluster.tunnel_objs = [tunnel(gen=3, rotating="True")]
    for n in cluster.ipsec_node_objs:
        n["status"]["tunnels"][0]["keyGenerationsLoaded"] = [2, 3]
    code, findings = diagnose(cluster, "a")
    assert code == 0
    assert any(sev == "info" and "rotation in progress" in m for sev, _, m in findings)


def test_diagnose_missing_peer_entry() -> None:
    cluster = healthy_mesh()
    cluster.ipsec_node("a")["status"]["tunnels"][0]["peers"].pop()
    _, findings = diagnose(cluster, "a", "--peer", "c")
    assert errors(findings) == [("c", "no IKE SA with this peer (not negotiated yet, or IKE "
                                      "keeps failing)")]


def test_diagnose_external_peer() -> None:
    cluster = healthy_mesh()
    gw = {"name": "office-gw", "address": "198.51.100.10", "pskSecretRef": {"name": "gw"}}
    cluster.tunnel_objs = [tunnel(peers=[gw])]
    code, findings = diagnose(cluster, "a", "--peer", "office-gw")
    assert code == 1 and errors(findings)[0][0] == "office-gw"
    cluster.ipsec_node("a")["status"]["tunnels"][0]["peers"].append(
        peer("office-gw", "198.51.100.10")
    )
    assert diagnose(cluster, "a", "--peer", "office-gw")[0] == 0


def test_diagnose_unknown_node_no_tunnel_and_non_peer() -> None:
    assert "no Node named 'zz'" in errors(diagnose(healthy_mesh(), "zz")[1])[0][1]
    empty = healthy_mesh()
    empty.tunnel_objs = []
    assert "nothing is encrypted" in errors(diagnose(empty, "a")[1])[0][1]
    assert "not a peer" in errors(diagnose(healthy_mesh(), "a", "--peer", "zz")[1])[0][1]


def test_diagnose_table_output() -> None:
    cluster = healthy_mesh()
    cluster.ipsec_node("a")["status"]["tunnels"][0]["peers"][0]["ikeState"] = "DELETING"
    code, text = run(cluster, "diagnose", "a")
    assert code == 1
    assert "[FAIL] mesh/b: IKE SA is DELETING, not ESTABLISHED" in text
    assert text.endswith("Verdict: NOT encrypted")


# --- layering -----------------------------------------------------------------------------------


def test_cli_imports_only_the_contract_from_the_project() -> None:
    package = Path(cli.__file__).parent
    imported = set()
    for path in package.glob("*.py"):
        for item in ast.walk(ast.parse(path.read_text())):
            if isinstance(item, ast.ImportFrom) and item.module:
                imported.add(item.module)
            elif isinstance(item, ast.Import):
                imported.update(a.name for a in item.names)
    ours = {m for m in imported if m.startswith("kube_ipsec")}
    assert ours and all(m in {"kube_ipsec", "kube_ipsec.contract"} or
                        m.startswith("kube_ipsec.cli") for m in ours), ours
