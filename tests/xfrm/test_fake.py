"""We test these aspects, on FakeKernel (no root, no ESP needed):

* the fake keeps the kernel's rules and raises the real backend's exceptions;
* ``switch_sa_pair`` orders a make-before-break rekey: new inbound, new outbound, one
  UPDPOLICY pinning the new SPI, old outbound deleted, old inbound only after the linger;
* ``reconcile`` applies the minimal diff and never touches objects kube-ipsec does not own;
* ``flush_owned`` removes ours and leaves foreign SAs/policies alone.
"""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from kube_ipsec.xfrm import (
    SA,
    AlgorithmUnsupported,
    Dir,
    Expire,
    FakeKernel,
    Lifetime,
    NoSuchPolicy,
    NoSuchSa,
    Policy,
    PolicyExists,
    SaExists,
    SaPair,
    Selector,
    SpiRangeExhausted,
    Template,
    reconcile,
    switch_sa_pair,
)
from kube_ipsec.xfrm.model import Algorithm

A, B = ipaddress.ip_address('192.0.2.1'), ipaddress.ip_address('192.0.2.2')
REQID = 0x6B690001
FOREIGN_REQID = 7
KEY = bytes(range(20))


def esp(src, dst, spi, reqid=REQID, key=KEY):
    return SA(src, dst, spi, reqid, aead=Algorithm.aes_gcm(key), replay_window=128)


def out_policy(reqid=REQID, spi=0):
    return Policy(Selector.hosts(A, B), Dir.OUT, (Template(A, B, reqid, spi=spi),))


async def test_allocspi_is_sequential_and_reserves_a_larval_sa():
    k = FakeKernel()
    first = await k.allocspi(B, A, REQID, spi_min=0x1000, spi_max=0x1001)
    second = await k.allocspi(B, A, REQID, spi_min=0x1000, spi_max=0x1001)
    assert (first, second) == (0x1000, 0x1001)
    with pytest.raises(SpiRangeExhausted):
        await k.allocspi(B, A, REQID, spi_min=0x1000, spi_max=0x1001)
    with pytest.raises(SaExists):  # NEWSA on a larval SPI fails, as in the kernel ...
        await k.add_sa(esp(B, A, first))
    await k.update_sa(esp(B, A, first))  # ... UPDSA completes it
    assert (await k.get_sa(esp(B, A, first).id)).aead is not None


async def test_fake_raises_the_backend_errors():
    k = FakeKernel(algorithms=frozenset())
    with pytest.raises(AlgorithmUnsupported, match='lacks esp4/rfc4106'):
        await k.add_sa(esp(A, B, 0x2000))
    k = FakeKernel()
    with pytest.raises(NoSuchSa, match='spi 0x00002000'):
        await k.delete_sa(esp(A, B, 0x2000))
    with pytest.raises(NoSuchSa):
        await k.update_sa(esp(A, B, 0x2000))
    await k.add_policy(out_policy())
    with pytest.raises(PolicyExists):
        await k.add_policy(out_policy())
    await k.update_policy(out_policy(spi=0x2000))  # UPDPOLICY upserts
    with pytest.raises(NoSuchPolicy):
        await k.delete_policy(Policy(Selector.hosts(B, A), Dir.IN))


async def test_update_of_a_valid_sa_changes_only_lifetimes():
    k = FakeKernel()
    await k.add_sa(esp(A, B, 0x2000))
    rekeyed = esp(A, B, 0x2000, key=bytes(20))
    longer = dataclasses.replace(rekeyed, lifetime=Lifetime(hard_seconds=9))
    await k.update_sa(longer)
    got = await k.get_sa(longer.id)
    assert got.lifetime.hard_seconds == 9 and got.aead == esp(A, B, 0x2000).aead


