"""We test these aspects of interoperation with strongSwan 5.9.8 (charon, kernel-netlink) in the
VM, charon in one namespace and our IKE core + XFRM layer (tests/e2e/endpoint.py) in the other,
transport mode, AES-GCM-256, x25519, PSK, one charon for the whole module:

* either side initiates; both agree on SPIs and algorithms; ping crosses the wire as ESP with
  exactly the negotiated SPIs, and both kernels' SA counters move;
* a Child SA rekey and an IKE SA rekey, each initiated by either side, under a 1000 packet/s
  UDP stream in each direction: no packet lost, traffic moves to the new SPIs;
* deletes from either side (Child SA, IKE SA) leave no SA in either kernel; a new Child SA
  inside an existing IKE SA (CREATE_CHILD_SA from charon) works;
* dead peer detection: charon killed, our side reports PeerDead after short retransmits and
  removes the SAs;
* a wrong PSK is refused with AUTHENTICATION_FAILED on both sides (our counters, charon's log),
  whoever initiates; an IKE or ESP proposal mismatch gives NO_PROPOSAL_CHOSEN;
* the node agent's own peer workers (kube_ipsec.agent.peers, charon as an external peer with
  FQDN identities and the tunnel spec's defaults, PFS on rekey) come up whoever initiates,
  carry ping as ESP with the SPIs their status reports, and lose no ping over charon's rekey.

Run: ``make test-vm PYTEST_ARGS='-k interop'`` (about 4-5 minutes under TCG). Needs charon's
openssl and gcm plugins (Debian libstrongswan-standard-plugins) for x25519 and AES-GCM.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import vici.exception
from pyroute2 import netns as pr_netns

from kube_ipsec import contract, ike
from kube_ipsec.agent import desired, peers
from kube_ipsec.xfrm import NetlinkKernel, bypass_socket
from tests.e2e.endpoint import Endpoint
from tests.e2e.strongswan import Charon, peer_conn, quiet_ipv6
from tests.netns import Pair, capture, run, veth_pair

pytestmark = [pytest.mark.vm, pytest.mark.interop]

PSK = bytes.fromhex("3f1d6a0c9b7e52a4d8f0c1e2b3a495867d6e5f4a3b2c1d0e9f8a7b6c5d4e3f21")
WRONG_PSK = bytes(32)
SIDES = ["ours", "charon"]


@dataclasses.dataclass
class Wire:
    pair: Pair
    charon: Charon

    def load(self, psk: bytes = PSK, **conn: str) -> None:
        p = self.pair
        self.charon.load(peer_conn(p.right_ip, p.left_ip, **conn), psk, (p.left_ip, p.right_ip))


def warm_up_gcm(ns: str) -> None:
    """Instantiate the kernel's rfc4106(gcm(aes)) once: the first SA using it stalls for
    seconds under TCG (crypto self-tests), long enough for an IKE peer to give up."""
    key = "0x" + "11" * 36
    run("ip", "xfrm", "state", "add", "src", "198.51.100.1", "dst", "198.51.100.2", "proto",
        "esp", "spi", "0x100", "mode", "transport", "flag", "esn", "replay-window", "1024",
        "aead", "rfc4106(gcm(aes))", key, "128", ns=ns)
    run("ip", "xfrm", "state", "flush", ns=ns)


@pytest.fixture(scope="module")
def wire(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Wire]:
    with veth_pair() as pair:
        for ns in (pair.left, pair.right):
            quiet_ipv6(ns)
        warm_up_gcm(pair.right)
        charon = Charon(pair.right, tmp_path_factory.mktemp("charon"))
        charon.start()
        try:
            yield Wire(pair, charon)
        finally:
            charon.stop()


@pytest.fixture
async def ours(wire: Wire) -> AsyncIterator[Endpoint]:
    """Our endpoint in the left namespace, fresh per test; charon reloaded with the good PSK."""
    if wire.charon.proc is None:  # a test killed it
        wire.charon.start()
    wire.load()
    kernel = NetlinkKernel(wire.pair.left)
    ep = Endpoint(kernel, ns=wire.pair.left, local=wire.pair.left_ip, remote=wire.pair.right_ip,
                  psk=PSK, linger=1.0, retransmit_timeout=1.0, retransmit_tries=3)
    await ep.start()
    mark = len(wire.charon.log())
    try:
        yield ep
    finally:
        print("charon's log during the test:", wire.charon.log()[mark:][-6000:], sep="\n")
        print("our events:", [type(e).__name__ for e in ep.events], ep.engine.stats)
        await ep.close()
        await kernel.flush_owned()
        await kernel.close()
        if wire.charon.proc is not None:
            wire.charon.terminate_all()
        assert ep.errors == []  # every kernel call our side made succeeded


async def bring_up(ep: Endpoint, wire: Wire, initiator: str) -> ike.ChildSa:
    if initiator == "ours":
        await ep.call(ep.engine.initiate, ep.peer)
    else:
        await asyncio.to_thread(wire.charon.initiate)
    (up,) = await ep.wait_for(ike.ChildSaEstablished)
    await wait_until(lambda: len(wire.charon.children()) == 1)
    return up.child


async def wait_until(predicate, timeout: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await asyncio.to_thread(predicate):
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.2)


async def our_sas(ep: Endpoint) -> dict[int, int]:
    """SPI -> packets of our kernel's keyed SAs (larval ALLOCSPI states left out)."""
    return {sa.spi: sa.counters.packets if sa.counters else 0
            for sa in await ep.kernel.dump_sas() if sa.aead or sa.auth}


