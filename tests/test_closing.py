"""The closing handshake of served connections (design guarantee 10).

Every close that the hub starts reaches the peer as a close frame with its code:
the server sends it after every frame taken before it, half-closes (the peer reads
EOF right after the close frame, before it answers), and reads and discards until
the peer's close frame, EOF or ``close_timeout``, so that unread input never turns
into a reset that destroys the close frame. Nothing waits forever: a peer that
never reads, or never answers, is dropped within ``close_timeout`` /
``write_timeout``. Real sockets on 127.0.0.1, a time limit on every test.
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, Final

import pytest
import trio
import trio.testing
from websockets.exceptions import ConnectionClosedError
from websockets.sync.client import connect as sync_connect

from trio_hub import Client, CloseCode, Hub, HubServer, Message, open_hub, serve_hub

from .rawws import OP_BINARY, OP_CLOSE, OP_PING, OP_TEXT, RawWebSocket

LIMIT: Final = 15  # seconds, for each test
BIG: Final = "x" * 65536


async def boom(client: Client, message: Message) -> None:
    if message.type == "boom":
        raise RuntimeError("the handler failed")


@asynccontextmanager
async def serving(
    max_message_size: int = 1 << 20, **hub_settings: Any
) -> AsyncIterator[tuple[Hub, HubServer]]:
    hub_settings.setdefault("ping_interval", None)
    async with (
        open_hub(on_message=boom, **hub_settings) as hub,
        trio.open_nursery() as nursery,
    ):
        server = await nursery.start(
            partial(serve_hub, hub, "127.0.0.1", 0, max_message_size=max_message_size)
        )
        yield hub, server
        await server.aclose()


async def connected(hub: Hub, server: HubServer) -> tuple[RawWebSocket, Client]:
    """A raw client, and the hub's client for it."""
    before = set(hub.clients)
    raw = await RawWebSocket.connect(server.port)
    while not set(hub.clients) - before:  # noqa: ASYNC110 (registration has no event)
        await trio.sleep(0.001)
    (client,) = set(hub.clients) - before
    return raw, client


@asynccontextmanager
async def served_raw_client(
    **settings: Any,
) -> AsyncIterator[tuple[Hub, HubServer, RawWebSocket, Client]]:
    """:func:`serving`, with one raw client connected; it is closed on the way out."""
    async with serving(**settings) as (hub, server):
        raw, client = await connected(hub, server)
        try:
            yield hub, server, raw, client
        finally:
            await raw.aclose()


async def close_frame(raw: RawWebSocket) -> tuple[int, str]:
    """Skip to the server's close frame; return its code and reason."""
    while True:
        opcode, payload = await raw.receive_frame()
        if opcode == OP_CLOSE:
            (code,) = struct.unpack("!H", payload[:2])
            return int(code), payload[2:].decode()


async def assert_half_closed(raw: RawWebSocket) -> None:
    """The server shut its sending side right after the close frame: EOF, not a reset."""
    with pytest.raises(EOFError):
        await raw.read_exactly(1)


Trigger = Callable[[Hub, HubServer, RawWebSocket, Client], Awaitable[None]]


async def app_close(
    code: int, hub: Hub, server: HubServer, raw: RawWebSocket, client: Client
) -> None:
    client.close(code, "closed by the app")


async def shutdown(hub: Hub, server: HubServer, raw: RawWebSocket, client: Client) -> None:
    # Not awaited here: the shutdown waits for this client's close handshake.
    trio.lowlevel.spawn_system_task(server.aclose)


async def send(data: bytes, hub: Hub, server: HubServer, raw: RawWebSocket, client: Client) -> None:
    await raw.stream.send_all(data)


async def evict(hub: Hub, server: HubServer, raw: RawWebSocket, client: Client) -> None:
    # The raw client does not read: its socket fills, then its queue.
    number = 0
    while not client.closed:
        hub.broadcast(Message("n", {"n": number, "pad": BIG}))
        number += 1
        await trio.lowlevel.checkpoint()


