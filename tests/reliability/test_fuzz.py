"""Fuzzing over the wire: Hypothesis drives many raw connections at once.

Each example starts a real server and runs several raw connections concurrently,
each with its own script of frames: valid and invalid envelopes, fragmented
messages (with a ping between fragments), pings with odd payloads, and one final
bad input that ends the connection (a binary frame, invalid UTF-8, an oversized
control frame, a frame over the size limit, a frame with a declared length far
over it, or raw bytes that are no frame at all). Other connections send raw bytes
instead of a handshake. A healthy trio-websocket client reads broadcasts all the
while. The server must never crash, each input must get its documented answer,
and the healthy client must lose nothing.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trio_websocket import ConnectionClosed

from trio_hub import CloseCode, HubServer, Message, protocol_handler

from ..rawws import OP_BINARY, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, RawWebSocket, client_frame
from ..wsclient import connect_websocket
from .conftest import Mode
from .support import running, wait_until

MAX_MESSAGE_SIZE = 4096
OP_CONTINUATION = 0x0
PROTOCOL_ERROR = 1002  # RFC 6455: wsproto's answer to frames that break the framing

KNOWN_TYPES = {"echo", "broadcast", "subscribe", "unsubscribe", "publish"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)

# Steps that leave the connection open, each with the answer it must get.
steps = st.one_of(
    st.tuples(st.just("echo"), json_values),
    st.tuples(st.just("invalid_json"), st.text(max_size=30).map(lambda text: "{" + text + "\x00")),
    st.tuples(
        st.just("invalid_envelope"),
        st.one_of(
            st.integers(), st.lists(st.integers(), max_size=3), st.just({}), st.just({"payload": 1})
        ).map(json.dumps),
    ),
    st.tuples(
        st.just("unknown_type"),
        st.from_regex(r"\A[a-z]{1,12}\Z").filter(lambda t: t not in KNOWN_TYPES),
    ),
    st.tuples(st.just("fragmented"), st.tuples(json_values, st.integers(2, 5), st.booleans())),
    st.tuples(st.just("ping"), st.binary(max_size=125)),
)

# The last step of some connections: a bad input, and the close code it gets.
endings = st.one_of(
    st.tuples(st.just("binary"), st.binary(max_size=200)),
    st.tuples(
        st.just("bad_utf8"),
        st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"]),
    ),
    st.tuples(st.just("big_ping"), st.binary(min_size=126, max_size=300)),
    st.tuples(st.just("oversized"), st.integers(MAX_MESSAGE_SIZE + 1, 4 * MAX_MESSAGE_SIZE)),
    st.tuples(st.just("declared_huge"), st.integers(1 << 20, (1 << 63) - 1)),
    st.tuples(st.just("reserved_bits"), st.integers(1, 7)),
    st.tuples(st.just("reserved_opcode"), st.sampled_from([0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xF])),
    st.tuples(st.just("unmasked"), st.binary(max_size=50)),
    st.none(),
)

scripts = st.tuples(st.lists(steps, max_size=6), endings)

CLOSE_CODES = {
    "binary": CloseCode.UNSUPPORTED_DATA,
    "bad_utf8": CloseCode.INVALID_PAYLOAD,
    "big_ping": PROTOCOL_ERROR,
    "oversized": CloseCode.MESSAGE_TOO_BIG,
    "declared_huge": CloseCode.MESSAGE_TOO_BIG,
    "reserved_bits": PROTOCOL_ERROR,
    "reserved_opcode": PROTOCOL_ERROR,
    "unmasked": PROTOCOL_ERROR,
}


@dataclass
class Reply:
    """The next answer a raw connection waits for, skipping broadcasts."""

    opcode: int
    payload: bytes


async def next_reply(raw: RawWebSocket) -> Reply:
    while True:
        opcode, payload = await raw.receive_frame()
        if opcode == OP_TEXT and json.loads(payload)["type"] == "n":
            continue  # a broadcast: every connection gets them
        return Reply(opcode, payload)


async def expect_message(raw: RawWebSocket, expected: dict[str, Any]) -> None:
    reply = await next_reply(raw)
    assert reply.opcode == OP_TEXT, reply
    assert json.loads(reply.payload) == expected


async def expect_error(raw: RawWebSocket, code: str) -> None:
    reply = await next_reply(raw)
    assert reply.opcode == OP_TEXT, reply
    message = json.loads(reply.payload)
    assert message["type"] == "error", message
    assert message["payload"]["code"] == code, message


async def run_step(raw: RawWebSocket, kind: str, value: Any) -> None:
    if kind == "echo":
        await raw.send_frame(OP_TEXT, json.dumps({"type": "echo", "payload": value}).encode())
        await expect_message(raw, {"type": "echo", "payload": value})
    elif kind in ("invalid_json", "invalid_envelope"):
        await raw.send_frame(OP_TEXT, value.encode())
        await expect_error(raw, kind)
    elif kind == "unknown_type":
        await raw.send_frame(OP_TEXT, json.dumps({"type": value, "payload": None}).encode())
        await expect_error(raw, "unknown_type")
    elif kind == "fragmented":
        payload, parts, ping_between = value
        data = json.dumps({"type": "echo", "payload": payload}).encode()
        size = -(-len(data) // parts)
        chunks = [data[start : start + size] for start in range(0, len(data), size)]
        for index, chunk in enumerate(chunks):
            opcode = OP_TEXT if index == 0 else OP_CONTINUATION
            await raw.send_frame(opcode, chunk, fin=index == len(chunks) - 1)
            if ping_between and index == 0 and len(chunks) > 1:
                # Control frames may come between fragments (RFC 6455, 5.4).
                await raw.send_frame(OP_PING, b"between")
                assert await next_reply(raw) == Reply(OP_PONG, b"between")
        await expect_message(raw, {"type": "echo", "payload": payload})
    elif kind == "ping":
        await raw.send_frame(OP_PING, value)
        assert await next_reply(raw) == Reply(OP_PONG, value)
    else:
        raise AssertionError(kind)


def ending_bytes(kind: str, value: Any) -> bytes:
    if kind == "binary":
        return client_frame(OP_BINARY, value)
    if kind == "bad_utf8":
        return client_frame(OP_TEXT, b'{"type":"echo","payload":"' + value + b'"}')
    if kind == "big_ping":
        return client_frame(OP_PING, value)
    if kind == "oversized":
        return client_frame(OP_TEXT, b"a" * value)
    if kind == "declared_huge":
        # A 64-bit length far over the limit, then just enough payload to
        # cross it (zero mask key: the bytes go as they are).
        header = struct.pack("!BBQ", 0x81, 0x80 | 127, value) + b"\x00\x00\x00\x00"
        return header + b"a" * (MAX_MESSAGE_SIZE + 1)
    if kind == "reserved_bits":
        frame = bytearray(client_frame(OP_TEXT, b"{}"))
        frame[0] |= value << 4
        return bytes(frame)
    if kind == "reserved_opcode":
        return client_frame(value, b"")
    if kind == "unmasked":
        unmasked: bytes = struct.pack("!BB", 0x81, len(value)) + value
        return unmasked
    raise AssertionError(kind)


async def run_script(
    port: int, script: tuple[list[tuple[str, Any]], tuple[str, Any] | None]
) -> None:
    steps_to_run, ending = script
    raw = await RawWebSocket.connect(port, "/fuzz")
    try:
        for kind, value in steps_to_run:
            await run_step(raw, kind, value)
        if ending is None:
            await raw.send_frame(OP_CLOSE, struct.pack("!H", CloseCode.NORMAL))
            reply = await next_reply(raw)
            assert reply.opcode == OP_CLOSE
            return
        kind, value = ending
        await raw.stream.send_all(ending_bytes(kind, value))
        reply = await next_reply(raw)
        assert reply.opcode == OP_CLOSE, (kind, reply)
        code = struct.unpack("!H", reply.payload[:2])[0]
        assert code == CLOSE_CODES[kind], (kind, code)
    finally:
        await raw.aclose()


async def before_the_handshake(port: int, garbage: bytes) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        await stream.send_all(garbage + b"\r\n\r\n")
        response = b""
        while data := await stream.receive_some(65536):
            response += data
        assert response.startswith(b"HTTP/1.1 400 Bad Request\r\n"), response[:80]
    finally:
        await stream.aclose()


async def keeper(server: HubServer, count: int, received: list[int], ready: trio.Event) -> None:
    async with trio.open_nursery() as nursery:
        connection = await connect_websocket(
            nursery, "127.0.0.1", server.port, "/keeper", use_ssl=False
        )
        ready.set()
        try:
            while len(received) < count:
                message = json.loads(await connection.get_message())
                assert message["type"] == "n"
                received.append(message["payload"])
            await connection.aclose()
        except ConnectionClosed:
            pass
        finally:
            await trio.aclose_forcefully(connection._stream)


async def fuzz_once(
    connections: list[tuple[list[tuple[str, Any]], tuple[str, Any] | None]],
    garbage: list[bytes],
    *,
    time_limit: float,
) -> tuple[int, int]:
    broadcasts = 40
    received: list[int] = []
    with trio.fail_after(time_limit):
        async with running(
            {"on_message": protocol_handler, "ping_interval": None, "close_timeout": 1.0},
            max_message_size=MAX_MESSAGE_SIZE,
            handshake_timeout=5.0,
        ) as (hub, server):
            ready = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(keeper, server, broadcasts, received, ready)
                await ready.wait()
                await wait_until(lambda: len(hub) == 1)
                async with trio.open_nursery() as attackers:
                    for script in connections:
                        attackers.start_soon(run_script, server.port, script)
                    for data in garbage:
                        attackers.start_soon(before_the_handshake, server.port, data)
                    for number in range(broadcasts):
                        hub.broadcast(Message("n", number))
                        await trio.lowlevel.checkpoint()
            # Every attacker is gone; the server still serves.
            await wait_until(lambda: len(hub) == 0 and server.connections == 0)
            statistics = hub.statistics()
    assert received == list(range(broadcasts))
    assert statistics.errors == 0
    return statistics.registrations, broadcasts


def test_the_server_answers_every_input_as_documented_and_never_crashes(
    mode: Mode, figures: Callable[[str], None]
) -> None:
    examples = 0
    registrations = 0

    @settings(
        max_examples=mode.fuzz_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )
    @given(
        connections=st.lists(scripts, min_size=1, max_size=mode.fuzz_connections),
        garbage=st.lists(st.binary(min_size=1, max_size=200), max_size=3),
    )
    def run(
        connections: list[tuple[list[tuple[str, Any]], tuple[str, Any] | None]],
        garbage: list[bytes],
    ) -> None:
        nonlocal examples, registrations
        examples += 1
        registered, _ = trio.run(
            lambda: fuzz_once(connections, garbage, time_limit=mode.time_limit)
        )
        registrations += registered

    run()
    figures(
        f"fuzz: {examples} examples, {registrations} WebSocket connections, "
        "every input answered as documented, healthy client lost nothing"
    )
