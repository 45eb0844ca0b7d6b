"""Choosing the served connection's engine: wsproto's or websockets' sans-I/O protocol.

Usage::

    python bench/engines.py

For each engine, past the handshake (trio_hub does the handshake itself): the memory
that one idle engine object holds (tracemalloc, over 5,000 of them), and the CPU to
parse one small masked client text frame into a message event (best of 5 runs of
50,000 frames). Outbound frames do not go through the engine (trio_hub builds each
message's frame once, for every client), so these two figures are what the engine
costs a hub: memory per idle connection, and CPU per inbound message.
"""

from __future__ import annotations

import gc
import os
import struct
import time
import tracemalloc
from collections.abc import Callable

from websockets.protocol import State
from websockets.server import ServerProtocol
from wsproto.connection import Connection, ConnectionType

IDLE = 5000
FRAMES = 50_000


def masked_text(payload: bytes) -> bytes:
    mask = os.urandom(4)
    data = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
    return struct.pack("!BB", 0x81, 0x80 | len(payload)) + mask + data


def wsproto_engine() -> Connection:
    return Connection(ConnectionType.SERVER)


def websockets_engine() -> ServerProtocol:
    return ServerProtocol(max_size=1 << 20, state=State.OPEN)


def idle_bytes(make: Callable[[], object]) -> float:
    gc.collect()
    tracemalloc.start()
    start = tracemalloc.get_traced_memory()[0]
    engines = [make() for _ in range(IDLE)]
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - start
    tracemalloc.stop()
    del engines
    return held / IDLE


def wsproto_parse(frame: bytes) -> float:
    engine = wsproto_engine()
    started = time.perf_counter()
    for _ in range(FRAMES):
        engine.receive_data(frame)
        for _event in engine.events():
            pass
    return (time.perf_counter() - started) / FRAMES


def websockets_parse(frame: bytes) -> float:
    engine = websockets_engine()
    started = time.perf_counter()
    for _ in range(FRAMES):
        engine.receive_data(frame)
        engine.events_received()
        engine.data_to_send()
    return (time.perf_counter() - started) / FRAMES


def main() -> None:
    frame = masked_text(b'{"type":"broadcast","payload":"a message of about 60 bytes.."}')
    print(f"{'engine':12} {'B per idle engine':>18} {'us per inbound frame':>21}")
    for name, make, parse in (
        ("wsproto", wsproto_engine, wsproto_parse),
        ("websockets", websockets_engine, websockets_parse),
    ):
        per_frame = min(parse(frame) for _ in range(5))
        print(f"{name:12} {idle_bytes(make):18.0f} {per_frame * 1e6:21.2f}")


if __name__ == "__main__":
    main()
