"""We test these aspects of the peer workers (agent/peers.py) with two in-process agents, each
with a FakeKernel and its own IKE engine, over a fake link:

- a pair comes up: policies go in before any SA, inbound before outbound, then the out policy
  is pinned to the outbound SPI; both kernels agree on the SPIs; status shows it;
- a staged generation (above current) is accepted but not used; once it becomes current the
  initiator re-authenticates; the new IKE SA's child is switched to before the old SAs go
  (make-before-break), and both report the new generation;
- a generation that becomes current mid-negotiation, or a re-authentication that fails
  (the peer lacks the key yet), still ends on the new generation;
- a removed peer's SAs and policies are deleted;
- a restarted agent adopts the kernel state, keeps traffic on it until a new Child SA is up,
  then removes the old SAs; state nobody wants is removed;
- the API server port is bypassed with plaintext policies, consulted before the pair's;
- an SA that expires hard in the kernel is replaced by a new Child SA;
- an ACQUIRE makes the pair's responder initiate, but only after a grace period;
- every spec variant (AH, ChaCha20, no PFS/ESN, tunnel mode, other IKE groups) negotiates
  into identical SAs on both kernels with the spec's parameters;
- Child SA rekeys and an IKE SA rekey, started by either side, keep both kernels in step;
- across the pair, no side pins its out policy to an SPI before the other side installed the
  inbound SA for it — on first contact, re-authentication and restart (one shared journal).
"""

import asyncio

import pytest

from kube_ipsec import contract
from kube_ipsec.agent import peers, status, translate
from kube_ipsec.xfrm import model as xm
from tests.agent import helpers
from tests.agent.pair import ADDRESSES, Agent, Journal, eventually, pins_precede_peer_inbound

MESH = [helpers.tunnel("mesh")]
TWO_NODES = [helpers.node("node-a", "10.0.0.1"), helpers.node("node-b", "10.0.0.2")]


def up(agent: Agent, peer: str, tunnel: str = "mesh") -> bool:
    st = agent.state(peer, tunnel)
    return bool(st and st.ike_state == contract.IKE_ESTABLISHED
                and st.child_state == contract.CHILD_INSTALLED)


def out_policy(agent: Agent) -> xm.Policy:
    (policy,) = [p for p in agent.kernel.policies.values()
                 if p.dir is xm.Dir.OUT and p.templates]
    return policy


def valid_sas(agent: Agent) -> list[xm.SA]:
    return [s for s in agent.kernel.sas.values() if s.aead or s.auth]


@pytest.fixture
async def pair():
    link: dict = {}
    a, b = Agent("node-a", link), Agent("node-b", link)
    await a.start()
    await b.start()
    yield a, b
    await a.stop()
    await b.stop()


async def bring_up(a, b, keys):
    a.apply(MESH, keys, TWO_NODES)
    b.apply(MESH, keys, TWO_NODES)
    await eventually(lambda: up(a, "node-b") and up(b, "node-a"))


async def test_pair_comes_up_with_policies_first_then_inbound_outbound_and_pin(pair):
    a, b = pair
    await bring_up(a, b, {"mesh": helpers.keyset()})
    for agent in (a, b):
        ops = [op for op, _ in agent.kernel.ops if op != "allocspi"]
        first_sa = min(i for i, op in enumerate(ops) if op in ("add_sa", "update_sa"))
        assert "update_policy" in ops[:first_sa], "policies must precede SAs (fail closed)"
        kinds = [(op, obj) for op, obj in agent.kernel.ops if op in ("add_sa", "update_sa")]
        inbound_first = [str(obj.dst) for _, obj in kinds][:2]
        assert inbound_first == [agent.address, b.address if agent is a else a.address]
        last_pin = [obj for op, obj in agent.kernel.ops
                    if op == "update_policy" and obj.dir is xm.Dir.OUT][-1]
        assert last_pin.templates[0].spi != 0
    # a's outbound SA is b's inbound SA
    assert out_policy(a).templates[0].spi == b.state("node-a").spis_in[0]
    assert out_policy(b).templates[0].spi == a.state("node-b").spis_in[0]
    sa_a = {(s.dst, s.spi): s for s in valid_sas(a)}
    sa_b = {(s.dst, s.spi): s for s in valid_sas(b)}
    assert set(sa_a) == set(sa_b) and len(sa_a) == 2
    for key, sa in sa_a.items():
        assert sa.aead == sa_b[key].aead and sa.aead.name == "rfc4106(gcm(aes))"
        assert sa.reqid == a.manager.peers[("mesh", "node-b")].reqid
    assert a.state("node-b").key_generation == 1


