"""We test these aspects against the real kernel over netlink, in throwaway namespaces (root;
no ESP needed, so this runs on the development/CI host as well as anywhere else):

* policies: add, dump, UPDPOLICY of the template SPI, delete, and the mapped errors;
* ALLOCSPI: kernel-chosen SPIs inside the requested range, distinct, exhaustion reported;
* ``flush_owned`` removes our policies and (larval) SAs and leaves foreign ones alone;
* an ACQUIRE arrives when traffic hits a policy whose SA is missing, even after the event
  socket overflowed;
* a missing crypto algorithm is reported as AlgorithmUnsupported, naming it;
* a bypassed socket still sends while a catch-all block policy stops everything else.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import subprocess
import uuid

import pytest
from pyroute2 import netns as pr_netns

from kube_ipsec.xfrm import (
    SA,
    Acquire,
    Action,
    AlgorithmUnsupported,
    Dir,
    NetlinkKernel,
    NoSuchPolicy,
    Policy,
    PolicyExists,
    Selector,
    SpiRangeExhausted,
    Template,
    bypass_socket,
    reconcile,
)
from kube_ipsec.xfrm.model import AlgKind, Algorithm
from tests.netns import veth_pair

A, B = ipaddress.ip_address('10.9.0.1'), ipaddress.ip_address('10.9.0.2')
REQID = 0x6B690042
FOREIGN = 42


@pytest.fixture
def ns():
    name = f'kx-{uuid.uuid4().hex[:8]}'
    subprocess.run(['ip', 'netns', 'add', name], check=True)
    yield name
    subprocess.run(['ip', 'netns', 'del', name], check=False)


@pytest.fixture
async def kernel(ns):
    k = NetlinkKernel(ns)
    yield k
    await k.close()


def ip_xfrm(ns: str, *args: str) -> str:
    cmd = ['ip', 'netns', 'exec', ns, 'ip', 'xfrm', *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def out_policy(spi: int = 0, reqid: int = REQID, src=A, dst=B) -> Policy:
    return Policy(Selector.hosts(src, dst), Dir.OUT, (Template(src, dst, reqid, spi=spi),),
                  priority=0x6B690100)


async def test_policy_add_update_dump_delete(kernel, ns):
    await kernel.add_policy(out_policy(spi=0xD0000001))
    with pytest.raises(PolicyExists, match=r'10\.9\.0\.1/32 -> 10\.9\.0\.2/32 dir out'):
        await kernel.add_policy(out_policy(spi=0xD0000001))
    (dumped,) = await kernel.dump_policies()
    assert dumped == out_policy(spi=0xD0000001) and dumped.index

    await kernel.update_policy(out_policy(spi=0xD0000002))
    (dumped,) = await kernel.dump_policies()
    assert dumped.templates[0].spi == 0xD0000002
    assert 'spi 0xd0000002' in ip_xfrm(ns, 'policy', 'list')

    await kernel.delete_policy(dumped.id)
    assert await kernel.dump_policies() == []
    with pytest.raises(NoSuchPolicy):
        await kernel.delete_policy(dumped.id)


async def test_allocspi_picks_distinct_spis_in_range(kernel, ns):
    spis = [await kernel.allocspi(B, A, REQID, spi_min=0xD0000000, spi_max=0xD00000FF)
            for _ in range(5)]
    assert len(set(spis)) == 5
    assert all(0xD0000000 <= s <= 0xD00000FF for s in spis)
    larval = {s.spi: s for s in await kernel.dump_sas()}
    assert set(larval) == set(spis)
    assert all(s.reqid == REQID and s.aead is None for s in larval.values())
    assert all(f'spi 0x{s:08x}' in ip_xfrm(ns, 'state', 'list') for s in spis)

    await kernel.allocspi(B, A, REQID, spi_min=0xD1000000, spi_max=0xD1000000)
    with pytest.raises(SpiRangeExhausted):
        await kernel.allocspi(B, A, REQID, spi_min=0xD1000000, spi_max=0xD1000000)


async def test_flush_owned_spares_foreign_objects(kernel, ns):
    await kernel.add_policy(out_policy())
    await kernel.add_policy(Policy(Selector.hosts(B, A), Dir.IN, (Template(B, A, REQID),),
                                   priority=0x6B690100))
    await kernel.add_policy(Policy(Selector.hosts('0.0.0.0/0', '0.0.0.0/0'), Dir.FWD,
                                   action=Action.BLOCK, priority=0x6B69FFFF))
    await kernel.allocspi(B, A, REQID)
    # foreign: another IKE daemon's policy, larval SA and template-less policy
    ip_xfrm(ns, 'policy', 'add', 'src', '10.8.0.1/32', 'dst', '10.8.0.2/32', 'dir', 'out',
            'tmpl', 'src', '10.8.0.1', 'dst', '10.8.0.2', 'proto', 'esp', 'reqid', str(FOREIGN))
    ip_xfrm(ns, 'policy', 'add', 'src', '10.8.0.0/24', 'dst', '10.7.0.0/24', 'dir', 'in',
            'priority', '10')
    await kernel.allocspi(B, A, FOREIGN)

    assert await kernel.flush_owned() == (3, 1)
    assert [s.reqid for s in await kernel.dump_sas()] == [FOREIGN]
    left = await kernel.dump_policies()
    assert sorted(str(p.selector.src) for p in left) == ['10.8.0.0/24', '10.8.0.1/32']


async def test_acquire_arrives_when_traffic_hits_a_policy_without_sa():
    with veth_pair() as pair:
        left, right = ipaddress.ip_address(pair.left_ip), ipaddress.ip_address(pair.right_ip)
        kernel = NetlinkKernel(pair.left)
        try:
            await kernel.add_policy(out_policy(src=left, dst=right))
            async with kernel.events() as events:
                # an overflow (ENOBUFS, as pyroute2 reports it) is counted, not fatal
                events._sock.protocol.error_received(OSError(errno.ENOBUFS, 'overflow'))
                ping = asyncio.create_task(
                    asyncio.to_thread(pair.ping, pair.left, pair.right_ip, 1, 1))
                event = await asyncio.wait_for(anext(events), 30)
                assert not await ping  # fail closed: no SA, nothing answered
            assert events.overflows == 1
        finally:
            await kernel.close()
    assert isinstance(event, Acquire)
    assert event.template == Template(left, right, REQID)
    assert (event.selector.src.network_address, event.selector.dst.network_address) == (
        left, right)
    assert event.policy_dir is Dir.OUT


async def test_missing_algorithm_is_reported_by_name(kernel):
    nosuch = Algorithm(AlgKind.AEAD, 'rfc4106(gcm(nosuch))', bytes(20), 128)
    with pytest.raises(AlgorithmUnsupported, match=r'lacks esp4/rfc4106\(gcm\(nosuch\)\)'):
        await kernel.add_sa(SA(A, B, 0xD0000009, REQID, aead=nosuch))


async def test_bypassed_socket_passes_a_catch_all_block_policy():
    with veth_pair() as pair:
        subprocess.run(['ip', 'netns', 'exec', pair.left, 'ip', 'xfrm', 'policy', 'add',
                        'src', '0.0.0.0/0', 'dst', '0.0.0.0/0', 'dir', 'out', 'action', 'block'],
                       check=True)
        rx = pr_netns.create_socket(pair.right, socket.AF_INET, socket.SOCK_DGRAM)
        plain = pr_netns.create_socket(pair.left, socket.AF_INET, socket.SOCK_DGRAM)
        ike = pr_netns.create_socket(pair.left, socket.AF_INET, socket.SOCK_DGRAM)
        kernel = NetlinkKernel(pair.left)
        try:
            rx.bind((pair.right_ip, 500))
            rx.settimeout(10)
            with pytest.raises(OSError) as blocked:
                plain.sendto(b'plain', (pair.right_ip, 500))
            assert blocked.value.errno == errno.EPERM
            bypass_socket(ike)
            ike.sendto(b'ike', (pair.right_ip, 500))
            assert rx.recv(16) == b'ike'
            # the kernel dumps socket policies too (dir 3/4): not part of the SPD we manage
            (spd,) = await kernel.dump_policies()
            assert spd.action is Action.BLOCK
        finally:
            await kernel.close()
            for s in (rx, plain, ike):
                s.close()


async def test_reconcile_on_the_real_kernel_is_minimal_and_idempotent(kernel, ns):
    ip_xfrm(ns, 'policy', 'add', 'src', '10.8.0.1/32', 'dst', '10.8.0.2/32', 'dir', 'out',
            'tmpl', 'src', '10.8.0.1', 'dst', '10.8.0.2', 'proto', 'esp', 'reqid', str(FOREIGN))
    stale = Policy(Selector.hosts(B, A), Dir.IN, (Template(B, A, REQID),), priority=0x6B690100)
    await kernel.add_policy(stale)
    await kernel.add_policy(out_policy(spi=0xD0000001))
    desired = [
        out_policy(spi=0xD0000002),
        Policy(Selector.hosts(A, B, proto=17, dport=4789), Dir.FWD,
               (Template(A, B, REQID, optional=True),), priority=0x6B690200),
        Policy(Selector.hosts('0.0.0.0/0', '0.0.0.0/0'), Dir.OUT, action=Action.BLOCK,
               priority=0x6B69FFFF),
    ]
    done = await reconcile(kernel, policies=desired)
    assert done.updated_policies == desired[:1] and done.added_policies == desired[1:]
    assert done.deleted_policies == [stale]
    assert not await reconcile(kernel, policies=desired)  # what the kernel dumps == desired
    assert 'reqid 42' in ip_xfrm(ns, 'policy', 'list')
