"""Long mutation fuzz of the sans-IO IKEv2 core (no hypothesis, for speed).

Feeds N inputs to ``Engine.receive_datagram`` of an established pair: random bytes, mutated
datagrams recorded from a real session (INIT, AUTH, rekeys, deletes, DPD), and mutated
plaintext re-encrypted under the live SK keys so the damage reaches the payload parser and the
task manager. Prints inputs, crashes (exceptions escaping, plus ``internal_error`` drops), peak
memory, the drop reasons, and the cost per input as a ratio to a reference measured in the same
run (header parsing of the same inputs).

    .venv/bin/python benchmarks/ike_fuzz.py 1000000     # the long run
    .venv/bin/python benchmarks/ike_fuzz.py 20000       # a quick one
"""

from __future__ import annotations

import argparse
import collections
import random
import resource
import struct
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kube_ipsec.ike import message
from kube_ipsec.ike.constants import PayloadType
from kube_ipsec.ike.errors import MalformedMessage
from tests.ike.harness import Pair

REFRESH = 5000  # fresh pair every this many inputs, so state-changing inputs do not pile up


def session() -> tuple[Pair, list[tuple[str, bytes]]]:
    pair = Pair()
    pair.connect()
    pair.a.engine.rekey_child(pair.a.children()[0], pair.now)
    pair.pump()
    pair.b.engine.rekey_ike(pair.b.engine.snapshot()[0].ike_sa, pair.now)
    pair.pump()
    pair.a.engine.dpd(pair.a.engine.snapshot()[0].ike_sa, pair.now)
    pair.pump()
    return pair, [(name, data) for name, data, _, _ in pair.sent]


def mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not buf:
            break
        pos = rng.randrange(len(buf))
        op = rng.randrange(5)
        if op == 0:
            buf[pos] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[pos] = rng.randrange(256)
        elif op == 2:
            del buf[pos:]
        elif op == 3:
            buf[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif len(buf) >= 28:
            buf[pos] = rng.randrange(256)
            struct.pack_into("!I", buf, 24, len(buf))
    return bytes(buf)


def sealed(pair: Pair, rng: random.Random, inner: bytes) -> bytes:
    """A correctly encrypted request from A carrying arbitrary inner payload bytes."""
    sa = next(iter(pair.a.engine._by_id.values()))
    exchange = rng.choice([34, 35, 36, 37])
    mid = max(0, sa.mgr.mid_out + rng.randint(-1, 1))
    length = 28 + 4 + 8 + len(inner) + 1 + 16
    header = struct.pack("!8s8sBBBBII", sa.spi_i, sa.spi_r, PayloadType.SK, 0x20, exchange,
                         (0x08 if sa.initiator else 0) | rng.choice([0, 0x20]), mid, length)
    sk = struct.pack("!BBH", rng.choice([0, 33, 34, 35, 39, 40, 41, 42, 44, 45, 48]), 0,
                     length - 28)
    assert sa.cipher_out is not None
    return header + sk + sa.cipher_out.seal(header + sk, inner + b"\x00")


def inputs(count: int, seed: int):
    rng = random.Random(seed)
    pair, corpus = session()
    plain_inner = [d for _, d in corpus]
    for i in range(count):
        if i and i % REFRESH == 0:
            pair, _ = session()
        kind = rng.randrange(10)
        if kind == 0:
            data = rng.randbytes(rng.randint(0, 400))
        elif kind < 6:
            data = mutate(rng, rng.choice(corpus)[1])
        else:
            data = sealed(pair, rng, mutate(rng, rng.choice(plain_inner)[28:])[:300])
        yield pair, data, rng.choice([500, 4500])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("count", type=int, nargs="?", default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tracemalloc", action="store_true", help="exact peak (slower)")
    args = parser.parse_args()
    if args.tracemalloc:
        tracemalloc.start()
    stats = collections.Counter()
    crashes = 0
    engine_time = reference_time = 0.0
    started = time.perf_counter()
    current: Pair | None = None

    def tally(done: Pair) -> None:
        for node in done.nodes():
            stats.update(node.engine.stats.dropped)

    for pair, data, port in inputs(args.count, args.seed):
        if pair is not current:
            if current is not None:
                tally(current)
            current = pair
        if port == 4500:
            data = b"\x00\x00\x00\x00" + data
        t0 = time.perf_counter()
        try:
            message.parse_header(data[4:] if port == 4500 else data)
        except MalformedMessage:
            pass
        t1 = time.perf_counter()
        try:
            pair.b.engine.receive_datagram(data, ("192.0.2.1", port), ("192.0.2.2", port),
                                           pair.now)
        except Exception as e:  # the property under test: this must never happen
            crashes += 1
            print("CRASH", type(e).__name__, e, data.hex()[:120])
        t2 = time.perf_counter()
        reference_time += t1 - t0
        engine_time += t2 - t1
        pair.pump()
    elapsed = time.perf_counter() - started
    if current is not None:
        tally(current)
    internal = stats["internal_error"]
    peak = (tracemalloc.get_traced_memory()[1] / 2**20 if args.tracemalloc
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(f"inputs: {args.count}  elapsed: {elapsed:.1f}s  ({args.count / elapsed:.0f}/s)")
    print(f"crashes: {crashes}  internal_error drops: {internal}")
    print(f"peak memory: {peak:.1f} MiB ({'tracemalloc' if args.tracemalloc else 'maxrss'})")
    print(f"cost per input: engine {engine_time / args.count * 1e6:.1f} us, "
          f"reference (header parse) {reference_time / args.count * 1e6:.1f} us, "
          f"ratio {engine_time / max(reference_time, 1e-9):.1f}x")
    print("dropped by reason (both engines, all pairs):")
    for reason, n in stats.most_common():
        print(f"  {reason:32} {n}")
    return 1 if crashes or internal else 0


if __name__ == "__main__":
    sys.exit(main())
