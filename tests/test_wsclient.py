"""The test client of ``tests/wsclient.py`` survives trio-websocket issue #184; the stock one not.

A tiny wsproto server answers the client's close frame with a ping first, then
its close reply: the order in which a hub's keepalive ping can meet a client
that is leaving. Real sockets on 127.0.0.1, port 0; each test has a time limit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

import pytest
import trio
import trio_websocket
import wsproto
from wsproto.events import AcceptConnection, CloseConnection, Ping, Pong, Request

from .wsclient import connect_websocket

Connect = Callable[..., Awaitable[trio_websocket.WebSocketConnection]]


async def ping_before_the_close_reply(seen: list[object], stream: trio.SocketStream) -> None:
    protocol = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
    late_ping = b""
    try:
        while data := await stream.receive_some(65536):
            protocol.receive_data(data)
            for event in protocol.events():
                seen.append(event)
                if isinstance(event, Request):
                    await stream.send_all(protocol.send(AcceptConnection()))
                    # Framed while open, as a keepalive ping that was on its
                    # way when the client's close frame came in.
                    late_ping = protocol.send(Ping(b"late"))
                elif isinstance(event, CloseConnection):
                    await stream.send_all(late_ping)
                    await stream.send_all(protocol.send(event.response()))
                    return
    finally:
        await stream.aclose()


async def close_against_a_late_ping(connect: Connect) -> list[object]:
    """Connect, close, and return what the server saw."""
    seen: list[object] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as server:
            (listener,) = await server.start(
                partial(
                    trio.serve_tcp, partial(ping_before_the_close_reply, seen), 0, host="127.0.0.1"
                )
            )
            port = listener.socket.getsockname()[1]
            async with trio.open_nursery() as nursery:
                connection = await connect(nursery, "127.0.0.1", port, "/", use_ssl=False)
                await connection.aclose()
            server.cancel_scope.cancel()
    return seen


async def test_a_ping_after_the_clients_close_frame_gets_no_pong_and_no_error() -> None:
    seen = await close_against_a_late_ping(connect_websocket)
    # After its close frame an endpoint sends nothing more (RFC 6455, 5.5.1).
    assert not any(isinstance(event, Pong) for event in seen)
    assert isinstance(seen[-1], CloseConnection)


async def test_the_stock_client_still_has_trio_websocket_issue_184() -> None:
    # When this fails, upstream has fixed #184: use trio_websocket's own
    # clients again, and delete tests/wsclient.py.
    with pytest.RaisesGroup(wsproto.utilities.LocalProtocolError, flatten_subgroups=True):
        await close_against_a_late_ping(trio_websocket.connect_websocket)