async def test_new_generation_reauthenticates_make_before_break(pair):
    a, b = pair
    await bring_up(a, b, {"mesh": helpers.keyset(1, (1, 2))})  # 2 is staged: accepted only
    assert a.state("node-b").key_generation == b.state("node-a").key_generation == 1
    old_out = out_policy(a).templates[0].spi
    ops_before = len(a.kernel.ops)
    keys = {"mesh": helpers.keyset(2, (1, 2))}
    a.apply(MESH, keys, TWO_NODES)
    b.apply(MESH, keys, TWO_NODES)
    await eventually(lambda: a.state("node-b").key_generation == 2
                     and b.state("node-a").key_generation == 2
                     and len(a.manager.peers[("mesh", "node-b")].ike_sas) == 1
                     and len(b.manager.peers[("mesh", "node-a")].ike_sas) == 1)
    await eventually(lambda: len(valid_sas(a)) == 2 and len(valid_sas(b)) == 2)
    new_out = out_policy(a).templates[0].spi
    assert new_out != old_out
    ops = a.kernel.ops[ops_before:]
    names = [(op, getattr(obj, "spi", None)) for op, obj in ops]
    pin_at = next(i for i, (op, obj) in enumerate(ops)
                  if op == "update_policy" and obj.templates and obj.templates[0].spi == new_out)
    add_new = names.index(("add_sa", new_out))
    del_old = names.index(("delete_sa", old_out))
    assert add_new < pin_at < del_old, "new SA, then switch, then the old SA goes"
    # status: in use is the new generation, on both sides
    for agent, peer in ((a, "node-b"), (b, "node-a")):
        assert status.generation_in_use(2, [agent.state(peer)]) == 2


async def test_removed_peer_loses_its_sas_and_policies(pair):
    a, b = pair
    await bring_up(a, b, {"mesh": helpers.keyset()})
    a.apply(MESH, {"mesh": helpers.keyset()}, [TWO_NODES[0]])
    await eventually(lambda: not a.manager.peers)
    await eventually(lambda: not valid_sas(a) and not a.kernel.policies)


async def test_restart_adopts_kernel_state_until_a_new_child_is_up():
    link: dict = {}
    a, b = Agent("node-a", link), Agent("node-b", link)
    await a.start()
    await b.start()
    keys = {"mesh": helpers.keyset()}
    await bring_up(a, b, keys)
    old_spis = {s.spi for s in valid_sas(b)}
    pinned = out_policy(b).templates[0].spi
    kernel = b.kernel
    await b.stop()
    # some state nobody wants any more: a policy for a node that left
    stale = translate.pair_policies(
        next(iter(a.manager.peers.values())).want, translate.FIRST_PEER_REQID + 7)[0]
    stale = xm.Policy(xm.Selector.hosts("10.0.0.2", "10.0.0.99"), xm.Dir.OUT,
                      stale.templates, priority=stale.priority)
    await kernel.add_policy(stale)

    b2 = Agent("node-b", link, kernel=kernel)
    ops_before = len(kernel.ops)
    await b2.start()
    b2.apply(MESH, keys, TWO_NODES)
    # the node restarted is the responder by name, but initiates to replace its leftovers
    await eventually(lambda: up(b2, "node-a") and up(a, "node-b")
                     and out_policy(b2).templates[0].spi not in old_spis)
    ops = kernel.ops[ops_before:]
    first_pin = next(i for i, (op, obj) in enumerate(ops)
                     if op == "update_policy" and obj.dir is xm.Dir.OUT and obj.templates
                     and obj.templates[0].spi not in (0, pinned))
    deletes = [i for i, (op, obj) in enumerate(ops)
               if op == "delete_sa" and obj.spi in old_spis]
    assert deletes and min(deletes) > first_pin, "old SAs go only after the new one carries"
    unpinned = [obj for op, obj in ops if op == "update_policy" and obj.dir is xm.Dir.OUT
                and obj.templates and obj.templates[0].spi == 0]
    assert unpinned == [], "the adopted pinned policy is kept, never reset"
    assert stale.id not in kernel.policies
    await eventually(lambda: not ({s.spi for s in valid_sas(b2)} & old_spis))
    await a.stop()
    await b2.stop()


async def test_api_server_port_bypass_precedes_the_pair_policies(pair):
    a, b = pair
    await bring_up(a, b, {"mesh": helpers.keyset()})
    bypass = [p for p in a.kernel.policies.values() if not p.templates]
    assert {(p.selector.proto, p.selector.dport or p.selector.sport) for p in bypass} == {
        (6, 6443)}
    assert len(bypass) == 4
    assert all(p.priority < out_policy(a).priority for p in bypass)


