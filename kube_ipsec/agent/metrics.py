"""Prometheus metrics of the agent, and the HTTP endpoint serving them with health probes.

The names are a contract with the Helm chart's dashboard and alerts: change them only together.
Everything lives in the module-level ``REGISTRY`` (not the global default), so tests can
enumerate exactly what the agent exports.

Kernel counters are *counters* here, not gauges (Cilium exports them as gauges, so a rekey
looks like traffic going backwards): an SA's byte/packet counts start at zero when it is
replaced, so ``SaCounters`` keeps, per (tunnel, peer, direction), the last value of every SA
that has gone and adds the live SAs on top. The live values come from a periodic kernel dump
(kernel calls are async; a scrape is not), ``/proc/net/xfrm_stat`` is read at scrape time.
Keys never reach a label or a value: labels are tunnel, peer, direction and counter names.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)
PREFIX = "kube_ipsec_agent"

PEERS = Gauge(f"{PREFIX}_peers", "Desired peers by state (established, connecting, failed)",
              ["tunnel", "state"], registry=REGISTRY)
IKE_EXCHANGES = Counter(f"{PREFIX}_ike_exchanges_total", "IKE exchanges completed, by result",
                        ["exchange", "result"], registry=REGISTRY)
IKE_FAILURES = Counter(f"{PREFIX}_ike_failures_total", "IKE failures by reason",
                       ["reason"], registry=REGISTRY)
REKEYS = Counter(f"{PREFIX}_rekeys_total", "Rekeys: child, ike, reauth", ["kind"],
                 registry=REGISTRY)
KEY_GENERATION_IN_USE = Gauge(f"{PREFIX}_key_generation_in_use",
                              "Key generation authenticating all current IKE SAs of a tunnel",
                              ["tunnel"], registry=REGISTRY)
LAST_IKE_SUCCESS = Gauge(f"{PREFIX}_last_ike_success_timestamp_seconds",
                         "When an IKE SA with the peer last came up (Unix time)",
                         ["tunnel", "peer"], registry=REGISTRY)
IKE_DROPPED = Counter(f"{PREFIX}_ike_dropped_datagrams_total",
                      "IKE datagrams dropped before or by the core, by reason", ["reason"],
                      registry=REGISTRY)

SEQ_SPACE = {False: 2**32, True: 2**64}


@dataclass(frozen=True)
class SaSample:
    """One SA's kernel counters, attributed to a peer."""

    tunnel: str
    peer: str
    direction: str  # "in" | "out"
    spi: int
    bytes: int
    packets: int
    oseq: int = 0
    esn: bool = False


class SaCounters(Collector):
    """Monotonic per-peer byte/packet counters over SAs that come and go, plus seq headroom."""

    def __init__(self) -> None:
        self._live: dict[tuple[str, str, str, int], SaSample] = {}
        self._gone: dict[tuple[str, str, str], tuple[int, int]] = {}

    def update(self, samples: Iterable[SaSample]) -> None:
        """Replace the live SAs with a fresh dump; SAs not in it are folded into the base."""
        fresh = {(s.tunnel, s.peer, s.direction, s.spi): s for s in samples}
        for key, old in self._live.items():
            if key not in fresh:
                base = self._gone.get(key[:3], (0, 0))
                self._gone[key[:3]] = (base[0] + old.bytes, base[1] + old.packets)
        self._live = fresh

    def forget_peer(self, tunnel: str, peer: str) -> None:
        """A removed peer's series disappear instead of lingering forever."""
        self._live = {k: v for k, v in self._live.items() if k[:2] != (tunnel, peer)}
        self._gone = {k: v for k, v in self._gone.items() if k[:2] != (tunnel, peer)}

    def totals(self) -> Mapping[tuple[str, str, str], tuple[int, int]]:
        out = dict(self._gone)
        for key, s in self._live.items():
            b, p = out.get(key[:3], (0, 0))
            out[key[:3]] = (b + s.bytes, p + s.packets)
        return out

    def collect(self) -> Iterator[Metric]:
        labels = ["tunnel", "peer", "direction"]
        nbytes = CounterMetricFamily(f"{PREFIX}_sa_bytes", "Bytes through the peer's SAs",
                                     labels=labels)
        packets = CounterMetricFamily(f"{PREFIX}_sa_packets", "Packets through the peer's SAs",
                                      labels=labels)
        for key, (b, p) in sorted(self.totals().items()):
            nbytes.add_metric(list(key), b)
            packets.add_metric(list(key), p)
        headroom = GaugeMetricFamily(
            f"{PREFIX}_sa_seq_headroom_ratio",
            "Unused fraction of the outbound sequence space (rekey before it reaches 0)",
            labels=["tunnel", "peer"])
        lowest: dict[tuple[str, str], float] = {}
        for s in self._live.values():
            if s.direction == "out":
                ratio = 1.0 - s.oseq / SEQ_SPACE[s.esn]
                lowest[(s.tunnel, s.peer)] = min(ratio, lowest.get((s.tunnel, s.peer), 1.0))
        for pair, ratio in sorted(lowest.items()):
            headroom.add_metric(list(pair), ratio)
        yield from (nbytes, packets, headroom)


class XfrmStat(Collector):
    """``/proc/net/xfrm_stat`` (``XfrmInNoStates  3``) as counters labelled by field name."""

    def __init__(self, path: Path = Path("/proc/net/xfrm_stat")) -> None:
        self.path = path

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(f"{PREFIX}_xfrm_stat", "Kernel XFRM error counters",
                                     labels=["counter"])
        try:
            text = self.path.read_text()
        except OSError:
            text = ""
        for line in text.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                family.add_metric([parts[0]], int(parts[1]))
        yield family


SA_COUNTERS = SaCounters()
XFRM_STAT = XfrmStat()
REGISTRY.register(SA_COUNTERS)
REGISTRY.register(XFRM_STAT)


def exported_names() -> set[str]:
    """Every metric name as it appears in the exposition (``*_total`` for counters)."""
    names = set()
    for family in REGISTRY.collect():
        names.add(f"{family.name}_total" if family.type == "counter" else family.name)
    return names


async def serve(host: str, port: int, *, ready: Callable[[], bool],
                healthy: Callable[[], bool] = lambda: True) -> web.AppRunner:
    """Serve /metrics, /healthz and /readyz; returns the runner (``await runner.cleanup()``)."""

    async def metrics(_: web.Request) -> web.Response:
        body = generate_latest(REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    def probe(check: Callable[[], bool]) -> Callable[[web.Request], object]:
        async def handler(_: web.Request) -> web.Response:
            ok = check()
            return web.Response(text="ok\n" if ok else "not ready\n", status=200 if ok else 503)
        return handler

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", probe(healthy))  # type: ignore[arg-type]
    app.router.add_get("/readyz", probe(ready))  # type: ignore[arg-type]
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("metrics and probes on %s:%d", host, port)
    return runner
