"""We test these aspects of the agent's metrics (agent/metrics.py):

- the exact exported names the Helm dashboard and alerts use (plus the key-Secret error count);
- SA byte/packet counters stay monotonic when SAs are replaced (rekey), per direction;
- sequence headroom is the unused fraction of the outbound sequence space;
- /proc/net/xfrm_stat fields become counters labelled by field name;
- /metrics, /healthz and /readyz over HTTP, with readiness from a callback.
"""

import aiohttp
from prometheus_client.exposition import generate_latest

from kube_ipsec.agent import metrics, watchers

EXPECTED = {
    "kube_ipsec_agent_peers",
    "kube_ipsec_agent_sa_bytes_total",
    "kube_ipsec_agent_sa_packets_total",
    "kube_ipsec_agent_sa_seq_headroom_ratio",
    "kube_ipsec_agent_xfrm_stat_total",
    "kube_ipsec_agent_ike_exchanges_total",
    "kube_ipsec_agent_ike_failures_total",
    "kube_ipsec_agent_rekeys_total",
    "kube_ipsec_agent_key_generation_in_use",
    "kube_ipsec_agent_last_ike_success_timestamp_seconds",
    "kube_ipsec_agent_ike_dropped_datagrams_total",
}


# beyond the dashboard's set: broken key Secrets (registered by the watchers)
EXTRA = {"kube_ipsec_agent_key_secret_errors_total"}


def test_exported_names_are_exactly_the_contract():
    assert watchers.KEY_SECRET_ERRORS is not None
    assert metrics.exported_names() == EXPECTED | EXTRA
    text = generate_latest(metrics.REGISTRY).decode()
    for name in EXPECTED | EXTRA:
        assert f"# TYPE {name} " in text


def sample(spi, direction, nbytes, packets, oseq=0, esn=False):
    return metrics.SaSample("mesh", "node-b", direction, spi, nbytes, packets, oseq, esn)


def test_sa_counters_stay_monotonic_across_a_rekey():
    c = metrics.SaCounters()
    c.update([sample(1, "in", 100, 1), sample(2, "out", 200, 2)])
    c.update([sample(1, "in", 150, 2), sample(2, "out", 300, 3), sample(3, "out", 10, 1)])
    c.update([sample(1, "in", 160, 3), sample(3, "out", 50, 2)])  # old outbound SA gone
    assert c.totals()[("mesh", "node-b", "out")] == (350, 5)
    assert c.totals()[("mesh", "node-b", "in")] == (160, 3)
    c.forget_peer("mesh", "node-b")
    assert c.totals() == {}


def test_seq_headroom_uses_the_lowest_outbound_sa():
    c = metrics.SaCounters()
    c.update([sample(1, "out", 0, 0, oseq=2**31), sample(2, "out", 0, 0, oseq=2**62, esn=True),
              sample(3, "in", 0, 0, oseq=2**32 - 1)])
    families = {f.name: f for f in c.collect()}
    (value,) = [s.value for s in families["kube_ipsec_agent_sa_seq_headroom_ratio"].samples]
    assert value == 0.5


def test_xfrm_stat_fields_become_counters(tmp_path):
    path = tmp_path / "xfrm_stat"
    path.write_text("XfrmInError              \t0\nXfrmInNoStates          \t7\n")
    (family,) = metrics.XfrmStat(path).collect()
    values = {s.labels["counter"]: s.value for s in family.samples if s.name.endswith("_total")}
    assert values == {"XfrmInError": 0, "XfrmInNoStates": 7}
    (empty,) = metrics.XfrmStat(tmp_path / "missing").collect()
    assert empty.samples == []


async def test_http_endpoints_serve_metrics_and_probes(unused_tcp_port):
    state = {"ready": False}
    runner = await metrics.serve("127.0.0.1", unused_tcp_port, ready=lambda: state["ready"])
    base = f"http://127.0.0.1:{unused_tcp_port}"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/metrics") as r:
                assert r.status == 200
                assert "kube_ipsec_agent_rekeys_total" in await r.text()
            async with http.get(f"{base}/healthz") as r:
                assert r.status == 200
            async with http.get(f"{base}/readyz") as r:
                assert r.status == 503
            state["ready"] = True
            async with http.get(f"{base}/readyz") as r:
                assert r.status == 200
    finally:
        await runner.cleanup()
