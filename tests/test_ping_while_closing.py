"""A client that pings in a tight loop while the hub closes it never trips up the server.

The client-side form of this race is trio-websocket issue #184 (its fix, PR #198,
is not merged): a ping that arrives after an endpoint sent its close frame made
trio-websocket answer with a pong that wsproto refuses in ``LOCAL_CLOSING``, and the
``LocalProtocolError`` escaped the connection's task. Here the server is the
endpoint that closes: for each way the hub closes a client (shutdown 1001,
eviction 4000, keepalive timeout 4001) a raw client keeps pinging, and goes on
pinging for a while after the close frame has reached it, before it answers the
close. The served connection must not log an error, nor raise out of its task.

Both ways of serving are checked: :func:`serve_hub`, through its public
behaviour only (so that the test holds whatever engine runs its connections),
and a trio-websocket handler that hands its connection to
:meth:`Hub.serve_client`. Real sockets on 127.0.0.1, port 0;
each test has a time limit.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest
import trio
from trio_websocket import WebSocketRequest, serve_websocket

from trio_hub import CloseCode, Hub, HubServer, Message, open_hub, serve_hub

from .rawws import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, RawWebSocket

TIME_LIMIT = 20.0
# Pings the client still sends after the server's close frame has reached it:
# each one lands on a connection that has sent its close and waits for ours.
PINGS_AFTER_THE_CLOSE = 50
BIG = "x" * (64 * 1024)


class TightPinger:
    """A raw client that pings as fast as it can, and reads everything, until closed.

    It answers the server's pings only if ``answer_pings``; after the server's
    close frame it sends :data:`PINGS_AFTER_THE_CLOSE` more pings, then the
    close reply.
    """

    def __init__(self, raw: RawWebSocket, *, answer_pings: bool) -> None:
        self.raw = raw
        self.answer_pings = answer_pings
        self.pings_sent = 0
        self.pongs = 0
        self.close_code: int | None = None
        self.closed = trio.Event()
        self.pinging = trio.Event()
        # The pinger and the reader (pongs, late pings, the close) share the socket.
        self.send_lock = trio.StrictFIFOLock()

    async def send(self, opcode: int, payload: bytes) -> None:
        async with self.send_lock:
            await self.raw.send_frame(opcode, payload)

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.ping_until_closed)
            await self.read_until_closed()
            nursery.cancel_scope.cancel()
        # Both sides have sent their close: the server ends the TCP connection.
        while await self.raw.stream.receive_some(65536):
            pass

    async def ping_until_closed(self) -> None:
        while not self.closed.is_set():
            await self.send(OP_PING, self.pings_sent.to_bytes(4, "big"))
            self.pings_sent += 1
            self.pinging.set()

    async def read_until_closed(self) -> None:
        while True:
            opcode, payload = await self.raw.receive_frame()
            if opcode == OP_PONG:
                self.pongs += 1
            elif opcode == OP_PING:
                if self.answer_pings:
                    await self.send(OP_PONG, payload)
            elif opcode == OP_CLOSE:
                self.close_code = struct.unpack("!H", payload[:2])[0] if payload else 1005
                self.closed.set()
                break
            else:
                assert opcode == OP_TEXT, opcode
        # Pings after the close frame, as a client whose pinger has not yet
        # noticed it; then the close reply.
        for number in range(PINGS_AFTER_THE_CLOSE):
            await self.send(OP_PING, b"late" + number.to_bytes(4, "big"))
        await self.send(OP_CLOSE, struct.pack("!H", self.close_code))


@dataclass
class World:
    """A hub behind a server on 127.0.0.1: serve_hub, or a trio-websocket handler."""

    hub: Hub
    port: int
    stop: Callable[[], Awaitable[None]]
    handlers: Callable[[], int]  # connections still being served


@asynccontextmanager
async def behind_serve_hub(hub_settings: dict[str, Any]) -> AsyncIterator[World]:
    async with open_hub(**hub_settings) as hub, trio.open_nursery() as nursery:
        server: HubServer = await nursery.start(partial(serve_hub, hub, "127.0.0.1", 0))
        yield World(hub, server.port, server.aclose, lambda: server.connections)
        await server.aclose()


@asynccontextmanager
async def behind_serve_client(hub_settings: dict[str, Any]) -> AsyncIterator[World]:
    # The connection is trio-websocket's own, handed over with serve_client();
    # an error that escapes it ends serve_websocket, and this test with it.
    running = 0

    async def handler(request: WebSocketRequest) -> None:
        nonlocal running
        running += 1
        try:
            await hub.serve_client(await request.accept())
        finally:
            running -= 1

    async with open_hub(**hub_settings) as hub, trio.open_nursery() as nursery:
        server = await nursery.start(
            partial(serve_websocket, handler, "127.0.0.1", 0, ssl_context=None)
        )
        yield World(hub, server.port, hub.aclose, lambda: running)
        nursery.cancel_scope.cancel()


SERVERS = {"serve_hub": behind_serve_hub, "serve_client": behind_serve_client}


async def by_shutdown(world: World) -> None:
    await world.stop()


async def by_eviction(world: World) -> None:
    # The client does not read while this runs (no checkpoint): large
    # broadcasts fill the socket, then the queue, and it is evicted.
    (client,) = world.hub.clients
    while not client.closed:
        world.hub.broadcast(Message("big", BIG))
    await trio.lowlevel.checkpoint()


async def by_keepalive_timeout(world: World) -> None:
    # The client never answers pings: the keepalive closes it by itself.
    await trio.lowlevel.checkpoint()


Scenario = tuple[Callable[[World], Awaitable[None]], dict[str, Any], int]
SCENARIOS: dict[str, Scenario] = {
    "shutdown": (by_shutdown, {"ping_interval": None}, CloseCode.GOING_AWAY),
    "eviction": (by_eviction, {"ping_interval": None, "queue_size": 4}, CloseCode.SLOW_CLIENT),
    "keepalive timeout": (
        by_keepalive_timeout,
        {"ping_interval": 0.05, "pong_timeout": 0.1},
        CloseCode.KEEPALIVE_TIMEOUT,
    ),
}


@pytest.mark.parametrize("served_by", list(SERVERS))
@pytest.mark.parametrize("scenario", list(SCENARIOS))
async def test_pings_while_the_hub_closes_a_client_never_cause_an_error(
    scenario: str, served_by: str, caplog: pytest.LogCaptureFixture
) -> None:
    close_it, hub_settings, expected_code = SCENARIOS[scenario]
    caplog.set_level(logging.INFO)
    with trio.fail_after(TIME_LIMIT):
        async with SERVERS[served_by](hub_settings) as world:
            raw = await RawWebSocket.connect(world.port, "/")
            try:
                pinger = TightPinger(raw, answer_pings=scenario != "keepalive timeout")
                async with trio.open_nursery() as clients:
                    clients.start_soon(pinger.run)
                    await pinger.pinging.wait()
                    while len(world.hub) < 1:  # noqa: ASYNC110 (registration has no event)
                        await trio.sleep(0.001)
                    await close_it(world)
                # The server has read every late ping (its EOF came after them)
                # and the connection ended as a whole: nothing of it is left.
                while world.handlers():  # noqa: ASYNC110 (no event for this count)
                    await trio.sleep(0.001)
                statistics = world.hub.statistics()
            finally:
                await raw.aclose()

    assert pinger.close_code == expected_code
    assert pinger.pings_sent > 0
    assert statistics.errors == 0
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [(r.name, r.getMessage(), r.exc_info) for r in errors]
