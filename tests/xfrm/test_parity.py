"""We test these aspects: FakeKernel and NetlinkKernel (real kernel, throwaway netns, root)
answer the same calls with the same results and the same exceptions, so agent tests written
against the fake hold on the kernel. Only what a kernel without ESP supports is compared.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import subprocess
import uuid

import pytest

from kube_ipsec.xfrm import (
    SA,
    AlgorithmUnsupported,
    Dir,
    FakeKernel,
    Lifetime,
    NetlinkKernel,
    NoSuchPolicy,
    NoSuchSa,
    Policy,
    PolicyExists,
    SaId,
    Selector,
    SpiRangeExhausted,
    Template,
)
from kube_ipsec.xfrm.model import AlgKind, Algorithm

A, B = ipaddress.ip_address('10.9.0.1'), ipaddress.ip_address('10.9.0.2')
REQID = 0x6B690077


@pytest.fixture(params=['fake', 'netlink'])
async def kernel(request):
    if request.param == 'fake':
        yield FakeKernel()
        return
    name = f'kx-{uuid.uuid4().hex[:8]}'
    subprocess.run(['ip', 'netns', 'add', name], check=True)
    k = NetlinkKernel(name)
    try:
        yield k
    finally:
        await k.close()
        subprocess.run(['ip', 'netns', 'del', name], check=False)


async def test_same_policy_semantics(kernel):
    pol = Policy(Selector.hosts(A, B), Dir.OUT, (Template(A, B, REQID),))
    await kernel.add_policy(pol)
    with pytest.raises(PolicyExists):
        await kernel.add_policy(pol)
    pinned = Policy(Selector.hosts(A, B), Dir.OUT, (Template(A, B, REQID, spi=0xD0000005),))
    await kernel.update_policy(pinned)
    assert await kernel.dump_policies() == [pinned]
    await kernel.delete_policy(pinned.id)
    with pytest.raises(NoSuchPolicy):
        await kernel.delete_policy(pinned.id)
    assert await kernel.dump_policies() == []


async def test_same_sa_errors(kernel):
    missing = SaId(B, 0xD0000009)
    with pytest.raises(NoSuchSa):
        await kernel.delete_sa(missing)
    with pytest.raises(NoSuchSa):
        await kernel.get_sa(missing)
    nosuch = Algorithm(AlgKind.AEAD, 'rfc4106(gcm(nosuch))', bytes(20), 128)
    with pytest.raises(AlgorithmUnsupported, match='nosuch'):
        await kernel.add_sa(SA(A, B, 0xD0000009, REQID, aead=nosuch))


async def test_same_allocspi_and_larval_sa(kernel):
    spi = await kernel.allocspi(B, A, REQID, spi_min=0xD2000000, spi_max=0xD2000000)
    assert spi == 0xD2000000
    with pytest.raises(SpiRangeExhausted):
        await kernel.allocspi(B, A, REQID, spi_min=0xD2000000, spi_max=0xD2000000)
    larval = SA(B, A, spi, REQID, replay_window=0, lifetime=Lifetime(hard_seconds=30),
                selector=Selector.hosts(B, A))
    # the failed ALLOCSPI leaves an SPI-0 larval state behind
    assert sorted(await kernel.dump_sas(), key=lambda s: s.spi) == [
        dataclasses.replace(larval, spi=0), larval]
    assert await kernel.get_sa(larval.id) == larval
    assert await kernel.flush_owned() == (0, 1)  # the SPI-0 one expires by itself
    assert [s.spi for s in await kernel.dump_sas()] == [0]
