"""Compare JSON codecs for trio_hub's hot path: stdlib ``json``, ``orjson``, ``msgspec.json``.

The hub decodes every incoming text frame and encodes every outgoing envelope, so this
measures exactly those operations on envelopes shaped like real traffic, and then checks the
edge cases where the codecs disagree (NaN, big ints, lone surrogates, ...), because a faster
codec that silently changes data would break the design rule "nothing is silently turned
into null".

Usage::

    python bench/bench_codec.py           # full run: 7 repeats, ~0.2 s each
    python bench/bench_codec.py --quick   # CI smoke test: a few hundred iterations

The script exits with status 1 if the codecs disagree on the round trip of the benchmark
messages, so the smoke test can fail.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import timeit
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Final, TypeVar

import msgspec
import orjson

ArgT = TypeVar("ArgT")

Encoder = Callable[[object], bytes]
TextEncoder = Callable[[object], str]
Decoder = Callable[[bytes | str], object]


def _stdlib_dumps(obj: object) -> str:
    # The settings the hub would need with stdlib json: compact output, raw UTF-8 rather than
    # \uXXXX escapes, and an error (not the non-standard `NaN` token) for non-finite floats.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _stdlib_encode(obj: object) -> bytes:
    return _stdlib_dumps(obj).encode()


def _stdlib_decode(data: bytes | str) -> object:
    result: object = json.loads(data)
    return result


def _orjson_encode(obj: object) -> bytes:
    return orjson.dumps(obj)


def _orjson_dumps(obj: object) -> str:
    # trio-websocket sends `bytes` as a *binary* frame, so a text frame needs a str.
    return orjson.dumps(obj).decode()


def _orjson_decode(data: bytes | str) -> object:
    result: object = orjson.loads(data)
    return result


# msgspec is fastest with long-lived Encoder/Decoder objects; the hub would keep one each.
_MSGSPEC_ENCODER: Final = msgspec.json.Encoder()
_MSGSPEC_DECODER: Final = msgspec.json.Decoder()


def _msgspec_encode(obj: object) -> bytes:
    return _MSGSPEC_ENCODER.encode(obj)


def _msgspec_dumps(obj: object) -> str:
    return _MSGSPEC_ENCODER.encode(obj).decode()


def _msgspec_decode(data: bytes | str) -> object:
    result: object = _MSGSPEC_DECODER.decode(data)
    return result


@dataclass(frozen=True)
class Codec:
    """One JSON implementation, wrapped to the three calls the hub makes."""

    name: str
    encode: Encoder
    dumps: TextEncoder
    decode: Decoder


CODECS: Final = (
    Codec("json", _stdlib_encode, _stdlib_dumps, _stdlib_decode),
    Codec("orjson", _orjson_encode, _orjson_dumps, _orjson_decode),
    Codec("msgspec", _msgspec_encode, _msgspec_dumps, _msgspec_decode),
)


class RawEnvelope(msgspec.Struct):
    """Envelope whose payload stays undecoded bytes (a possible zero-parse broadcast path)."""

    type: str
    payload: msgspec.Raw


_RAW_DECODER: Final = msgspec.json.Decoder(RawEnvelope)


def _raw_rebroadcast(data: bytes | str) -> bytes:
    # What a broadcast costs if the hub never materialises the payload: msgspec still checks
    # that the payload is well-formed JSON while skipping over it.
    incoming = _RAW_DECODER.decode(data)
    return _MSGSPEC_ENCODER.encode(RawEnvelope("broadcast", incoming.payload))


def _full_rebroadcast(codec: Codec) -> Decoder:
    def rebroadcast(data: bytes | str) -> object:
        incoming = codec.decode(data)
        assert isinstance(incoming, dict)
        return codec.dumps({"type": "broadcast", "payload": incoming["payload"]})

    return rebroadcast


def small_payload() -> dict[str, object]:
    """A ~250-byte payload: a chat-like message with strings, ints and a short list."""
    return {
        "id": 184467,
        "room": "general",
        "author": {"name": "Zoë Müller", "id": 4021, "roles": ["admin", "mod"]},
        "text": "Hello everyone, the deploy finished — all green ✅ see the dashboard",
        "sentAt": 1718031234567,
        "tags": ["deploy", "ci", "prod"],
        "seq": [1, 2, 3, 5, 8, 13],
        "edited": False,
        "replyTo": None,
    }


def large_payload() -> dict[str, object]:
    """A ~4 KiB payload: a page of records, like a history or presence snapshot."""
    return {
        "room": "general",
        "cursor": "b3BhcXVlLWN1cnNvci0xMjM0NTY3ODk",
        "items": [
            {
                "id": 100000 + index,
                "author": f"user-{index:03d}",
                "text": f"message number {index} with a little unicode: café ½ — ok",
                "ts": 1718031234567 + index * 1000,
                "reactions": [index % 7, index % 3],
            }
            for index in range(26)
        ],
    }


def envelope(payload: object) -> dict[str, object]:
    """Wrap a payload in the hub's broadcast envelope."""
    return {"type": "broadcast", "payload": payload}