async def stop_answering_pings(
    hub: Hub, server: HubServer, raw: RawWebSocket, client: Client
) -> None:
    pass  # the raw client reads nothing until the close frame, so no pong goes out


def frame(opcode: int, payload: bytes) -> bytes:
    assert len(payload) < 126
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + b"\x00\x00\x00\x00" + payload


CASES: Final[dict[str, tuple[int, Trigger, dict[str, Any]]]] = {
    "1000 app close": (1000, partial(app_close, 1000), {}),
    "1001 hub shutdown": (1001, shutdown, {}),
    "1002 protocol error": (1002, partial(send, frame(0x3, b"")), {}),
    "1003 binary frame": (1003, partial(send, frame(OP_BINARY, b"\x00")), {}),
    "1007 invalid UTF-8": (1007, partial(send, frame(OP_TEXT, b'{"type":"\xff"}')), {}),
    "1008 policy (app)": (1008, partial(app_close, 1008), {}),
    "1009 too big": (1009, partial(send, frame(OP_TEXT, b"x" * 100)), {"max_message_size": 50}),
    "1011 handler raised": (1011, partial(send, frame(OP_TEXT, b'{"type":"boom"}')), {}),
    "4000 evicted": (4000, evict, {"queue_size": 1}),
    "4001 keepalive timeout": (
        4001,
        stop_answering_pings,
        {"ping_interval": 0.05, "pong_timeout": 0.05},
    ),
    "4321 app code": (4321, partial(app_close, 4321), {}),
}


# The frame stream cannot be trusted after these: input is discarded until EOF.
DISCARDS_UNTIL_EOF: Final = {CloseCode.PROTOCOL_ERROR, CloseCode.MESSAGE_TOO_BIG}


@pytest.mark.parametrize("case", list(CASES))
async def test_every_close_the_hub_starts_reaches_the_peer_with_its_code(case: str) -> None:
    code, trigger, settings = CASES[case]
    with trio.fail_after(LIMIT):
        async with served_raw_client(**settings) as (hub, server, raw, client):
            await trigger(hub, server, raw, client)
            received, _ = await close_frame(raw)
            assert received == code
            await assert_half_closed(raw)
            # Our close reply still reaches the server, which then ends.
            await raw.stream.send_all(frame(OP_CLOSE, struct.pack("!H", code)))
            if code in DISCARDS_UNTIL_EOF:
                # As websockets does, the server parses nothing after a
                # broken frame; it ends at EOF, which real clients send
                # after the closing handshake.
                await raw.stream.send_eof()
            await client.wait_closed()
            assert client.close_code == code


async def test_an_8_mib_message_in_one_write_gets_1009_not_a_reset() -> None:
    size = 8 << 20
    # One frame, with a zero mask (valid, and the payload needs no masking).
    data = bytes([0x81, 0x80 | 127]) + struct.pack("!Q", size) + b"\x00" * 4 + b"x" * size
    with trio.fail_after(LIMIT):
        async with served_raw_client() as (_, _, raw, client):
            async with trio.open_nursery() as nursery:
                # The write completes: the server reads and discards it.
                nursery.start_soon(raw.stream.send_all, data)
                code, _ = await close_frame(raw)
                assert code == CloseCode.MESSAGE_TOO_BIG
                await assert_half_closed(raw)
            await raw.stream.send_eof()
            await client.wait_closed()
            assert client.close_code == CloseCode.MESSAGE_TOO_BIG


async def test_a_websockets_client_sending_8_mib_in_one_write_sees_1009() -> None:
    # The case from the issue, with a real client library (its sync client, in a
    # thread): it writes the whole frame with one sendall().
    with trio.fail_after(LIMIT):
        async with serving() as (_hub, server):

            def client() -> int | None:
                with sync_connect(server.url, max_size=None, compression=None) as ws:
                    ws.send("x" * (8 << 20))
                    try:
                        ws.recv(timeout=LIMIT)
                    except ConnectionClosedError as exc:
                        return exc.rcvd.code if exc.rcvd is not None else None
                return None

            assert await trio.to_thread.run_sync(client) == CloseCode.MESSAGE_TOO_BIG


