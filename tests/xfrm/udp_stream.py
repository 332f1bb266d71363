"""A paced UDP stream with sequence numbers, to count loss and reordering across SA switches.

    ip netns exec NS python -m tests.xfrm.udp_stream recv BIND_IP PORT
    ip netns exec NS python -m tests.xfrm.udp_stream send DST_IP PORT RATE

The sender sends 8-byte sequence numbers at RATE packets/s until SIGTERM, then an end marker
(repeated) and prints ``{"sent": n, ...}``. The receiver prints, once the end marker has come
and the socket stayed quiet for a second: packets received, unique, how many arrived after a
higher number, and the largest such displacement. Loss is ``sent - unique``.
"""

from __future__ import annotations

import json
import signal
import socket
import struct
import sys
import time

END = 0xFFFFFFFFFFFFFFFF
SO_RCVBUFFORCE = 33  # linux/asm-generic/socket.h; the socket module does not export it


def send(dst: str, port: int, rate: float) -> None:
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    print('ready', flush=True)
    start, sent, errors = time.monotonic(), 0, []
    while not stop:
        delay = start + sent / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        try:
            sock.sendto(struct.pack('!Q', sent), (dst, port))
        except OSError as e:
            errors.append(e.errno)  # a local drop by XFRM (no SA / blocked) is loss too
        sent += 1
    for _ in range(5):
        sock.sendto(struct.pack('!Q', END), (dst, port))
        time.sleep(0.05)
    print(json.dumps({'sent': sent, 'send_errors': errors}), flush=True)


def receive(bind: str, port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    # 8-byte datagrams still cost ~1 KiB of buffer each: the default 208 KiB overflows after
    # a ~0.2 s stall, and Python under TCG stalls that long. Root may force a bigger buffer.
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 32 << 20)
    sock.bind((bind, port))
    print('ready', flush=True)
    seen: set[int] = set()
    received = late = max_displacement = 0
    highest = -1
    ended = False
    sock.settimeout(None)
    while True:
        try:
            data = sock.recv(64)
        except TimeoutError:
            break
        (seq,) = struct.unpack('!Q', data[:8])
        if seq == END:
            ended = True
            sock.settimeout(1.0)
            continue
        received += 1
        if seq < highest:
            late += 1
            max_displacement = max(max_displacement, highest - seq)
        highest = max(highest, seq)
        seen.add(seq)
    print(json.dumps({
        'received': received, 'unique': len(seen), 'highest': highest, 'late': late,
        'max_displacement': max_displacement, 'ended': ended,
    }), flush=True)


if __name__ == '__main__':
    mode, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == 'send':
        send(addr, port, float(sys.argv[4]))
    else:
        receive(addr, port)