def xfrm_errors(ns: str) -> dict[str, int]:
    """The non-zero counters of /proc/net/xfrm_stat in ``ns`` (why the kernel dropped)."""
    out = run("cat", "/proc/net/xfrm_stat", ns=ns).stdout
    return {k: int(v) for k, v in (line.split() for line in out.splitlines()) if v != "0"}


def charon_kernel_spis(ns: str) -> set[int]:
    out = run("ip", "xfrm", "state", ns=ns).stdout
    return {int(w, 16) for line in out.splitlines() if "spi " in line
            for w in [line.split("spi ")[1].split()[0]]}


@pytest.mark.parametrize("initiator", SIDES)
async def test_either_side_initiates_and_traffic_is_esp_with_the_negotiated_spis(
        wire: Wire, ours: Endpoint, initiator: str, tmp_path: Path) -> None:
    child = await bring_up(ours, wire, initiator)
    (sa,) = wire.charon.established()
    (theirs,) = sa["child-sas"].values()
    assert (sa["encr-alg"], sa["encr-keysize"], sa["dh-group"]) == (
        "AES_GCM_16", "256", "CURVE_25519")
    assert (theirs["mode"], theirs["protocol"], theirs["encr-alg"]) == (
        "TRANSPORT", "ESP", "AES_GCM_16")
    assert int(theirs["spi-in"], 16) == child.spi_out
    assert int(theirs["spi-out"], 16) == child.spi_in
    assert child.mode is ike.Mode.TRANSPORT and child.inbound.algorithm == "rfc4106(gcm(aes))"
    assert (sa["initiator-spi"] if initiator == "ours" else sa["responder-spi"]) == next(
        s.local_spi for s in ours.ike_sas())

    p = wire.pair
    with capture(p.right, p.right_if, tmp_path / "wire.pcap") as cap:
        assert p.ping(p.left, p.right_ip, count=5)
    esp = cap.esp()
    plain = [line for line in cap.text().splitlines() if " IP " in line and "ICMP" in line]
    print(cap.text())
    assert plain == []  # nothing in the clear
    assert {(e.src, e.spi) for e in esp} == {(p.left_ip, child.spi_out),
                                              (p.right_ip, child.spi_in)}
    packets = await our_sas(ours)
    assert packets[child.spi_in] >= 5 and packets[child.spi_out] >= 5
    (theirs,) = wire.charon.children()
    assert int(theirs["packets-in"]) >= 5 and int(theirs["packets-out"]) >= 5


# -- rekeying under load --------------------------------------------------------------------

def stream(ns: str, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m",
                             "tests.xfrm.udp_stream", *args], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def stop_stream(sender: subprocess.Popen[str], receiver: subprocess.Popen[str]) -> dict:
    sender.send_signal(signal.SIGTERM)
    sent = json.loads(sender.communicate(timeout=120)[0])
    got = json.loads(receiver.communicate(timeout=120)[0])
    return {"sent": sent["sent"], "unique": got["unique"], "lost": sent["sent"] - got["unique"],
            "late": got["late"], "send_errors": sent["send_errors"], "ended": got["ended"]}