async def test_a_peer_that_never_reads_is_dropped_within_the_timeouts() -> None:
    # Its socket is full, so the close frame cannot go out: close_timeout
    # bounds the wait, then the connection is dropped.
    with trio.fail_after(LIMIT):
        settings = {"queue_size": 1, "close_timeout": 0.2, "write_timeout": 0.5}
        async with served_raw_client(**settings) as (hub, server, raw, client):
            await evict(hub, server, raw, client)
            await client.wait_closed()
            assert client.close_code == CloseCode.SLOW_CLIENT
            assert len(hub) == 0


async def test_a_peer_that_never_answers_the_close_is_dropped_after_close_timeout() -> None:
    with trio.fail_after(LIMIT):
        async with served_raw_client(close_timeout=0.2) as (_, _, raw, client):
            client.close(CloseCode.POLICY_VIOLATION, "go")
            assert await close_frame(raw) == (CloseCode.POLICY_VIOLATION, "go")
            # It keeps its side open and says nothing.
            await client.wait_closed()
            await assert_half_closed(raw)


async def test_a_long_close_reason_is_cut_to_fit_a_control_frame() -> None:
    with trio.fail_after(LIMIT):
        async with served_raw_client() as (_, _, raw, client):
            client.close(4100, "é" * 100)  # 200 bytes of UTF-8
            code, reason = await close_frame(raw)
            assert code == 4100
            assert reason == "é" * 61  # 122 bytes: whole characters only


@pytest.mark.parametrize("when", ["after reading the close frame", "before reading it"])
async def test_a_ping_while_the_server_closes_is_harmless(
    when: str, caplog: pytest.LogCaptureFixture
) -> None:
    # trio-websocket issue #184: a ping that arrives while the server is
    # closing raised out of its reader. Here the engine takes pings in any
    # state; one that needs a pong after the half-close gets none, quietly.
    caplog.set_level(logging.DEBUG)
    with trio.fail_after(LIMIT):
        async with served_raw_client() as (_, _, raw, client):
            client.close(CloseCode.NORMAL)
            if when == "before reading it":
                await raw.stream.send_all(frame(OP_PING, b"early"))
            assert (await close_frame(raw))[0] == CloseCode.NORMAL
            await raw.stream.send_all(frame(OP_PING, b"late"))
            await raw.stream.send_all(frame(OP_CLOSE, struct.pack("!H", 1000)))
            await client.wait_closed()
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_pings_and_pongs_between_messages_keep_the_connection_open() -> None:
    with trio.fail_after(LIMIT):
        async with served_raw_client(ping_interval=0.01, pong_timeout=5) as (hub, _, raw, client):
            # Answer a few of the hub's pings, send some of our own.
            answered = pongs = 0
            while answered < 3 or pongs < 3:
                opcode, payload = await raw.receive_frame()
                if opcode == OP_PING:
                    await raw.stream.send_all(frame(0xA, payload))
                    await raw.stream.send_all(frame(OP_PING, b"mine"))
                    answered += 1
                else:
                    assert (opcode, payload) == (0xA, b"mine")
                    pongs += 1
            assert not client.closed
            hub.broadcast(Message("n", {"n": 1}))
            while True:
                opcode, payload = await raw.receive_frame()
                if opcode == OP_TEXT:
                    assert json.loads(payload)["payload"] == {"n": 1}
                    break


async def test_fragments_that_add_up_to_more_than_the_limit_get_1009() -> None:
    with trio.fail_after(LIMIT):
        async with served_raw_client(max_message_size=50) as (_, _, raw, client):
            first = bytes([OP_TEXT, 0x80 | 30]) + b"\x00" * 4 + b"x" * 30  # fin=0
            more = bytes([0x80, 0x80 | 30]) + b"\x00" * 4 + b"x" * 30  # continuation
            await raw.stream.send_all(first + more)
            assert (await close_frame(raw))[0] == CloseCode.MESSAGE_TOO_BIG
            await assert_half_closed(raw)
            await raw.stream.send_eof()
            await client.wait_closed()
            assert client.close_code == CloseCode.MESSAGE_TOO_BIG