async def test_allow_plaintext_uses_optional_templates(pair):
    a, b = pair
    tunnels = [helpers.tunnel("mesh", enforcement="allow-plaintext")]
    a.apply(tunnels, {"mesh": helpers.keyset()}, TWO_NODES)
    b.apply(tunnels, {"mesh": helpers.keyset()}, TWO_NODES)
    await eventually(lambda: up(a, "node-b") and up(b, "node-a"))
    assert all(t.optional for p in a.kernel.policies.values() for t in p.templates)


async def test_hard_expired_sa_is_replaced_by_a_new_child(pair):
    a, b = pair
    await bring_up(a, b, {"mesh": helpers.keyset()})
    peer = a.manager.peers[("mesh", "node-b")]
    (inst,) = peer.children.values()
    a.kernel.expire(inst.outbound, hard=True)
    await eventually(lambda: up(a, "node-b") and inst.inbound.spi not in peer.children
                     and len(peer.children) == 1)
    assert out_policy(a).templates[0].spi not in (0, inst.outbound.spi)


async def test_acquire_makes_the_responder_initiate_only_after_a_grace_period(pair):
    _, b = pair
    keys = {"mesh": helpers.keyset()}
    b.apply(MESH, keys, TWO_NODES)  # a (the initiator) knows nothing yet
    await eventually(lambda: ("mesh", "node-a") in b.manager.peers)
    template = out_policy(b).templates[0]
    acquire = xm.Acquire(template, out_policy(b).selector, xm.Dir.OUT, 0, 1)
    b.kernel.emit(acquire)
    await asyncio.sleep(0.05)
    assert b.sent == [], "the responder leaves it to the initiator at first"
    b.manager.peers[("mesh", "node-a")].added_at -= peers.ACQUIRE_GRACE
    b.kernel.emit(acquire)
    await eventually(lambda: b.sent)  # IKE_SA_INIT towards node-a


async def test_no_side_switches_before_the_other_can_decrypt_on_reauth_and_restart():
    shared: list = []
    link: dict = {}
    a, b = Agent("node-a", link), Agent("node-b", link)
    a.kernel.ops, b.kernel.ops = Journal("node-a", shared), Journal("node-b", shared)
    await a.start()
    await b.start()
    await bring_up(a, b, {"mesh": helpers.keyset(1, (1,))})
    keys = {"mesh": helpers.keyset(2, (1, 2))}
    a.apply(MESH, keys, TWO_NODES)
    b.apply(MESH, keys, TWO_NODES)
    await eventually(lambda: a.state("node-b").key_generation == 2 and up(b, "node-a")
                     and len(b.manager.peers[("mesh", "node-a")].ike_sas) == 1)
    kernel = b.kernel
    await b.stop()
    b2 = Agent("node-b", link, kernel=kernel)
    await b2.start()
    b2.apply(MESH, keys, TWO_NODES)
    await eventually(lambda: up(b2, "node-a") and not b2.manager.peers[("mesh", "node-a")].adopted)
    await eventually(lambda: a.manager.peers[("mesh", "node-b")].orphan is None)
    assert pins_precede_peer_inbound(shared, ADDRESSES) == []
    await a.stop()
    await b2.stop()


@pytest.mark.parametrize("spec", [
    {"protocol": "ah"},
    {"cipher": "chacha20-poly1305"},
    {"cipher": "aes-gcm-128", "pfs": False, "esn": False, "replayWindow": 64},
    {"mode": "tunnel", "ike": {"dhGroup": "ecp256", "prf": "sha384"}},
])
async def test_every_spec_variant_negotiates_into_matching_kernel_sas(pair, spec):
    a, b = pair
    tunnels = [helpers.tunnel("mesh", **spec)]
    nodes = [helpers.node("node-a", "10.0.0.1", "10.244.0.0/24"),
             helpers.node("node-b", "10.0.0.2", "10.244.1.0/24")]
    a.apply(tunnels, {"mesh": helpers.keyset()}, nodes)
    b.apply(tunnels, {"mesh": helpers.keyset()}, nodes)
    await eventually(lambda: up(a, "node-b") and up(b, "node-a"))
    sas_a = {(s.dst, s.spi): s for s in valid_sas(a)}
    sas_b = {(s.dst, s.spi): s for s in valid_sas(b)}
    assert sas_a == sas_b and len(sas_a) == 2
    sa = next(iter(sas_a.values()))
    assert sa.proto is (xm.Proto.AH if spec.get("protocol") == "ah" else xm.Proto.ESP)
    assert sa.mode is (xm.Mode.TUNNEL if spec.get("mode") == "tunnel" else xm.Mode.TRANSPORT)
    assert sa.esn is spec.get("esn", True)
    assert sa.replay_window == spec.get("replayWindow", 1024)
    fwd = [p for p in a.kernel.policies.values() if p.dir is xm.Dir.FWD]
    assert len(fwd) == (1 if spec.get("mode") == "tunnel" else 0)