@pytest.mark.parametrize("initiator", SIDES)
async def test_child_and_ike_rekey_under_a_1000pps_stream_each_way_lose_nothing(
        wire: Wire, ours: Endpoint, initiator: str, tmp_path: Path) -> None:
    first = await bring_up(ours, wire, "ours")
    (old_ike,) = [s.local_spi for s in ours.ike_sas()]
    p = wire.pair
    with capture(p.right, p.right_if, tmp_path / "wire.pcap", "esp") as cap:
        recv_l = stream(p.left, "recv", p.left_ip, "7001")
        recv_r = stream(p.right, "recv", p.right_ip, "7000")
        send_l = stream(p.left, "send", p.right_ip, "7000", "1000")
        send_r = stream(p.right, "send", p.left_ip, "7001", "1000")
        try:
            await asyncio.sleep(2)
            if initiator == "ours":
                await ours.call(ours.engine.rekey_child, first.spi_in)
            else:
                await asyncio.to_thread(wire.charon.rekey_child)
            (rekeyed,) = await ours.wait_for(ike.ChildSaRekeyed)
            await ours.wait_for(ike.ChildSaDeleted, where=lambda e: e.child.spi_in == first.spi_in)
            await asyncio.sleep(2)
            if initiator == "ours":
                await ours.call(ours.engine.rekey_ike, ours.of(ike.IkeSaEstablished)[0].ike_sa)
            else:
                await asyncio.to_thread(wire.charon.rekey_ike)
            await ours.wait_for(ike.IkeSaRekeyed)
            await ours.wait_for(ike.IkeSaDeleted)  # the old IKE SA
            await asyncio.sleep(ours.linger + 2)  # the old inbound SA is gone under the stream
        finally:
            to_right = stop_stream(send_l, recv_r)
            to_left = stop_stream(send_r, recv_l)
    new = rekeyed.new
    print(f"rekeys by {initiator}: ours->charon {to_right}, charon->ours {to_left}")
    print("ESP on the wire (src, spi): packets, highest seq:", {
        k: (n, max(e.seq for e in cap.esp() if (e.src, e.spi) == k))
        for k, n in collections.Counter((e.src, e.spi) for e in cap.esp()).items()})
    print("kernel drops: ours", xfrm_errors(p.left), "charon", xfrm_errors(p.right))
    assert rekeyed.old.spi_in == first.spi_in
    assert rekeyed.outbound_active is (initiator == "ours")
    if initiator == "charon":
        assert ours.of(ike.ChildSaOutboundActivated)[0].child.spi_in == new.spi_in
    spis = {(e.src, e.spi) for e in cap.esp()}
    assert spis == {(p.left_ip, first.spi_out), (p.left_ip, new.spi_out),
                    (p.right_ip, first.spi_in), (p.right_ip, new.spi_in)}
    for result in (to_right, to_left):
        assert result["ended"] and result["sent"] > 1000  # the sender lags under TCG
        assert result["lost"] == 0 and result["send_errors"] == []
    assert set(await our_sas(ours)) == {new.spi_in, new.spi_out}
    assert charon_kernel_spis(p.right) == {new.spi_in, new.spi_out}
    (sa,) = wire.charon.established()
    assert sa["state"] == "ESTABLISHED"
    assert old_ike not in (sa["initiator-spi"], sa["responder-spi"])
    assert [s.local_spi for s in ours.ike_sas()] != [old_ike]
    assert ours.engine.stats.rekeys["child"] >= 1 and ours.engine.stats.rekeys["ike"] >= 1


# -- deletes --------------------------------------------------------------------------------

async def test_deletes_from_either_side_leave_no_sa_in_either_kernel(
        wire: Wire, ours: Endpoint) -> None:
    p = wire.pair
    first = await bring_up(ours, wire, "ours")
    # our Child SA delete; the IKE SA stays
    await ours.call(ours.engine.delete_child, first.spi_in)
    await ours.wait_for(ike.ChildSaDeleted)
    await wait_until(lambda: wire.charon.children() == [])
    assert await our_sas(ours) == {} and charon_kernel_spis(p.right) == set()
    assert len(wire.charon.established()) == 1
    # charon adds a Child SA to the existing IKE SA (CREATE_CHILD_SA), then deletes it
    await asyncio.to_thread(wire.charon.initiate)
    (_, second) = await ours.wait_for(ike.ChildSaEstablished, count=2)
    assert len(wire.charon.sas()) == 1 and p.ping(p.left, p.right_ip)
    await asyncio.to_thread(wire.charon.terminate_child)
    (_, gone) = await ours.wait_for(ike.ChildSaDeleted, count=2)
    assert gone.child.spi_in == second.child.spi_in and gone.reason is ike.Reason.PEER
    assert await our_sas(ours) == {} and charon_kernel_spis(p.right) == set()
    # our IKE SA delete takes everything
    await asyncio.to_thread(wire.charon.initiate)
    await ours.wait_for(ike.ChildSaEstablished, count=3)
    await ours.call(ours.engine.delete_ike, ours.ike_sas()[0].ike_sa)
    (deleted,) = await ours.wait_for(ike.IkeSaDeleted)
    assert deleted.reason is ike.Reason.LOCAL
    await wait_until(lambda: wire.charon.sas() == [])
    assert await our_sas(ours) == {} and charon_kernel_spis(p.right) == set()
    # charon's IKE SA delete
    await bring_up(ours, wire, "charon")
    await asyncio.to_thread(wire.charon.terminate_ike)
    (_, deleted) = await ours.wait_for(ike.IkeSaDeleted, count=2)
    assert deleted.reason is ike.Reason.PEER
    assert ours.ike_sas() == [] and await our_sas(ours) == {}
    assert charon_kernel_spis(p.right) == set()


