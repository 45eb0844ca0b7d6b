"""Shared pieces of the reliability suite: a real server on loopback, and abuse tools.

Everything runs over 127.0.0.1 with port 0, against :func:`trio_hub.serve_hub`,
with real trio-websocket clients (from ``tests/wsclient.py``, which works around
trio-websocket issue #184) and the raw client of ``tests/rawws.py``.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import psutil
import pytest
import trio

from trio_hub import HandshakeRequest, Hub, HubServer, open_hub, serve_hub

from ..rawws import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, RawWebSocket
from ..test_shutdown import task_count as task_count

__all__ = [
    "identity_is_path",
    "incidents",
    "raw_connect",
    "read_until_close",
    "reset",
    "rss",
    "running",
    "task_count",
    "wait_until",
    "wire",
]


async def identity_is_path(request: HandshakeRequest) -> object:
    """An ``authenticate`` hook that names each client by its path, so tests can find it."""
    await trio.lowlevel.checkpoint()
    return request.path


@asynccontextmanager
async def running(
    hub_settings: dict[str, Any] | None = None, **server_settings: Any
) -> AsyncIterator[tuple[Hub, HubServer]]:
    """A hub behind serve_hub on 127.0.0.1, port 0; stopped (drain, 1001) on the way out."""
    server_settings.setdefault("authenticate", identity_is_path)
    async with open_hub(**(hub_settings or {})) as hub, trio.open_nursery() as nursery:
        server: HubServer = await nursery.start(
            partial(serve_hub, hub, "127.0.0.1", 0, **server_settings)
        )
        yield hub, server
        await server.aclose()


def reset(stream: trio.SocketStream) -> None:
    """Make the next close of ``stream`` an abrupt TCP reset (RST), not a FIN."""
    # SO_LINGER with a zero timeout: close() discards unsent data and sends RST,
    # as a phone that loses its radio mid-connection looks to the server.
    stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Wait until ``predicate()`` holds; the caller's fail_after bounds the wait.

    It polls, rather than waiting for the program to go idle: these scenarios
    keep timers running (broadcasters, keepalive pings), so that
    ``wait_all_tasks_blocked`` with a cushion might never return.
    """
    while not predicate():  # noqa: ASYNC110 (hub and server state have no event to wait on)
        await trio.sleep(0.001)


def rss() -> int:
    """This process's resident set size, in bytes, after a full garbage collection."""
    gc.collect()
    return int(psutil.Process().memory_info().rss)


def wire(message_type: str, payload: object) -> str:
    """One wire-protocol envelope, as text."""
    return json.dumps({"type": message_type, "payload": payload})


async def raw_connect(port: int, path: str) -> RawWebSocket:
    """A raw client past the handshake."""
    return await RawWebSocket.connect(port, path)


async def read_until_close(
    raw: RawWebSocket, on_message: Callable[[int], Awaitable[None]] | None = None
) -> tuple[list[int], int]:
    """Read a raw client's frames up to the close frame, answering pings and the close.

    Every text frame must be a message whose payload has a number ``n``; return
    those numbers and the close code. ``on_message`` sees each number as it
    arrives.
    """
    numbers: list[int] = []
    while True:
        opcode, payload = await raw.receive_frame()
        if opcode == OP_TEXT:
            number = json.loads(payload)["payload"]["n"]
            assert isinstance(number, int)
            numbers.append(number)
            if on_message is not None:
                await on_message(number)
        elif opcode == OP_PING:
            await raw.send_frame(OP_PONG, payload)
        elif opcode == OP_CLOSE:
            code = int(struct.unpack("!H", payload[:2])[0]) if len(payload) >= 2 else 1005
            # Answer the close, as a well-behaved client does, so that the
            # server does not wait for close_timeout.
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await raw.send_frame(OP_CLOSE, payload[:2])
            return numbers, code
        else:
            raise AssertionError(f"unexpected opcode {opcode:#x}")


def incidents(caplog: pytest.LogCaptureFixture, level: int = logging.WARNING) -> list[str]:
    """The messages that trio_hub logged at ``level`` or above."""
    return [
        record.getMessage()
        for record in caplog.records
        if record.name.startswith("trio_hub") and record.levelno >= level
    ]
