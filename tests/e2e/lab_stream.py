"""Receiver for ``tests/xfrm/udp_stream.py``'s sender that also says *which* packets were lost.

    ip netns exec NS python -m tests.e2e.lab_stream BIND_IP PORT

Same protocol and summary as udp_stream's receiver, plus ``missing``: up to 20 ranges
``[first, last]`` of sequence numbers never received, so a loss can be placed in time
(sequence / rate = seconds after the sender started) against the lab's events.
"""

from __future__ import annotations

import json
import socket
import struct
import sys

from tests.xfrm.udp_stream import END, SO_RCVBUFFORCE


def missing_ranges(seen: set[int], highest: int, limit: int = 20) -> list[list[int]]:
    out: list[list[int]] = []
    start = None
    for seq in range(highest + 1):
        if seq not in seen:
            if start is None:
                start = seq
        elif start is not None:
            out.append([start, seq - 1])
            start = None
            if len(out) == limit:
                break
    return out


def receive(bind: str, port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 32 << 20)
    sock.bind((bind, port))
    print("ready", flush=True)
    seen: set[int] = set()
    received = late = 0
    highest = -1
    ended = False
    while True:
        try:
            data = sock.recv(64)
        except TimeoutError:
            break
        (seq,) = struct.unpack("!Q", data[:8])
        if seq == END:
            ended = True
            sock.settimeout(1.0)
            continue
        received += 1
        late += seq < highest
        highest = max(highest, seq)
        seen.add(seq)
    print(json.dumps({"received": received, "unique": len(seen), "highest": highest,
                      "late": late, "ended": ended,
                      "missing": missing_ranges(seen, highest)}), flush=True)


if __name__ == "__main__":
    receive(sys.argv[1], int(sys.argv[2]))