async def test_switch_sa_pair_is_make_before_break():
    k = FakeKernel()
    old = SaPair(esp(B, A, 0x1001), esp(A, B, 0x2001))
    await k.add_sa(old.inbound)
    await k.add_sa(old.outbound)
    await k.add_policy(out_policy(spi=0x2001))
    new_in = await k.allocspi(B, A, REQID)
    new = SaPair(esp(B, A, new_in), esp(A, B, 0x2002))
    k.ops.clear()
    lingered = []

    async def sleep(seconds):
        lingered.append((seconds, set(k.sas)))

    policy = await switch_sa_pair(k, old, new, out_policy(spi=0x2001), linger=3, grace=0.1,
                                  sleep=sleep)

    assert [op for op, _ in k.ops] == [
        'update_sa', 'add_sa', 'update_policy', 'delete_sa', 'delete_sa']
    assert k.ops[0][1] == new.inbound and k.ops[1][1] == new.outbound
    assert policy.templates[0].spi == 0x2002 and k.policies[policy.id] == policy
    assert k.ops[3][1] == old.outbound.id and k.ops[4][1] == old.inbound.id
    # during the grace, packets routed before the switch may still use the old outbound SA;
    # while lingering, the old inbound SA still decrypts packets in flight
    (grace, in_grace), (linger, in_linger) = lingered
    assert (grace, linger) == (0.1, 3)
    assert k._key(old.outbound) in in_grace and k._key(old.outbound) not in in_linger
    assert k._key(old.inbound) in in_linger
    assert set(k.sas) == {k._key(new.inbound), k._key(new.outbound)}


async def test_switch_falls_back_to_newsa_when_the_larval_sa_expired():
    k = FakeKernel()
    await k.add_policy(out_policy())
    new = SaPair(esp(B, A, 0x1005), esp(A, B, 0x2005))
    await switch_sa_pair(k, None, new, out_policy())
    assert [op for op, _ in k.ops[-3:]] == ['add_sa', 'add_sa', 'update_policy']


async def test_switch_refuses_a_policy_without_a_matching_template():
    k = FakeKernel()
    new = SaPair(esp(B, A, 0x1005), esp(A, B, 0x2005))
    with pytest.raises(ValueError, match='no template'):
        await switch_sa_pair(k, None, new, out_policy(reqid=REQID + 1))


async def test_reconcile_applies_the_minimal_diff_and_spares_foreign_objects():
    k = FakeKernel()
    keep, stale, rekeyed = esp(A, B, 0x3001), esp(A, B, 0x3002), esp(A, B, 0x3003)
    foreign_sa = esp(A, B, 0x9999, reqid=FOREIGN_REQID)
    foreign_pol = Policy(Selector.hosts(B, A), Dir.IN, (Template(B, A, FOREIGN_REQID),),
                         priority=100)
    for sa in (keep, stale, rekeyed, foreign_sa):
        await k.add_sa(sa)
    await k.add_policy(out_policy(spi=0x3001))
    await k.add_policy(foreign_pol)
    larval = await k.allocspi(B, A, REQID)
    k.ops.clear()

    new_key = esp(A, B, 0x3003, key=bytes(20))
    added = esp(A, B, 0x3004)
    done = await reconcile(k, [keep, new_key, added], [out_policy(spi=0x3004)])

    assert done.added_sas == [added] and done.replaced_sas == [new_key]
    assert done.deleted_sas == [stale] and done.updated_policies == [out_policy(spi=0x3004)]
    assert foreign_sa.id in {s.id for s in await k.dump_sas()}
    assert foreign_pol in await k.dump_policies()
    assert any(s.spi == larval for s in await k.dump_sas())  # a negotiation's reservation
    assert not await reconcile(k, [keep, new_key, added], [out_policy(spi=0x3004)])


async def test_reconcile_refuses_to_manage_foreign_objects():
    with pytest.raises(ValueError, match='not owned'):
        await reconcile(FakeKernel(), [esp(A, B, 1, reqid=FOREIGN_REQID)])


async def test_flush_owned_leaves_foreign_objects():
    k = FakeKernel()
    await k.add_sa(esp(A, B, 0x3001))
    await k.allocspi(B, A, REQID)
    await k.add_sa(esp(A, B, 0x9999, reqid=FOREIGN_REQID))
    await k.add_policy(out_policy())
    await k.add_policy(Policy(Selector.hosts(B, A), Dir.IN, priority=5))  # foreign, no tmpl
    assert await k.flush_owned() == (1, 2)
    assert [s.reqid for s in await k.dump_sas()] == [FOREIGN_REQID]
    assert [p.priority for p in await k.dump_policies()] == [5]


async def test_fake_events_deliver_expiries_to_subscribers():
    k = FakeKernel()
    await k.add_sa(esp(A, B, 0x3001))
    async with k.events() as events:
        k.expire(esp(A, B, 0x3001), hard=True)
        event = await anext(events)
    assert event == Expire(esp(A, B, 0x3001).id, REQID, hard=True)
    assert not await k.dump_sas()
