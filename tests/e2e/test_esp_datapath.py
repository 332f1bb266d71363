"""The VM datapath is real: ESP SAs installed with ``ip xfrm`` carry ping between two namespaces.

This is the proof the other datapath tests stand on: packets on the veth are ESP with our SPIs,
the SAs' counters move, and with policies but no SAs nothing gets through (so a passing ping
cannot have bypassed IPsec).
"""

import re
import secrets

import pytest

from tests.netns import Pair, capture, veth_pair

pytestmark = pytest.mark.vm

SPI_LR, SPI_RL = 0x1001, 0x1002  # left->right, right->left
FAMILIES = {"ipv4": False, "ipv6": True}


def addrs(pair: Pair, ipv6: bool) -> tuple[str, str, str]:
    """(left address, right address, host prefix length) for the family under test."""
    if ipv6:
        return pair.left_ip6, pair.right_ip6, "128"
    return pair.left_ip, pair.right_ip, "32"


def add_policies(pair: Pair, ipv6: bool) -> None:
    """Transport-mode ESP required both ways between the two addresses, in both namespaces."""
    left, right, plen = addrs(pair, ipv6)
    for ns, local, remote in ((pair.left, left, right), (pair.right, right, left)):
        for direction, src, dst in (("out", local, remote), ("in", remote, local)):
            pair.run(ns, "ip", "xfrm", "policy", "add", "src", f"{src}/{plen}",
                     "dst", f"{dst}/{plen}", "dir", direction, "tmpl", "src", src, "dst", dst,
                     "proto", "esp", "reqid", "1", "mode", "transport")


def add_sas(pair: Pair, ipv6: bool) -> None:
    """AES-GCM-128 SAs (fresh random key+salt per direction), the same pair in both namespaces."""
    left, right, _ = addrs(pair, ipv6)
    sas = [(left, right, SPI_LR, "0x" + secrets.token_hex(20)),
           (right, left, SPI_RL, "0x" + secrets.token_hex(20))]
    for ns in (pair.left, pair.right):
        for src, dst, spi, key in sas:
            pair.run(ns, "ip", "xfrm", "state", "add", "src", src, "dst", dst, "proto", "esp",
                     "spi", hex(spi), "reqid", "1", "mode", "transport",
                     "aead", "rfc4106(gcm(aes))", key, "128")


def sa_packets(pair: Pair, ns: str) -> dict[int, int]:
    """Packets counted per SPI by ``ip -s xfrm state`` (its output holds keys: never print it)."""
    out = pair.run(ns, "ip", "-s", "xfrm", "state").stdout
    counts = {}
    for block in re.split(r"^(?=src )", out, flags=re.M):
        spi = re.search(r"proto esp spi 0x([0-9a-f]+)", block)
        current = re.search(r"lifetime current:\s+\d+\(bytes\), (\d+)\(packets\)", block)
        if spi and current:
            counts[int(spi.group(1), 16)] = int(current.group(1))
    return counts


@pytest.mark.parametrize("family", FAMILIES)
def test_ping_travels_as_esp(family, tmp_path):
    ipv6 = FAMILIES[family]
    with veth_pair(ipv6=ipv6) as pair:
        add_sas(pair, ipv6)
        add_policies(pair, ipv6)
        _, right, _ = addrs(pair, ipv6)
        before = sa_packets(pair, pair.left), sa_packets(pair, pair.right)
        assert before == ({SPI_LR: 0, SPI_RL: 0}, {SPI_LR: 0, SPI_RL: 0})

        with capture(pair.right, pair.right_if, tmp_path / "wire.pcap") as wire:
            assert pair.ping(pair.left, right, count=3)

        esp = wire.esp()
        assert {p.spi for p in esp} == {SPI_LR, SPI_RL}, wire.text()
        assert sum(p.spi == SPI_LR for p in esp) >= 3
        assert sum(p.spi == SPI_RL for p in esp) >= 3
        assert not any(p.udp_encap for p in esp)
        assert "echo" not in wire.text()  # no echo crossed the wire in clear
        # Sender's outbound and receiver's inbound SA both counted every echo, and back.
        left_after, right_after = sa_packets(pair, pair.left), sa_packets(pair, pair.right)
        for counts in (left_after, right_after):
            assert counts[SPI_LR] >= 3 and counts[SPI_RL] >= 3, counts


@pytest.mark.parametrize("family", FAMILIES)
def test_policies_without_sas_drop_traffic(family, tmp_path):
    ipv6 = FAMILIES[family]
    with veth_pair(ipv6=ipv6) as pair:
        _, right, _ = addrs(pair, ipv6)
        assert pair.ping(pair.left, right, count=1)  # the wire itself works

        add_policies(pair, ipv6)
        with capture(pair.right, pair.right_if, tmp_path / "wire.pcap") as wire:
            assert not pair.ping(pair.left, right, count=2, wait=1)

        assert wire.esp() == []
        assert "echo" not in wire.text()
        assert sa_packets(pair, pair.left) == {}