def bind(func: Callable[[ArgT], object], arg: ArgT) -> partial[object]:
    """Pair a function with its one argument for :func:`time_ns_per_op` (type-checked)."""
    return partial(func, arg)


def time_ns_per_op(call: partial[object], *, quick: bool) -> float:
    """Return the median time of one call in nanoseconds.

    Args:
        call: ``functools.partial(func, arg)``: the function to time and its one argument.
        quick: Use a fixed, small number of loops so CI finishes in seconds.

    Returns:
        Median over the repeats of (repeat time / loops), in ns.
    """
    # Unpack the partial and time the statement `func(arg)` so that the overhead is exactly
    # one call, the same for every codec, and the ratios are not diluted by a wrapper.
    (arg,) = call.args
    timer = timeit.Timer("func(arg)", globals={"func": call.func, "arg": arg})
    if quick:
        repeats, loops = 3, 200
    else:
        repeats = 7
        loops, elapsed = timer.autorange()
        # autorange stops at >= 0.2 s; scale so that each repeat takes ~0.2 s.
        loops = max(1, int(loops * 0.2 / max(elapsed, 1e-9)))
    times = timer.repeat(repeat=repeats, number=loops)
    return statistics.median(times) / loops * 1e9


def run_benchmarks(*, quick: bool) -> list[tuple[str, list[float]]]:
    """Time every operation for every codec.

    Args:
        quick: Passed to :func:`time_ns_per_op`.

    Returns:
        One ``(operation label, [ns per codec in CODECS order])`` row per operation.
    """
    small = envelope(small_payload())
    large = envelope(large_payload())
    small_bytes = _stdlib_encode(small)
    large_bytes = _stdlib_encode(large)
    small_text = small_bytes.decode()
    large_text = large_bytes.decode()

    operations: list[tuple[str, Callable[[Codec], partial[object]]]] = [
        (f"encode small -> bytes ({len(small_bytes)} B)", lambda c: bind(c.encode, small)),
        ("encode small -> str", lambda c: bind(c.dumps, small)),
        ("decode small from str", lambda c: bind(c.decode, small_text)),
        ("decode small from bytes", lambda c: bind(c.decode, small_bytes)),
        (f"encode large -> str ({len(large_bytes)} B)", lambda c: bind(c.dumps, large)),
        ("decode large from str", lambda c: bind(c.decode, large_text)),
        ("decode large from bytes", lambda c: bind(c.decode, large_bytes)),
        ("rebroadcast small (str in/out)", lambda c: bind(_full_rebroadcast(c), small_text)),
        ("rebroadcast large (str in/out)", lambda c: bind(_full_rebroadcast(c), large_text)),
    ]
    rows: list[tuple[str, list[float]]] = [
        (label, [time_ns_per_op(pick(codec), quick=quick) for codec in CODECS])
        for label, pick in operations
    ]

    # Not a codec swap but a design option, shown so the lead can judge whether it is worth it.
    stdlib_rebroadcast = {label: timings[0] for label, timings in rows}
    for size, text in (("small", small_text), ("large", large_text)):
        raw_ns = time_ns_per_op(bind(_raw_rebroadcast, text), quick=quick)
        baseline = stdlib_rebroadcast[f"rebroadcast {size} (str in/out)"]
        rows.append((f"rebroadcast {size}, msgspec.Raw payload*", [baseline, float("nan"), raw_ns]))
    return rows


def print_timings(rows: list[tuple[str, list[float]]]) -> None:
    """Print ns/op and the ratio to stdlib json (lower is faster)."""
    label_width = max(len(label) for label, _ in rows)
    header = f"{'operation':<{label_width}}" + "".join(f"  {c.name + ' ns':>11}" for c in CODECS)
    header += "".join(f"  {c.name + ' x':>10}" for c in CODECS[1:])
    print(header)
    print("-" * len(header))
    for label, timings in rows:
        baseline = timings[0]
        cells = "".join("  " + (f"{ns:>11.0f}" if ns == ns else f"{'-':>11}") for ns in timings)
        ratios = "".join(
            "  " + (f"{ns / baseline:>10.2f}" if ns == ns else f"{'-':>10}") for ns in timings[1:]
        )
        print(f"{label:<{label_width}}{cells}{ratios}")
    print("x = time relative to stdlib json (0.25 = 4 times faster).")
    print("* json column repeats stdlib's full rebroadcast; the msgspec column decodes the")
    print("  envelope into a Struct with payload: msgspec.Raw and splices the raw payload back.")


