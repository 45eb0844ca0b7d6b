"""trio-websocket clients for tests where the hub pings them while they close.

:func:`connect_websocket` is :func:`trio_websocket.connect_websocket` (plain
``ws://`` only) with one change, for trio-websocket issue #184, which is open
upstream (its fix, PR #198, is not merged): when a ping arrives after the client
has sent its close frame, trio-websocket's client answers with a pong that
wsproto refuses in ``LOCAL_CLOSING``, and the ``LocalProtocolError`` escapes the
client's nursery. A hub that pings a client while it leaves hits that race,
every time on a slow enough machine. The connection here sends no pong once its
close frame is out, as RFC 6455 (5.5.1) asks, and is otherwise trio-websocket's.

Only the client is patched: the hub's served connections are under test, and
``tests/test_ping_while_closing.py`` shows that they handle the same race.
"""

from __future__ import annotations

import trio
import wsproto
from trio_websocket import WebSocketConnection
from wsproto.connection import ConnectionState

__all__ = ["connect_websocket"]


class _ClientConnection(WebSocketConnection):
    async def _handle_ping_event(self, event: wsproto.events.Ping) -> None:
        # trio-websocket #184: no pong once our close frame has gone out.
        if self._wsproto.state is ConnectionState.OPEN:
            await super()._handle_ping_event(event)
        else:
            await trio.lowlevel.checkpoint()


# For clients that must answer pings however far behind their reading is.
READ_AHEAD = 1_000_000


async def connect_websocket(
    nursery: trio.Nursery,
    host: str,
    port: int,
    resource: str,
    *,
    use_ssl: bool = False,
    message_queue_size: int = 1,
) -> WebSocketConnection:
    """An open client connection whose background reader runs in ``nursery``.

    Like :func:`trio_websocket.connect_websocket`, the caller closes it.

    trio-websocket's reader answers pings in stream order, and stops reading
    while ``message_queue_size`` messages (1, as trio-websocket's default) wait
    for ``get_message()``. So a pong waits for the application to take every
    message that came before its ping: a client that lags by seconds on a busy
    machine fails the hub's keepalive. A browser answers pings in its network
    layer, whatever the page does; :data:`READ_AHEAD` lets the reader do so too.
    """
    if use_ssl:
        raise ValueError("the tests speak plain ws:// on loopback")
    stream = await trio.open_tcp_stream(host, port)
    connection = _ClientConnection(
        stream,
        wsproto.WSConnection(wsproto.ConnectionType.CLIENT),
        host=f"{host}:{port}",
        path=resource,
        message_queue_size=message_queue_size,
    )
    nursery.start_soon(connection._reader_task)
    await connection._open_handshake.wait()
    return connection
