"""serve_hub(): handshake policy, plain HTTP, limits, bad input, fast path, stop order.

Real sockets on 127.0.0.1, port 0; each test has a time limit.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket

from trio_hub import (
    CloseCode,
    HandshakeRejection,
    HandshakeRequest,
    Hub,
    HubServer,
    Message,
    open_hub,
    serve_hub,
)

from .rawws import OP_BINARY, OP_TEXT, RawWebSocket

LIMIT = 20


@asynccontextmanager
async def running(
    hub_settings: dict[str, Any] | None = None, **server_settings: Any
) -> AsyncIterator[tuple[Hub, HubServer]]:
    async with open_hub(**(hub_settings or {})) as hub, trio.open_nursery() as nursery:
        server = await nursery.start(partial(serve_hub, hub, "127.0.0.1", 0, **server_settings))
        yield hub, server
        await server.aclose()


@asynccontextmanager
async def client(
    port: int, path: str = "/", headers: list[tuple[bytes, bytes]] | None = None
) -> AsyncIterator[WebSocketConnection]:
    connection: WebSocketConnection | None = None
    try:
        async with open_websocket(
            "127.0.0.1", port, path, use_ssl=False, extra_headers=headers
        ) as connection:
            yield connection
    finally:
        if connection is not None:
            # trio-websocket's client does not close its socket when the server
            # starts the close handshake; close it here (see test_websocket.py).
            await trio.aclose_forcefully(connection._stream)


async def http(port: int, request: bytes) -> bytes:
    """Send raw bytes, return everything the server answers until it closes."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        await stream.send_all(request)
        response = b""
        while data := await stream.receive_some(65536):
            response += data
        return response
    finally:
        await stream.aclose()


async def wait_for_clients(hub: Hub, count: int) -> None:
    while len(hub) < count:
        await trio.testing.wait_all_tasks_blocked(cushion=0.001)


def upgrade_request(port: int, extra: str = "") -> bytes:
    return (
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Sec-WebSocket-Version: 13\r\n{extra}\r\n"
    ).encode()


# ----------------------------------------------------------------- startup


async def test_start_reports_the_bound_port_and_serves_clients() -> None:
    with trio.fail_after(LIMIT):
        async with running() as (hub, server), client(server.port) as connection:
            assert server.port > 0
            assert server.url == f"ws://127.0.0.1:{server.port}/"
            await wait_for_clients(hub, 1)
            hub.broadcast(Message("hello", 1))
            assert json.loads(await connection.get_message()) == {"type": "hello", "payload": 1}


async def test_frames_go_out_straight_from_broadcast_when_the_socket_is_idle() -> None:
    with trio.fail_after(LIMIT):
        async with running() as (hub, server), client(server.port) as connection:
            await wait_for_clients(hub, 1)
            (hub_client,) = hub.clients
            hub.broadcast(Message("n", 1))
            # Written by broadcast() itself: nothing was queued for the writer task.
            assert hub_client.statistics().queued == 0
            assert hub_client.statistics().delivered == 1
            assert json.loads(await connection.get_message())["payload"] == 1


async def test_fast_path_and_queue_keep_order_under_backpressure() -> None:
    # 64 KiB messages to a client that does not read at first: the first go out
    # directly (one partially), the rest queue up; reading then sees them all,
    # in order, each once.
    blob = "z" * 65536
    count = 60
    with trio.fail_after(LIMIT):
        async with (
            running({"queue_size": 1000, "ping_interval": None}) as (hub, server),
            client(server.port) as connection,
        ):
            await wait_for_clients(hub, 1)
            (hub_client,) = hub.clients
            for n in range(count):
                hub.broadcast(Message("blob", {"n": n, "blob": blob}))
            assert hub_client.statistics().queued > 0  # the socket filled up
            received = [
                json.loads(await connection.get_message())["payload"]["n"] for _ in range(count)
            ]
            assert received == list(range(count))
            hub.broadcast(Message("after", None))
            assert json.loads(await connection.get_message())["type"] == "after"


# -------------------------------------------------------------- plain HTTP