# -- failures -------------------------------------------------------------------------------

async def test_dead_peer_is_detected_after_short_retransmits(
        wire: Wire, ours: Endpoint) -> None:
    ours.peer = dataclasses.replace(ours.peer, dpd_delay=2.0)
    await bring_up(ours, wire, "ours")
    wire.charon.kill()
    (dead,) = await ours.wait_for(ike.PeerDead, timeout=90)
    assert dead.remote_addr[0] == wire.pair.right_ip
    (deleted,) = await ours.wait_for(ike.IkeSaDeleted)
    assert deleted.reason is ike.Reason.DEAD_PEER
    assert ours.engine.stats.failures["retransmits_exhausted"] == 1
    assert ours.engine.stats.retransmits >= 2
    assert await our_sas(ours) == {} and ours.ike_sas() == []


@pytest.mark.parametrize("initiator", SIDES)
async def test_wrong_psk_is_refused_with_authentication_failed_on_both_sides(
        wire: Wire, ours: Endpoint, initiator: str) -> None:
    wire.load(psk=WRONG_PSK)
    mark = len(wire.charon.log())
    if initiator == "ours":
        await ours.call(ours.engine.initiate, ours.peer)
    else:
        with pytest.raises(vici.exception.CommandException):
            await asyncio.to_thread(wire.charon.initiate)
    (failed,) = await ours.wait_for(ike.AuthenticationFailed)
    await ours.wait_for(ike.IkeSaDeleted)
    await wait_until(lambda: wire.charon.sas() == [])
    # the responder checks the initiator's AUTH first, and says so to the initiator
    assert failed.by_peer is (initiator == "ours")
    assert ours.engine.stats.failures["authentication_failed"] == 1
    log = wire.charon.log()[mark:]
    if initiator == "ours":
        assert "MAC mismatched" in log and "IKE_AUTH response 1 [ N(AUTH_FAILED) ]" in log
    else:
        assert "received AUTHENTICATION_FAILED notify error" in log
    assert ours.of(ike.ChildSaEstablished) == [] and await our_sas(ours) == {}


@pytest.mark.parametrize(("initiator", "what"), [
    ("ours", "ike"), ("charon", "ike"), ("ours", "esp"), ("charon", "esp")])
async def test_proposal_mismatch_gives_no_proposal_chosen(
        wire: Wire, ours: Endpoint, initiator: str, what: str) -> None:
    if what == "ike":
        wire.load(proposals="aes128gcm16-prfsha256-ecp256")
    else:
        wire.load(esp_proposals="aes128gcm16-noesn")
    mark = len(wire.charon.log())
    if initiator == "ours":
        await ours.call(ours.engine.initiate, ours.peer)
    else:
        with pytest.raises(vici.exception.CommandException):
            await asyncio.to_thread(wire.charon.initiate)
    if what == "ike":
        (failed,) = await ours.wait_for(ike.NegotiationFailed)
        assert (failed.exchange, failed.notify) == ("IKE_SA_INIT", "NO_PROPOSAL_CHOSEN")
        assert failed.by_peer is (initiator == "ours")
        assert ours.ike_sas() == []
    else:  # the IKE SA comes up, the Child SA in IKE_AUTH does not
        (child_failed,) = await ours.wait_for(ike.ChildSaFailed)
        assert child_failed.notify == "NO_PROPOSAL_CHOSEN"
        assert child_failed.by_peer is (initiator == "ours")
        assert len(ours.ike_sas()) == 1
    await asyncio.sleep(1)  # charon's log line about it
    log = wire.charon.log()[mark:]
    # charon logs the notify it sends as N(NO_PROP), the one it receives in full
    assert ("received NO_PROPOSAL_CHOSEN notify" in log if initiator == "charon"
            else "N(NO_PROP)" in log)
    assert ours.of(ike.ChildSaEstablished) == [] and await our_sas(ours) == {}