def _outcome(func: Callable[[], object]) -> str:
    try:
        value = func()
    except RecursionError:
        # Not a ValueError: a handler catching only decode errors would let this escape.
        return "RAISES RecursionError"
    except Exception as error:  # each codec raises its own types; report whichever it is
        return f"raises {type(error).__name__}"
    text = repr(value)
    return "ok " + (text if len(text) <= 24 else text[:21] + "...")


def behaviour_cases() -> list[tuple[str, Callable[[Codec], object]]]:
    """Edge cases where the codecs are known or suspected to differ."""
    deep = "[" * 100_000 + "]" * 100_000
    return [
        ("encode NaN", lambda c: c.encode(float("nan"))),
        ("encode Infinity", lambda c: c.encode(float("inf"))),
        ("encode {1: 'a'} (int key)", lambda c: c.encode({1: "a"})),
        ("encode {None: 1} key", lambda c: c.encode({None: 1})),
        ("encode {(1, 2): 1} key", lambda c: c.encode({(1, 2): 1})),
        ("encode set {1}", lambda c: c.encode({1})),
        ("encode b'x' (bytes)", lambda c: c.encode(b"x")),
        ("encode object()", lambda c: c.encode(object())),
        ("encode (1, 2) tuple", lambda c: c.encode((1, 2))),
        ("encode 2**64 - 1", lambda c: c.encode(2**64 - 1)),
        ("encode 2**64", lambda c: c.encode(2**64)),
        ("encode -2**63 - 1", lambda c: c.encode(-(2**63) - 1)),
        ("encode 1e16", lambda c: c.encode(1e16)),
        ("encode lone surrogate", lambda c: c.encode("\ud800")),
        ("decode 'NaN'", lambda c: c.decode("NaN")),
        ("decode '[Infinity]'", lambda c: c.decode("[Infinity]")),
        ("decode 18446744073709551616", lambda c: c.decode("18446744073709551616")),
        ("decode 1 followed by 400 zeros", lambda c: c.decode("1" + "0" * 400)),
        ('decode "\\ud800" (escaped)', lambda c: c.decode('"\\ud800"')),
        ("decode invalid UTF-8 bytes", lambda c: c.decode(b'"\xff"')),
        ("decode UTF-8 BOM + {} bytes", lambda c: c.decode(b"\xef\xbb\xbf{}")),
        ('decode {"a":1,"a":2}', lambda c: c.decode('{"a":1,"a":2}')),
        ("decode 100k nested [", lambda c: c.decode(deep)),
    ]


def print_behaviour() -> None:
    """Print what each codec does with each edge case."""
    cases = behaviour_cases()
    label_width = max(len(label) for label, _ in cases)
    cell_width = 28
    header = f"{'case':<{label_width}}" + "".join(f"  {c.name:<{cell_width}}" for c in CODECS)
    print(header)
    print("-" * len(header))
    for label, case in cases:
        cells = [_outcome(partial(case, codec)) for codec in CODECS]
        print(f"{label:<{label_width}}" + "".join(f"  {cell:<{cell_width}}" for cell in cells))


def check_round_trip() -> bool:
    """Check that all codecs agree on the benchmark messages, so the timings compare like for like.

    Returns:
        True if every codec decodes every other codec's output to the same value.
    """
    agreed = True
    for message in (envelope(small_payload()), envelope(large_payload())):
        outputs = {codec.name: codec.encode(message) for codec in CODECS}
        for codec in CODECS:
            for source, data in outputs.items():
                if codec.decode(data) != message:
                    print(f"MISMATCH: {codec.name} decoding {source} output", file=sys.stderr)
                    agreed = False
        if len(set(outputs.values())) != 1:
            # Not an error (key order and separators are all the same here), but worth knowing.
            print("note: encoders produced different bytes for the same message")
    return agreed


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and the behaviour checks.

    Args:
        argv: Command-line arguments (defaults to ``sys.argv[1:]``).

    Returns:
        Process exit status: 0, or 1 if the codecs disagree on a round trip.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="few iterations (CI smoke test)")
    args = parser.parse_args(argv)

    print(
        f"Python {sys.version.split()[0]}, orjson {orjson.__version__}, "
        f"msgspec {msgspec.__version__}"
    )
    if not check_round_trip():
        return 1
    print()
    print_timings(run_benchmarks(quick=args.quick))
    print()
    print_behaviour()
    return 0


if __name__ == "__main__":
    sys.exit(main())
