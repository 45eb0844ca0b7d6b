"""Resource limits: the connection limit, and half-open connections.

Past ``max_connections`` new clients get HTTP 503 and those connected are
unharmed; a slot that frees up is usable again. A peer that vanished without a
FIN (simulated by one that never reads and never answers a ping) is found by
keepalive and removed, with 4001, within ping_interval + pong_timeout +
close_timeout.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import trio
from trio_websocket import WebSocketConnection

from trio_hub import CloseCode, Message

from ..wsclient import READ_AHEAD, connect_websocket
from .conftest import Mode
from .support import raw_connect, running, wait_until

LIMIT = 8


async def http_status(port: int) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        await stream.send_all(
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        response = b""
        while data := await stream.receive_some(4096):
            response += data
        return response.partition(b"\r\n")[0]
    finally:
        await stream.aclose()


async def test_past_the_limit_new_clients_get_503_and_the_connected_are_unharmed(
    mode: Mode, figures: Callable[[str], None]
) -> None:
    refused = 0
    with trio.fail_after(mode.time_limit):
        async with (
            running({"ping_interval": None}, max_connections=LIMIT) as (hub, server),
            trio.open_nursery() as nursery,
        ):
            connections: list[WebSocketConnection] = [
                await connect_websocket(nursery, "127.0.0.1", server.port, f"/c{n}", use_ssl=False)
                for n in range(LIMIT)
            ]
            await wait_until(lambda: len(hub) == LIMIT)
            for round_number in range(mode.fault_rounds):
                # A crowd knocks at once: every one of them is refused.
                statuses: list[bytes] = []

                async def knock(into: list[bytes] = statuses) -> None:
                    into.append(await http_status(server.port))

                async with trio.open_nursery() as crowd:
                    for _ in range(10):
                        crowd.start_soon(knock)
                assert statuses == [b"HTTP/1.1 503 Service Unavailable"] * 10
                refused += len(statuses)
                # ... and those connected lose nothing.
                hub.broadcast(Message("n", round_number))
                for connection in connections:
                    message = json.loads(await connection.get_message())
                    assert message == {"type": "n", "payload": round_number}
                assert len(hub) == LIMIT
            # One leaves: its slot is free again.
            await connections[0].aclose()
            await wait_until(lambda: server.connections == LIMIT - 1)
            connections[0] = await connect_websocket(
                nursery, "127.0.0.1", server.port, "/again", use_ssl=False
            )
            await wait_until(lambda: len(hub) == LIMIT)
            for connection in connections:
                await connection.aclose()
                await trio.aclose_forcefully(connection._stream)
    figures(f"limits: {refused} refused with 503 at {LIMIT} connections, none harmed")


async def test_half_open_connections_are_found_by_keepalive_and_removed(
    mode: Mode, figures: Callable[[str], None]
) -> None:
    ping_interval, pong_timeout, close_timeout = 0.1, 0.2, 0.2
    count = 20
    with trio.fail_after(mode.time_limit):
        async with running(
            {
                "ping_interval": ping_interval,
                "pong_timeout": pong_timeout,
                "close_timeout": close_timeout,
            }
        ) as (hub, server):
            # Gone without a FIN: they never read, so they never answer a ping,
            # and the server's socket stays open as far as the kernel knows.
            silent = [await raw_connect(server.port, f"/silent{n}") for n in range(count)]
            async with trio.open_nursery() as nursery:
                healthy = await connect_websocket(
                    nursery, "127.0.0.1", server.port, "/healthy", message_queue_size=READ_AHEAD
                )
                await wait_until(lambda: len(hub) == count + 1)
                clients = [c for c in hub.clients if c.identity != "/healthy"]
                started = trio.current_time()
                await wait_until(lambda: len(hub) == 1)
                found_after = trio.current_time() - started
                # The healthy client answered its pings all along, and still hears.
                hub.broadcast(Message("n", 1))
                assert json.loads(await healthy.get_message())["payload"] == 1
                await wait_until(lambda: server.connections == 1)
                await healthy.aclose()
                await trio.aclose_forcefully(healthy._stream)
            for raw in silent:
                await raw.aclose()
            statistics = hub.statistics()
    figures(
        f"half-open: {count} silent peers removed {found_after:.2f}s after registration "
        f"(bound {ping_interval + pong_timeout + close_timeout:.1f}s + slack)"
    )
    assert all(client.close_code == CloseCode.KEEPALIVE_TIMEOUT for client in clients)
    assert statistics.keepalive_timeouts == count
    assert found_after < ping_interval + pong_timeout + close_timeout + 2.0
