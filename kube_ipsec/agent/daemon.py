"""The agent process: wires watchers, desired state, the peer manager, sockets, status, metrics.

Start-up order matters for "restart without loss" and "never lock out the control plane":
1. metrics/probes first (liveness while the API is unreachable; ready only later);
2. the watchers list everything once — until then nothing is touched in the kernel;
3. the kernel's leftovers are read (``adopt``) before the first desired state is applied, so
   SAs carrying traffic stay until their replacements are up;
4. the IKE sockets open (bypass policies on them), then desired state flows to the peers.
The API server's port is bypassed in the pair policies (``translate.bypass_policies``): the
port of the kubeconfig's server URL plus ``--apiserver-port`` (6443 by default, the usual
endpoint behind the ``kubernetes`` Service, since policies match after DNAT).

Shutdown (SIGTERM/SIGINT) stops the tasks and closes the sockets but leaves every SA and
policy in the kernel: traffic keeps flowing, and the next start adopts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import metadata

from kube_ipsec import contract
from kube_ipsec.agent import desired, ikesocket, kube, metrics, mtu, peers, status, watchers
from kube_ipsec.xfrm.kernel import Kernel

log = logging.getLogger(__name__)


def agent_version() -> str:
    try:
        return metadata.version("kube-ipsec")
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass
class Options:
    node_name: str
    namespace: str = contract.DEFAULT_NAMESPACE
    kubeconfig: str | None = None
    metrics_address: str = "0.0.0.0"
    metrics_port: int = 9101
    ike_address: str | None = None  # default: this node's InternalIP
    ike_port: int = 500
    natt_port: int = 4500
    apiserver_ports: tuple[int, ...] = (6443,)
    socket_bypass: bool = True
    fake_kernel: bool = False
    link_mtu: int = 0  # 0: the MTU of the interface holding the IKE address
    status_interval: float = 30.0
    counters_interval: float = 15.0
    linger: float = 5.0


@dataclass
class Daemon:
    options: Options
    kernel: Kernel | None = None
    api: kube.Api | None = None
    manager: peers.PeerManager | None = field(default=None, init=False)
    endpoint: ikesocket.IkeEndpoint | None = field(default=None, init=False)
    watchers: watchers.Watchers | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self._changed = asyncio.Event()
        self._status_due = asyncio.Event()
        self._desired: desired.Desired | None = None
        self._link_mtu = 1500

    @property
    def ready(self) -> bool:
        return bool(self.watchers and self.watchers.synced and self.endpoint
                    and self.endpoint.bound)

    async def run(self) -> None:
        opts = self.options
        cfg = kube.load_configuration(opts.kubeconfig)
        self.api = self.api or kube.Api(cfg)
        self.watchers = watchers.Watchers(self.api, opts.namespace, self._changed.set)
        runner = await metrics.serve(opts.metrics_address, opts.metrics_port,
                                     ready=lambda: self.ready)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.watchers.run())
                await self._start_datapath(cfg.host)
                group.create_task(self._manager().run())
                group.create_task(self._manager().watch_kernel())
                group.create_task(self._every_change())
                group.create_task(self._status_loop())
                group.create_task(self._repeat(opts.counters_interval, self._counters))
        finally:
            if self.endpoint:
                self.endpoint.close()
            await runner.cleanup()
            await self.api.close()
            if self.kernel is not None:
                await self.kernel.close()
            log.info("stopped; SAs and policies stay in the kernel")

    async def _start_datapath(self, api_url: str) -> None:
        assert self.watchers is not None
        opts = self.options
        while not self.watchers.synced:
            await asyncio.sleep(0.1)
        address = opts.ike_address
        while address is None:
            me = self.watchers.snapshot().nodes.get(opts.node_name)
            if me and me.addresses:
                address = me.addresses[0]
            else:
                log.warning("node %s has no InternalIP yet", opts.node_name)
                await asyncio.sleep(2)
        self._link_mtu = opts.link_mtu or mtu.link_mtu(address) or 1500
        if self.kernel is None:
            self.kernel = _make_kernel(opts.fake_kernel)
        api_port = urllib.parse.urlsplit(api_url).port or 443
        self.endpoint = ikesocket.IkeEndpoint(
            address, lambda d, s, t: self._manager().datagram_received(d, s, t),
            ike_port=opts.ike_port, natt_port=opts.natt_port, socket_bypass=opts.socket_bypass)
        self.manager = peers.PeerManager(
            self.kernel, self.endpoint.send, local_address=address, ike_port=opts.ike_port,
            natt_port=opts.natt_port, bypass_ports=(*opts.apiserver_ports, api_port),
            linger=opts.linger, on_change=self._status_due.set)
        await self.manager.adopt()
        await self.endpoint.open()
        self._changed.set()

    def _manager(self) -> peers.PeerManager:
        assert self.manager is not None
        return self.manager

    async def _every_change(self) -> None:
        """Recompute desired state after watcher changes (coalesced) and hand it over."""
        assert self.watchers is not None
        while True:
            await self._changed.wait()
            self._changed.clear()
            snap = self.watchers.snapshot()
            want = desired.compute(self.options.node_name, snap.nodes, snap.tunnels, snap.keys)
            self._desired = want
            currents = {t: k.current for t, k in snap.keys.items()}
            self._manager().set_desired(want, currents)
            self._status_due.set()
            await asyncio.sleep(0.2)  # let a burst of watch events settle

    async def _status_loop(self) -> None:
        assert self.api is not None
        writer = status.StatusWriter(self.api, self.options.node_name)
        loop = asyncio.get_running_loop()
        written: dict[str, object] | None = None
        written_at = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._status_due.wait(), self.options.status_interval)
            self._status_due.clear()
            body = self.render()
            if body is None:
                continue
            unchanged = written == {**body, "heartbeat": None}
            if unchanged and loop.time() - written_at < self.options.status_interval:
                continue  # DPD and retransmissions change nothing worth a write
            try:
                await writer.write(body)
                written, written_at = {**body, "heartbeat": None}, loop.time()
            except Exception as exc:  # the API may be down: keep trying, never crash
                log.warning("status update failed: %s", exc)
                writer.forget()
            await asyncio.sleep(1.0)  # at most one write a second

    def render(self) -> dict[str, object] | None:
        if self._desired is None or self.manager is None or self.watchers is None:
            return None
        snap = self.watchers.snapshot()
        states = self.manager.states()
        currents = {t: k.current for t, k in snap.keys.items()}
        errors = [*snap.errors.values()]
        if self.watchers.api_error:
            errors.append(self.watchers.api_error)
        mtus = self._mtus()
        _update_gauges(self._desired, currents, states)
        return status.render(want=self._desired, currents=currents, peers=states,
                             errors=errors, heartbeat=contract.utcnow_rfc3339(),
                             version=agent_version(), mtus=mtus)

    def _mtus(self) -> dict[str, int]:
        assert self._desired is not None
        out = {}
        for peer in self._desired.peers.values():
            spec = peer.spec
            out[peer.tunnel] = mtu.inner_mtu(
                self._link_mtu, mode=spec.mode.value, protocol=spec.protocol.value,
                cipher=spec.cipher, integrity=spec.integrity,
                family=ipaddress.ip_address(peer.remote_address).version)
        return out

    async def _counters(self) -> None:
        if self.manager is not None:
            await self.manager.refresh_counters()

    @staticmethod
    async def _repeat(interval: float, job: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await job()
            except Exception as exc:
                log.warning("%s failed: %s", getattr(job, "__name__", job), exc)


def _update_gauges(want: desired.Desired, currents: dict[str, int],
                   states: dict[tuple[str, str], status.PeerState]) -> None:
    metrics.PEERS.clear()
    for tunnel in want.tunnels:
        mine = [s for k, s in states.items() if k[0] == tunnel]
        counts: dict[str, int] = {}
        for s in mine:
            counts[s.ike_state] = counts.get(s.ike_state, 0) + 1
        for state, n in counts.items():
            metrics.PEERS.labels(tunnel, state).set(n)
        in_use = status.generation_in_use(currents.get(tunnel), mine)
        if in_use is not None:
            metrics.KEY_GENERATION_IN_USE.labels(tunnel).set(in_use)


def _make_kernel(fake: bool) -> Kernel:
    if fake:
        from kube_ipsec.xfrm.fake import FakeKernel

        log.warning("using the in-memory FakeKernel: nothing is encrypted")
        return FakeKernel()
    from kube_ipsec.xfrm.netlink import NetlinkKernel

    return NetlinkKernel()


async def serve(options: Options, kernel: Kernel | None = None) -> None:
    """Run until SIGTERM/SIGINT (or cancellation)."""
    daemon = Daemon(options, kernel)
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        if task is not None:
            loop.add_signal_handler(sig, task.cancel)
    try:
        with contextlib.suppress(asyncio.CancelledError):
            await daemon.run()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