async def test_get_root_serves_the_page_and_other_requests_get_clean_errors() -> None:
    with trio.fail_after(LIMIT):
        async with running(index_html=b"<html>hub page</html>") as (_, server):
            port = server.port
            page = await http(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert page.startswith(b"HTTP/1.1 200 OK\r\n")
            assert b"Content-Type: text/html" in page
            assert page.endswith(b"<html>hub page</html>")
            head = await http(port, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            assert head.endswith(b"\r\n\r\n")
            missing = await http(port, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
            assert missing.startswith(b"HTTP/1.1 404 Not Found\r\n")
            post = await http(port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            assert post.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n")


async def test_the_built_in_page_is_served_by_default() -> None:
    with trio.fail_after(LIMIT):
        async with running() as (_, server):
            page = await http(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert page.startswith(b"HTTP/1.1 200 OK\r\n")
            assert b"<html" in page.lower() or b"<!doctype html" in page.lower()


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40 + b"\r\n\r\n",  # TLS hello
        b"hello there\r\n\r\n",
        b"GET nothing\r\n\r\n",
        b"GET / HTTP/1.1\r\nbad header line\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 20000 + b"\r\n\r\n",
    ],
)
async def test_raw_garbage_gets_400_and_harms_no_one(garbage: bytes) -> None:
    with trio.fail_after(LIMIT):
        async with running() as (hub, server), client(server.port) as bystander:
            await wait_for_clients(hub, 1)
            response = await http(server.port, garbage)
            assert response.startswith(b"HTTP/1.1 400 Bad Request\r\n")
            hub.broadcast(Message("still", "here"))
            assert json.loads(await bystander.get_message())["payload"] == "here"
            assert hub.statistics().errors == 0


async def test_a_client_that_never_finishes_the_handshake_is_dropped() -> None:
    with trio.fail_after(LIMIT):
        async with running(handshake_timeout=0.2) as (_, server):
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n")  # never finished
            start = trio.current_time()
            assert await stream.receive_some(100) == b""  # dropped, no answer
            assert trio.current_time() - start < 0.2 + 2.0
            await stream.aclose()
            assert server.connections == 0


async def test_a_bad_upgrade_request_gets_a_clear_error() -> None:
    with trio.fail_after(LIMIT):
        async with running() as (_, server):
            port = server.port
            old_version = upgrade_request(port).replace(b"Version: 13", b"Version: 8")
            assert (await http(port, old_version)).startswith(b"HTTP/1.1 426 ")
            no_key = upgrade_request(port).replace(b"Sec-WebSocket-Key", b"X-Key")
            assert (await http(port, no_key)).startswith(b"HTTP/1.1 400 ")


# ------------------------------------------------------------------ origin


async def test_origin_must_match_host_unless_allowed() -> None:
    with trio.fail_after(LIMIT):
        async with running(allowed_origins=["https://app.example"]) as (hub, server):
            port = server.port
            evil = await http(port, upgrade_request(port, "Origin: https://evil.example\r\n"))
            assert evil.startswith(b"HTTP/1.1 403 Forbidden\r\n")
            assert b"evil.example" in evil
            same = f"Origin: http://127.0.0.1:{port}\r\n"
            async with client(server.port, headers=[(b"Origin", same[8:-2].encode())]):
                await wait_for_clients(hub, 1)
            listed = [(b"Origin", b"https://app.example")]
            async with client(server.port, headers=listed):
                await wait_for_clients(hub, 1)
            # No Origin header at all (not a browser): allowed, as gorilla does.
            async with client(server.port):
                await wait_for_clients(hub, 1)


async def test_a_star_allows_every_origin() -> None:
    with trio.fail_after(LIMIT):
        async with (
            running(allowed_origins=["*"]) as (hub, server),
            client(server.port, headers=[(b"Origin", b"https://any.example")]),
        ):
            await wait_for_clients(hub, 1)


# -------------------------------------------------------------------- auth


async def authenticate(request: HandshakeRequest) -> object:
    token = request.query.get("token") or request.headers.get("authorization", "")
    if not token:
        raise HandshakeRejection(401, "token required")
    if token not in ("good", "Bearer good"):
        raise HandshakeRejection(403, "bad token")
    return {"user": "ada", "path": request.path}


async def test_authentication_admits_with_an_identity_or_rejects_with_a_status() -> None:
    with trio.fail_after(LIMIT):
        async with running(authenticate=authenticate) as (hub, server):
            port = server.port
            # Raw requests: trio-websocket's client leaks its socket on rejection.
            missing = await http(port, upgrade_request(port))
            assert missing.startswith(b"HTTP/1.1 401 Unauthorized\r\n")
            assert missing.endswith(b"\r\n\r\ntoken required\n")
            wrong = await http(port, upgrade_request(port).replace(b"GET /", b"GET /?token=bad"))
            assert wrong.startswith(b"HTTP/1.1 403 Forbidden\r\n")
            assert wrong.endswith(b"bad token\n")
            async with client(port, "/room?token=good"):
                await wait_for_clients(hub, 1)
                assert hub.clients[0].identity == {"user": "ada", "path": "/room"}
            async with client(port, headers=[(b"Authorization", b"Bearer good")]):
                await wait_for_clients(hub, 1)


async def test_an_authenticate_hook_that_raises_gives_500_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(request: HandshakeRequest) -> object:
        raise RuntimeError("auth backend down")

    with trio.fail_after(LIMIT):
        async with running(authenticate=broken) as (_, server):
            response = await http(server.port, upgrade_request(server.port))
            assert response.startswith(b"HTTP/1.1 500 ")
    assert any("authenticate hook raised" in r.getMessage() for r in caplog.records)


def test_a_rejection_needs_an_error_status() -> None:
    with pytest.raises(ValueError, match="4xx or 5xx"):
        HandshakeRejection(200, "ok")


# ------------------------------------------------------------------ limits


async def test_past_max_connections_new_clients_get_503_and_existing_ones_are_unharmed() -> None:
    with trio.fail_after(LIMIT):
        async with (
            running(max_connections=2) as (hub, server),
            client(server.port) as first,
            client(server.port) as second,
        ):
            await wait_for_clients(hub, 2)
            response = await http(server.port, upgrade_request(server.port))
            assert response.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
            hub.broadcast(Message("n", 1))
            for connection in (first, second):
                assert json.loads(await connection.get_message())["payload"] == 1
            assert len(hub) == 2


async def test_an_oversized_message_is_closed_with_1009_and_others_lose_nothing() -> None:
    with trio.fail_after(LIMIT):
        async with (
            running(max_message_size=1000) as (hub, server),
            client(server.port) as bystander,
        ):
            await wait_for_clients(hub, 1)
            async with client(server.port) as big:
                await wait_for_clients(hub, 2)
                await big.send_message(Message("big", "x" * 2000).text)
                with pytest.raises(ConnectionClosed) as closed:
                    await big.get_message()
                assert closed.value.reason is not None
                assert closed.value.reason.code == CloseCode.MESSAGE_TOO_BIG
            hub.broadcast(Message("n", 2))
            assert json.loads(await bystander.get_message())["payload"] == 2


@pytest.mark.parametrize(
    ("opcode", "payload", "code"),
    [
        (OP_BINARY, b"\x00\x01", CloseCode.UNSUPPORTED_DATA),
        (OP_TEXT, b'{"type":"\xff\xfe"}', CloseCode.INVALID_PAYLOAD),
    ],
)
async def test_bad_frames_get_their_close_code_and_others_lose_nothing(
    opcode: int, payload: bytes, code: int
) -> None:
    with trio.fail_after(LIMIT):
        async with running() as (hub, server), client(server.port) as bystander:
            await wait_for_clients(hub, 1)
            raw = await RawWebSocket.connect(server.port)
            try:
                await wait_for_clients(hub, 2)
                await raw.send_frame(opcode, payload)
                assert await raw.receive_close_code() == code
            finally:
                await raw.aclose()
            hub.broadcast(Message("n", 3))
            assert json.loads(await bystander.get_message())["payload"] == 3


# -------------------------------------------------------------------- stop


async def test_stop_refuses_new_clients_then_drains_and_closes_with_1001() -> None:
    with trio.fail_after(LIMIT):
        async with open_hub() as hub, trio.open_nursery() as nursery:
            server: HubServer = await nursery.start(serve_hub, hub, "127.0.0.1", 0)
            port = server.port
            async with client(port) as connection:
                await wait_for_clients(hub, 1)
                for n in range(50):
                    hub.broadcast(Message("n", n))
                received: list[int] = []
                close_codes: list[int] = []

                async def read() -> None:
                    try:
                        while True:
                            received.append(json.loads(await connection.get_message())["payload"])
                    except ConnectionClosed as closed:
                        close_codes.append(closed.reason.code if closed.reason else -1)

                async with trio.open_nursery() as readers:
                    readers.start_soon(read)
                    await server.aclose()
                assert received == list(range(50))
                assert close_codes == [CloseCode.GOING_AWAY]
            assert hub.closed
            with pytest.raises(OSError, match="connect"):
                await trio.open_tcp_stream("127.0.0.1", port)
            await server.aclose()  # idempotent


async def test_cancelling_serve_hub_stops_the_same_way() -> None:
    with trio.fail_after(LIMIT):
        async with open_hub() as hub:
            async with trio.open_nursery() as nursery:
                server: HubServer = await nursery.start(serve_hub, hub, "127.0.0.1", 0)
                async with client(server.port) as connection:
                    await wait_for_clients(hub, 1)
                    hub.broadcast(Message("n", 1))
                    nursery.cancel_scope.cancel()
                    assert json.loads(await connection.get_message())["payload"] == 1
                    with pytest.raises(ConnectionClosed) as closed:
                        await connection.get_message()
                    assert closed.value.reason is not None
                    assert closed.value.reason.code == CloseCode.GOING_AWAY
            assert hub.closed
