"""Pick permessage-deflate's level and size threshold for trio_hub by measurement.

For JSON envelopes of 64 B to 16 KiB in three shapes (chat lines, price ticks,
records with random ids), it measures, per message:

* the frame size, plain and compressed, at zlib levels 1, 3, 6 and 9;
* the CPU to compress it once with the shared, reset-per-message compressor that
  trio_hub uses (``compress`` + ``flush(Z_FULL_FLUSH)``), and, for comparison, with
  a fresh ``zlib.compressobj`` per message (what a per-connection compressor
  without context takeover pays, per delivery);
* the CPU for a client to inflate it (a fresh ``decompressobj``).

"us/saved-KiB" is the compression CPU per KiB of wire saved: what a broadcast
pays once, and what a one-to-one message (an echo reply) pays in full.

Usage::

    python bench/bench_compression.py            # full run
    python bench/bench_compression.py --quick    # smoke test: few iterations

Exits with status 1 if a compressed message does not inflate back to itself.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import timeit
import zlib
from collections.abc import Callable

SIZES = (64, 100, 128, 192, 256, 512, 1024, 4096, 16384)
LEVELS = (1, 3, 6, 9)
TAIL = b"\x00\x00\xff\xff"

WORDS = ("hello", "world", "the", "price", "is", "up", "down", "ok", "see", "you", "soon")


def _envelope(payload: object) -> bytes:
    return json.dumps({"type": "broadcast", "payload": payload}, separators=(",", ":")).encode()


def _fit(make_item: Callable[[random.Random], object], size: int, seed: int) -> bytes:
    # Grow a list of items until the envelope reaches ``size``, then cut the last
    # item's text so the envelope is close to it (keeping it valid JSON is not
    # needed: zlib does not care, and sizes stay exact).
    rng = random.Random(seed)
    items: list[object] = [make_item(rng)]
    while len(_envelope(items)) < size:
        items.append(make_item(rng))
    return _envelope(items)[:size]


def _chat(rng: random.Random) -> object:
    return {
        "id": rng.randrange(10**9),
        "user": rng.choice(["alice", "bob", "carol", "dave", "erin"]),
        "text": " ".join(rng.choice(WORDS) for _ in range(rng.randrange(3, 12))),
        "ts": 1_764_650_000 + rng.randrange(10**5),
    }


def _tick(rng: random.Random) -> object:
    price = round(rng.uniform(100, 60_000), 2)
    return {
        "s": rng.choice(["BTC-USD", "ETH-USD", "SOL-USD", "ADA-USD"]),
        "bid": price,
        "ask": round(price * 1.0004, 2),
        "vol": rng.randrange(1, 10**6),
        "t": 1_764_650_000_000 + rng.randrange(10**6),
    }


def _record(rng: random.Random) -> object:
    return {
        "uuid": f"{rng.getrandbits(128):032x}",
        "token": f"{rng.getrandbits(192):048x}",
        "n": rng.random(),
    }


SHAPES: dict[str, Callable[[random.Random], object]] = {
    "chat": _chat,
    "tick": _tick,
    "record": _record,
}


def _frame_size(length: int) -> int:
    return length + (2 if length < 126 else 4 if length < 65536 else 10)


def _time(function: Callable[[], object], number: int, repeat: int) -> float:
    return min(timeit.repeat(function, number=number, repeat=repeat)) / number * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test, no timing claims")
    args = parser.parse_args()
    number, repeat = (20, 1) if args.quick else (400, 5)

    print(f"zlib {zlib.ZLIB_RUNTIME_VERSION}; times are the best of {repeat} x {number}")
    header = (
        f"{'shape':6} {'size':>6} {'plain':>6} "
        + " ".join(f"{'L' + str(level):>6}" for level in LEVELS)
        + " | "
        + " ".join(f"{'us L' + str(level):>7}" for level in LEVELS)
        + f" {'fresh1':>7} {'inflate':>7} {'us/KiB1':>8} {'us/KiB6':>8}"
    )
    print(header)
    ok = True
    ratios: dict[int, list[float]] = {level: [] for level in LEVELS}
    for shape, make_item in SHAPES.items():
        for size in SIZES:
            data = _fit(make_item, size, seed=size)
            plain = _frame_size(len(data))
            sizes: list[int] = []
            times: list[float] = []
            for level in LEVELS:
                shared = zlib.compressobj(level, zlib.DEFLATED, -15, 8)

                def compress(shared: zlib._Compress = shared, data: bytes = data) -> bytes:
                    return shared.compress(data) + shared.flush(zlib.Z_FULL_FLUSH)

                out = compress()[:-4]
                inflated = zlib.decompressobj(-15).decompress(out + TAIL)
                ok = ok and inflated == data
                sizes.append(_frame_size(len(out)))
                ratios[level].append(sizes[-1] / plain)
                times.append(_time(compress, number, repeat))
                if level == 1:
                    compressed_l1 = out

            def fresh(data: bytes = data) -> bytes:
                compressor = zlib.compressobj(1, zlib.DEFLATED, -15, 8)
                return compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)

            def inflate(compressed: bytes = compressed_l1) -> bytes:
                return zlib.decompressobj(-15).decompress(compressed + TAIL)

            fresh_us = _time(fresh, number, repeat)
            inflate_us = _time(inflate, number, repeat)
            saved = [max(plain - s, 1) / 1024 for s in sizes]
            print(
                f"{shape:6} {size:>6} {plain:>6} "
                + " ".join(f"{s:>6}" for s in sizes)
                + " | "
                + " ".join(f"{t:>7.2f}" for t in times)
                + f" {fresh_us:>7.2f} {inflate_us:>7.2f}"
                + f" {times[0] / saved[0]:>8.2f} {times[2] / saved[2]:>8.2f}"
            )
    print()
    for level in LEVELS:
        print(f"level {level}: median compressed/plain {statistics.median(ratios[level]):.3f}")
    if not ok:
        print("ERROR: a compressed message did not inflate back to itself", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
