"""Helpers for tests over real trio-websocket connections on 127.0.0.1 (port 0).

Shared by ``test_websocket.py``, ``test_conformance.py`` and others. The network
is real, so the clock is too: every test that uses these needs a time limit.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import trio
import trio.testing
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    open_websocket,
    serve_websocket,
)

from trio_hub import CloseCode, Hub, open_hub


@asynccontextmanager
async def serving(**hub_settings: Any) -> AsyncIterator[tuple[Hub, int]]:
    """A hub behind trio-websocket's server; yields the hub and the bound port.

    A client's path names its topics (``/a,b``), and the whole path (query
    included) becomes its identity.
    """
    async with open_hub(**hub_settings) as hub, trio.open_nursery() as nursery:

        async def handler(request: WebSocketRequest) -> None:
            connection = await request.accept()
            path = (connection.path or "/").partition("?")[0]
            topics = [topic for topic in path.strip("/").split(",") if topic]
            await hub.serve_client(connection, topics=topics, identity=connection.path)

        server = await nursery.start(
            partial(serve_websocket, handler, "127.0.0.1", 0, ssl_context=None)
        )
        yield hub, server.port
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def open_client(port: int, path: str = "/") -> AsyncIterator[WebSocketConnection]:
    """A real trio-websocket client connection to the hub under test."""
    try:
        async with open_websocket("127.0.0.1", port, path, use_ssl=False) as connection:
            yield connection
    finally:
        # trio-websocket's client leaves its socket open when the server starts
        # the close handshake (its reader exits without closing the stream),
        # which shows up as a ResourceWarning. Close it once the client is done.
        await trio.aclose_forcefully(connection._stream)


async def send(connection: WebSocketConnection, type_: str, payload: object = None) -> None:
    """Send one wire-protocol envelope, as JSON text."""
    await connection.send_message(json.dumps({"type": type_, "payload": payload}))


async def receive(connection: WebSocketConnection) -> dict[str, Any]:
    """Receive one wire-protocol envelope (a JSON object)."""
    message = json.loads(await connection.get_message())
    assert isinstance(message, dict)
    return message


async def wait_for_clients(hub: Hub, count: int) -> None:
    """Wait until ``count`` clients are registered, without sleeping."""
    # The server registers a client after the handshake; wait for it by parking
    # on the hub's own progress.
    while len(hub) < count:
        await trio.lowlevel.checkpoint()
        await trio.testing.wait_all_tasks_blocked(cushion=0.001)


async def read_until_closed(
    connection: WebSocketConnection, key: str | None = None
) -> tuple[list[object], int]:
    """Read every message up to the close frame; return their payloads and the code."""
    payloads: list[object] = []
    while True:
        try:
            payload = json.loads(await connection.get_message())["payload"]
        except ConnectionClosed as closed:
            reason = closed.reason
            return payloads, reason.code if reason is not None else CloseCode.ABNORMAL
        payloads.append(payload if key is None else payload[key])
