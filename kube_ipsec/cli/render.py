"""Plain-text tables for humans (``-o json`` bypasses all of this)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

MARKS = {"ok": "ok", "info": "--", "warning": "WARN", "error": "FAIL"}


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    lines = [headers, *cells]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def duration(seconds: float | None) -> str:
    """kubectl-style ages: 45s, 12m, 3h, 2d."""
    if seconds is None:
        return "never"
    s = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size * (2 if unit != "m" else 1):
            return f"{s // size}{unit}"
    return f"{s}s"


def status(report: dict[str, Any]) -> str:
    out = ["TUNNELS", table(
        ["NAME", "MODE", "CIPHER", "ENFORCEMENT", "READY", "NODES", "KEYGEN", "ROTATION"],
        [[t["name"], t["mode"], t["cipher"], t["enforcement"],
          t["ready"] + (f" ({t['reason']})" if t["reason"] else ""),
          f"{t['nodesReady'] if t['nodesReady'] is not None else '?'}/{t['selected']}",
          t["keyGeneration"], t["rotationPhase"] or "-"] for t in report["tunnels"]],
    )]
    out += ["", "NODES", table(
        ["NODE", "ADDRESS", "HEARTBEAT", "PEERS", "GENERATIONS IN USE", "INNER MTU",
         "LAST ERROR"],
        [[n["name"], n["address"],
          duration(n["heartbeatAge"]) + (" (stale)" if n["stale"] else ""),
          f"{n['peersEstablished']}/{n['peers']}",
          " ".join(f"{t}={g}" for t, g in sorted(n["generationsInUse"].items())) or "-",
          " ".join(f"{t}={m}" for t, m in sorted(n["mtu"].items())) or "-",
          n["lastError"] or "-"] for n in report["nodes"]],
    )]
    out += ["", "PEERS", table(
        ["NODE", "TUNNEL", "PEER", "ADDRESS", "IKE", "CHILD", "KEYGEN", "SPIS IN/OUT"],
        [[p["node"], p["tunnel"], p["peer"], p["address"], p["ikeState"] or "-",
          p["childState"] or "-", p["keyGeneration"],
          f"{','.join(p['spisIn']) or '-'}/{','.join(p['spisOut']) or '-'}"]
         for p in report["peers"]],
    )]
    out += ["", "KEY GENERATIONS", table(
        ["TUNNEL", "CURRENT", "IN USE (NODES)", "SKEW"],
        [[k["tunnel"], k["current"],
          "; ".join(f"{g}: {', '.join(n)}" for g, n in k["inUse"].items()) or "-",
          ("yes (rotating)" if k["rotating"] else "YES") if k["skewed"] else "no"]
         for k in report["keyGenerations"]],
    )]
    if "xfrm" in report:
        rows = report["xfrm"]
        out += ["", "XFRM ERRORS (/proc/net/xfrm_stat, non-zero)"]
        out.append(table(
            ["NODE", "COUNTER", "VALUE", "LIKELY CAUSE", "FIX"],
            [[r["node"], r["counter"] or "(metrics unreachable)", r["value"],
              r.get("cause", r.get("error", "")), r.get("fix", "")] for r in rows],
        ) if rows else "none")
    return "\n".join(out)


def diagnosis(report: dict[str, Any]) -> str:
    target = report["node"] + (f" <-> {report['peer']}" if report["peer"] else "")
    lines = [f"Diagnosis for {target}:"]
    for f in report["findings"]:
        where = "/".join(x for x in (f["tunnel"], f["peer"]) if x)
        lines.append(f"  [{MARKS[f['severity']]:>4}] {where + ': ' if where else ''}{f['message']}")
    lines.append("Verdict: " + ("encrypted" if report["encrypted"] else "NOT encrypted"))
    return "\n".join(lines)