async def test_generation_switched_during_negotiation_still_ends_on_the_new_one(pair):
    a, b = pair
    old, new = {"mesh": helpers.keyset(1, (1, 2))}, {"mesh": helpers.keyset(2, (1, 2))}
    a.drop = lambda n: n == 2  # IKE_AUTH (signed with generation 1) is lost once
    a.apply(MESH, old, TWO_NODES)
    b.apply(MESH, old, TWO_NODES)
    await eventually(lambda: len(a.sent) >= 2)
    a.apply(MESH, new, TWO_NODES)  # current changes while IKE_AUTH waits for its retransmission
    b.apply(MESH, new, TWO_NODES)
    await eventually(lambda: up(a, "node-b") and up(b, "node-a")
                     and a.state("node-b").key_generation == 2
                     and b.state("node-a").key_generation == 2)


async def test_failed_reauthentication_is_retried(pair):
    a, b = pair
    await bring_up(a, b, {"mesh": helpers.keyset(1, (1,))})
    # a believes 2 is current, b has not loaded 2 yet: a's re-authentication fails ...
    a.apply(MESH, {"mesh": helpers.keyset(2, (1, 2))}, TWO_NODES)
    await eventually(lambda: a.manager.peers[("mesh", "node-b")].retry is not None)
    assert a.state("node-b").key_generation == 1 and up(a, "node-b")  # the old SA still serves
    # ... and succeeds on a retry once b has it
    b.apply(MESH, {"mesh": helpers.keyset(2, (1, 2))}, TWO_NODES)
    a.manager.peers[("mesh", "node-b")].retry.cancel()
    a.manager.queue.put_nowait(("retry", ("mesh", "node-b")))
    await eventually(lambda: a.state("node-b").key_generation == 2 and up(a, "node-b"))


@pytest.mark.parametrize("side", ["initiator", "responder"])
async def test_child_and_ike_rekeys_switch_without_a_gap(side):
    shared: list = []
    link: dict = {}
    a, b = Agent("node-a", link), Agent("node-b", link)
    a.kernel.ops, b.kernel.ops = Journal("node-a", shared), Journal("node-b", shared)
    await a.start()
    await b.start()
    await bring_up(a, b, {"mesh": helpers.keyset()})
    rekeyer = a if side == "initiator" else b
    peer_name = "node-b" if rekeyer is a else "node-a"
    peer = rekeyer.manager.peers[("mesh", peer_name)]
    loop = asyncio.get_running_loop()
    for _ in range(3):
        old_in = set(peer.children)
        rekeyer.manager.engine.rekey_child(peer.active, loop.time())
        rekeyer.manager.queue.put_nowait(("timer",))
        await eventually(lambda old_in=old_in: set(peer.children).isdisjoint(old_in)
                         and len(peer.children) == 1 and peer.active in peer.children)
        await eventually(lambda: len(valid_sas(a)) == 2 and len(valid_sas(b)) == 2)
    ike_before = set(peer.ike_sas)
    rekeyer.manager.engine.rekey_ike(max(peer.ike_sas), loop.time())
    rekeyer.manager.queue.put_nowait(("timer",))
    await eventually(lambda: set(peer.ike_sas).isdisjoint(ike_before) and len(peer.ike_sas) == 1)
    # the other side settles when the old IKE SA's DELETE reaches it, a moment later; an IKE
    # rekey keeps the Child SA (no re-authentication, no second pair of SAs)
    await eventually(lambda: up(a, "node-b") and up(b, "node-a"))
    assert len(peer.children) == 1 and len(valid_sas(a)) == 2 and len(valid_sas(b)) == 2
    assert all(inst.ike_sa in peer.ike_sas for inst in peer.children.values())
    assert peer.state.last_rekey is not None
    assert pins_precede_peer_inbound(shared, ADDRESSES) == []
    for sender, receiver in ((a, b), (b, a)):
        spi = out_policy(sender).templates[0].spi
        assert any(str(s.dst) == receiver.address and s.spi == spi for s in valid_sas(receiver))
    await a.stop()
    await b.stop()
