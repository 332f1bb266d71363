"""We test these aspects of the MTU arithmetic (agent/mtu.py):

- known figures for 1500-byte links (AES-GCM transport/tunnel, NAT-T, AH, IPv6);
- ``inner_mtu`` is exactly the largest inner packet whose protected size fits the link,
  checked against an independent per-packet size computation for many link MTUs;
- AH refuses UDP encapsulation;
- the link MTU is read from the interface holding the address (IPv4 and IPv6).
"""

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kube_ipsec.agent import mtu


def protected_size(inner: int, mode: str, family: int, udp: bool) -> int:
    """The on-wire size of one ESP(AES-GCM)-protected packet of ``inner`` bytes."""
    ip = 20 if family == 4 else 40
    if mode == "tunnel":
        header, payload = ip, inner
    else:
        header, payload = ip, inner - ip
    padded = payload + 2
    padded += (-padded) % 4
    return header + (8 if udp else 0) + 8 + 8 + padded + 16


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"mode": "transport"}, 1466),
    ({"mode": "tunnel"}, 1446),
    ({"mode": "transport", "udp_encap": True}, 1458),
    ({"mode": "tunnel", "family": 6}, 1426),
    ({"mode": "transport", "protocol": "ah", "integrity": "hmac-sha256-128"}, 1472),
    ({"mode": "transport", "protocol": "ah", "family": 6}, 1468),
    ({"mode": "tunnel", "cipher": "chacha20-poly1305"}, 1446),
])
def test_known_figures_for_a_1500_byte_link(kwargs, expected):
    assert mtu.inner_mtu(1500, **kwargs) == expected
    assert mtu.overhead(1500, **kwargs) == 1500 - expected


@given(link=st.integers(min_value=576, max_value=9000),
       mode=st.sampled_from(["transport", "tunnel"]), family=st.sampled_from([4, 6]),
       udp=st.booleans())
def test_inner_mtu_is_the_largest_packet_that_fits(link, mode, family, udp):
    inner = mtu.inner_mtu(link, mode=mode, family=family, udp_encap=udp, cipher="aes-gcm-128")
    assert protected_size(inner, mode, family, udp) <= link
    assert protected_size(inner + 1, mode, family, udp) > link


def test_ah_cannot_be_udp_encapsulated():
    with pytest.raises(ValueError, match="AH"):
        mtu.inner_mtu(1500, mode="transport", protocol="ah", udp_encap=True)


def test_link_mtu_of_the_interface_holding_an_address(tmp_path):
    assert mtu.link_mtu("127.0.0.1") == int(Path("/sys/class/net/lo/mtu").read_text())
    assert mtu.link_mtu("192.0.2.254") is None
    (tmp_path / "eth9").mkdir()
    (tmp_path / "eth9" / "mtu").write_text("1450\n")
    inet6 = tmp_path / "if_inet6"
    inet6.write_text("20010db8000000000000000000000001 09 40 00 80     eth9\n")
    assert mtu.link_mtu("2001:db8::1", sys_net=str(tmp_path), if_inet6=str(inet6)) == 1450
    assert mtu.link_mtu("2001:db8::2", sys_net=str(tmp_path), if_inet6=str(inet6)) is None
