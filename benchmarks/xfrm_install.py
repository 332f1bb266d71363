"""Install 2000 SAs + 2000 policies through kube_ipsec.xfrm and through ``ip -batch``.

Run in the VM (the host kernel has no ESP), as root:

    bash hack/vm/vmrun -- .venv/bin/python benchmarks/xfrm_install.py [--count N]

The same objects (ESP transport AES-GCM-128 SAs and ``dir out`` policies with a pinned
template, one per peer address) go into a fresh network namespace per method, in the same run:
iproute2's batch mode (one process, one request per line: the reference), our layer one
request at a time (how an agent applies an IKE event), and our layer with 64 requests in
flight (how a restart reconcile could go). Each result is checked by a dump. On a kernel
without ESP only the policies are measured, and the output says so.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable

from kube_ipsec.xfrm import (
    SA,
    Algorithm,
    AlgorithmUnsupported,
    Dir,
    NetlinkKernel,
    Policy,
    Selector,
    Template,
)

REQID = 0x6B690200
KEY = bytes(range(20))  # a benchmark, not a secret
LOCAL = ipaddress.ip_address('10.0.0.1')


def objects(count: int) -> tuple[list[SA], list[Policy]]:
    peers = [ipaddress.ip_address(0x0A010000 + i) for i in range(count)]
    sas = [SA(LOCAL, peer, 0xD0000000 + i, REQID, aead=Algorithm.aes_gcm(KEY), replay_window=32)
           for i, peer in enumerate(peers)]
    policies = [Policy(Selector.hosts(LOCAL, peer), Dir.OUT,
                       (Template(LOCAL, peer, REQID, spi=0xD0000000 + i),), priority=0x6B690100)
                for i, peer in enumerate(peers)]
    return sas, policies


def batch_lines(sas: Iterable[SA], policies: Iterable[Policy]) -> str:
    lines = [f'xfrm state add src {s.src} dst {s.dst} proto esp spi 0x{s.spi:08x} '
             f'reqid {s.reqid} mode transport replay-window 32 '
             f'aead rfc4106(gcm(aes)) 0x{KEY.hex()} 128' for s in sas]
    for p in policies:
        t = p.templates[0]
        lines.append(f'xfrm policy add src {p.selector.src} dst {p.selector.dst} dir out '
                     f'priority {p.priority} tmpl src {t.src} dst {t.dst} proto esp '
                     f'spi 0x{t.spi:08x} reqid {t.reqid} mode transport')
    return '\n'.join(lines) + '\n'


class Netns:
    def __init__(self, tag: str) -> None:
        self.name = f'kxb-{os.getpid()}-{tag}'

    def __enter__(self) -> str:
        subprocess.run(['ip', 'netns', 'add', self.name], check=True)
        return self.name

    def __exit__(self, *exc: object) -> None:
        subprocess.run(['ip', 'netns', 'del', self.name], check=False)


def count_in(ns: str, what: str) -> int:
    out = subprocess.run(['ip', '-netns', ns, 'xfrm', what, 'list'], check=True,
                         capture_output=True, text=True).stdout
    return sum(1 for line in out.splitlines() if line.startswith('src '))


def run_ip_batch(sas: list[SA], policies: list[Policy]) -> float:
    with Netns('ip') as ns, tempfile.NamedTemporaryFile('w', suffix='.batch') as f:
        f.write(batch_lines(sas, policies))
        f.flush()
        start = time.perf_counter()
        subprocess.run(['ip', '-netns', ns, '-batch', f.name], check=True)
        elapsed = time.perf_counter() - start
        assert (count_in(ns, 'state'), count_in(ns, 'policy')) == (len(sas), len(policies))
    return elapsed


async def run_ours(sas: list[SA], policies: list[Policy], in_flight: int) -> float:
    with Netns(f'ours{in_flight}') as ns:
        kernel = NetlinkKernel(ns)
        try:
            await kernel.dump_policies()  # socket set up before the clock starts
            start = time.perf_counter()
            await apply(kernel.add_sa, sas, in_flight)
            await apply(kernel.add_policy, policies, in_flight)
            elapsed = time.perf_counter() - start
            assert len(await kernel.dump_sas()) == len(sas)
            assert len(await kernel.dump_policies()) == len(policies)
        finally:
            await kernel.close()
    return elapsed


async def apply(op: Callable[[object], Awaitable[None]], items: list, in_flight: int) -> None:
    if in_flight == 1:
        for item in items:
            await op(item)
        return
    gate = asyncio.Semaphore(in_flight)

    async def one(item: object) -> None:
        async with gate:
            await op(item)

    await asyncio.gather(*(one(i) for i in items))


async def esp_available() -> bool:
    with Netns('probe') as ns:
        kernel = NetlinkKernel(ns)
        try:
            await kernel.add_sa(objects(1)[0][0])
            return True
        except AlgorithmUnsupported:
            return False
        finally:
            await kernel.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--count', type=int, default=2000)
    args = parser.parse_args()
    sas, policies = objects(args.count)
    if not await esp_available():
        print('this kernel has no ESP/rfc4106(gcm(aes)): measuring policies only')
        sas = []
    ops = len(sas) + len(policies)
    print(f'{len(sas)} SAs + {len(policies)} policies per method, kernel {os.uname().release}')
    ref = run_ip_batch(sas, policies)
    print(f'ip -batch (reference)       {ref:7.2f} s  {ops / ref:8.0f} objects/s')
    for in_flight in (1, 64):
        took = await run_ours(sas, policies, in_flight)
        label = f'kube_ipsec.xfrm, {in_flight:>2} in flight'
        print(f'{label:27} {took:7.2f} s  {ops / took:8.0f} objects/s  '
              f'ip -batch is {took / ref:.2f}x faster')


if __name__ == '__main__':
    asyncio.run(main())