# -- the agent's own peer workers -----------------------------------------------------------

class _Socket(asyncio.DatagramProtocol):
    def __init__(self, manager: peers.PeerManager, local: tuple[str, int]) -> None:
        self.manager, self.local = manager, local

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.manager.datagram_received(data, (str(addr[0]), int(addr[1])), self.local)


@pytest.fixture
async def agent(wire: Wire) -> AsyncIterator[peers.PeerManager]:
    """The agent's PeerManager in the left namespace on a bypassed UDP socket (port 500)."""
    if wire.charon.proc is None:
        wire.charon.start()
    p = wire.pair
    kernel = NetlinkKernel(p.left)
    sock = pr_netns.create_socket(p.left, socket.AF_INET, socket.SOCK_DGRAM)
    bypass_socket(sock)
    sock.bind((p.left_ip, 500))
    loop = asyncio.get_running_loop()
    transports: list[asyncio.DatagramTransport] = []
    manager = peers.PeerManager(kernel, lambda data, _src, dst: transports[0].sendto(data, dst),
                                local_address=p.left_ip, linger=1.0)
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _Socket(manager, (p.left_ip, 500)), sock=sock)
    transports.append(transport)
    await manager.adopt()
    task = asyncio.create_task(manager.run())
    try:
        yield manager
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        transport.close()
        await asyncio.sleep(0)
        await kernel.flush_owned()
        await kernel.close()
        wire.charon.terminate_all()


def external_peer(pair: Pair, initiator: bool) -> desired.Desired:
    """charon as the tunnel's external peer 'gw', with the spec's defaults (x25519, AES-GCM-256,
    ESN, PFS); IDs are FQDNs as the agent uses them."""
    peer = desired.DesiredPeer(
        tunnel="mesh", name="gw", external=True, local_id="node-a", remote_id="gw",
        local_address=pair.left_ip, remote_address=pair.right_ip, spec=contract.TunnelSpec(),
        selectors=(desired.Selector(f"{pair.left_ip}/32", f"{pair.right_ip}/32"),),
        initiator=initiator, initiate_generation=1, psks=((1, PSK),))
    return desired.Desired({peer.key: peer}, {"mesh": (1,)}, {}, pair.left_ip)


@pytest.mark.parametrize("initiator", ["agent", "charon"])
async def test_agent_peer_workers_with_charon_as_external_peer(
        wire: Wire, agent: peers.PeerManager, initiator: str, tmp_path: Path) -> None:
    p = wire.pair
    wire.charon.load(peer_conn(p.right_ip, p.left_ip, local_id="gw", remote_id="node-a",
                               esp_proposals="aes256gcm16-x25519-esn"),
                     PSK, ("gw", "node-a"))
    agent.set_desired(external_peer(p, initiator == "agent"), {"mesh": 1})
    if initiator == "charon":
        await wait_until(lambda: ("mesh", "gw") in agent.peers)
        await asyncio.to_thread(wire.charon.initiate)

    def state() -> Any:
        peer = agent.peers.get(("mesh", "gw"))
        return peer.state if peer else None

    await wait_until(lambda: bool(state() and state().ike_state == contract.IKE_ESTABLISHED
                                  and state().child_state == contract.CHILD_INSTALLED))
    first_in, first_out = set(state().spis_in), set(state().spis_out)
    with capture(p.right, p.right_if, tmp_path / "wire.pcap") as cap:
        assert p.ping(p.left, p.right_ip)
    assert {(e.src, e.spi) for e in cap.esp()} == (
        {(p.left_ip, s) for s in first_out} | {(p.right_ip, s) for s in first_in})
    # charon rekeys the Child SA (with a new x25519 exchange) under ping
    pinger = asyncio.create_task(asyncio.to_thread(p.ping, p.left, p.right_ip, 25))
    await asyncio.sleep(1)
    await asyncio.to_thread(wire.charon.rekey_child)
    await wait_until(lambda: len(state().spis_in) == 1 and not set(state().spis_in) & first_in)
    assert await pinger, "a ping was lost over charon's rekey"
    (theirs,) = wire.charon.children()
    assert theirs["dh-group"] == "CURVE_25519" and theirs["esn"] == "1"
    assert int(theirs["spi-out"], 16) in state().spis_in
