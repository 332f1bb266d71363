"""The pcap reader of tests/netns.py finds ESP the way the VM tests rely on: raw ESP over IPv4
and IPv6, ESP-in-UDP on port 4500 (NAT-T), and never IKE behind the non-ESP marker."""

import ipaddress
import struct

from tests.netns import EspPacket, esp_in_pcap


def frame(ethertype: int, payload: bytes) -> bytes:
    return b"\x02" * 6 + b"\x04" * 6 + struct.pack("!H", ethertype) + payload


def ipv4(proto: int, l4: bytes, src: str = "192.0.2.1", dst: str = "192.0.2.2") -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0, 64, proto, 0,
                         ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed)
    return frame(0x0800, header + l4)


def ipv6(proto: int, l4: bytes) -> bytes:
    header = struct.pack("!IHBB16s16s", 6 << 28, len(l4), proto, 64,
                         ipaddress.ip_address("2001:db8::1").packed,
                         ipaddress.ip_address("2001:db8::2").packed)
    return frame(0x86DD, header + l4)


def udp(payload: bytes, sport: int = 4500, dport: int = 4500) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def pcap(*frames: bytes) -> bytes:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    for f in frames:
        out += struct.pack("<IIII", 0, 0, len(f), len(f)) + f
    return out


def esp(spi: int, seq: int) -> bytes:
    return struct.pack("!II", spi, seq) + b"\xaa" * 24


def test_finds_raw_and_udp_encapsulated_esp_but_not_ike_or_plain_traffic():
    packets = list(esp_in_pcap(pcap(
        ipv4(50, esp(0x1001, 1)),
        ipv6(50, esp(0x1002, 7)),
        ipv4(17, udp(esp(0xC0FFEE, 3))),
        ipv4(17, udp(b"\0\0\0\0" + b"ike" * 10)),  # IKE on 4500 behind the non-ESP marker
        ipv4(17, udp(b"dns" * 10, 53, 53)),
        ipv4(1, b"\x08\x00" + b"\0" * 30),  # ICMP echo
    )))
    assert packets == [
        EspPacket("192.0.2.1", "192.0.2.2", 0x1001, 1, udp_encap=False),
        EspPacket("2001:db8::1", "2001:db8::2", 0x1002, 7, udp_encap=False),
        EspPacket("192.0.2.1", "192.0.2.2", 0xC0FFEE, 3, udp_encap=True),
    ]


def test_empty_capture_has_no_esp():
    assert list(esp_in_pcap(pcap())) == []
    assert list(esp_in_pcap(b"")) == []


def test_lab_classifies_node_to_node_packets_from_the_same_frames():
    from tests.e2e import lab_cluster

    nodes = {"192.0.2.1", "192.0.2.2"}
    packets = list(lab_cluster.ip_packets(pcap(
        ipv4(50, esp(0xD0000001, 1)),
        ipv4(17, udp(b"ike", 500, 500)),
        ipv4(1, b"\x08\x00ping"),
        ipv4(1, b"\x08\x00ping", src="198.51.100.1"),  # not between nodes
        ipv6(50, esp(0xD0000002, 1)),  # IPv6: not an IPv4 packet
    )))
    assert len(packets) == 4
    assert lab_cluster.classify(packets, nodes) == {"esp": 1, "ike": 1, "plaintext": 1}
