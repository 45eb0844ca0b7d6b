"""The small interface that a client needs from its connection.

A :class:`Transport` is what the hub drives for one client. trio_hub ships two: an
adapter for trio-websocket's :class:`~trio_websocket.WebSocketConnection`, and the
in-memory transport of :mod:`trio_hub.testing`. Anything else that implements
these six methods can be registered too.

A transport whose server already keeps the connection alive, and that has no way
to send a ping itself (an ASGI connection: see :mod:`trio_hub.asgi`), says so
with a class attribute ``can_ping = False``; the hub's keepalive then leaves it
alone (see :func:`can_ping`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import trio
import wsproto
from trio_websocket import ConnectionClosed, WebSocketConnection
from wsproto.connection import ConnectionState

from ._closecodes import CloseCode
from ._errors import TransportClosed
from ._message import Message

__all__ = ["Transport", "WebSocketTransport", "can_ping"]


@runtime_checkable
class Transport(Protocol):
    """What the hub needs from one client's connection.

    Every method may raise :class:`TransportClosed` once the connection is gone.
    The hub calls :meth:`send_batch` and :meth:`send_nowait` from one place per
    client, never concurrently with each other.

    Keepalive:
        The hub pings each client every ``ping_interval`` seconds through
        :meth:`ping`. A transport that cannot ping (its server pings on its own,
        as Hypercorn does for ASGI apps) sets the class attribute
        ``can_ping = False``: the hub then never calls its :meth:`ping`, and
        ``pong_timeout`` does not apply to it. The attribute is optional, and
        a transport without it is pinged.

        .. versionadded:: 0.2
           ``can_ping``.
    """

    async def receive(self) -> str | bytes:
        """Wait for the next inbound message: ``str`` for text, ``bytes`` for binary."""
        ...

    async def send_batch(self, messages: Sequence[Message]) -> None:
        """Write ``messages`` in order, each as its own WebSocket text frame."""
        ...

    def send_nowait(self, message: Message) -> bool:
        """Try to write ``message`` at once, without blocking.

        Returns:
            ``True`` if the transport took the whole message (written, or owned
            and certain to be written before anything sent later); ``False`` if
            it took nothing, in which case the hub queues the message. A
            transport with no non-blocking path always returns ``False``.
        """
        ...

    async def ping(self) -> None:
        """Send a ping and return once the matching pong arrives."""
        ...

    async def close(self, code: int, reason: str) -> None:
        """Close the connection with ``code`` and ``reason``; idempotent."""
        ...

    async def abort(self) -> None:
        """Drop the connection at once, without a close frame; idempotent.

        The hub calls this instead of :meth:`close` when a write was cut short
        (by ``write_timeout``), because the stream may then end in the middle of
        a frame, and a close frame after it would be garbage to the peer.
        """
        ...


class WebSocketTransport:
    """A :class:`Transport` over a trio-websocket connection.

    The hub wraps a :class:`~trio_websocket.WebSocketConnection` in this adapter
    when you register one directly. It has no non-blocking write path, so every
    message goes through the client's queue and writer task. (Connections
    accepted by :func:`~trio_hub.serve_hub` use a subclass with the fast path.)

    Args:
        connection: An open (accepted) server-side connection.
    """

    __slots__ = ("_connection",)

    def __init__(self, connection: WebSocketConnection) -> None:
        self._connection = connection
        _send_no_pong_after_close(connection)

    @property
    def connection(self) -> WebSocketConnection:
        """The wrapped connection."""
        return self._connection

    async def receive(self) -> str | bytes:
        """See :meth:`Transport.receive`."""
        try:
            return await self._connection.get_message()
        except ConnectionClosed as exc:
            raise transport_closed(exc) from None

    async def send_batch(self, messages: Sequence[Message]) -> None:
        """See :meth:`Transport.send_batch`."""
        try:
            for message in messages:
                await self._connection.send_message(message.text)
        except ConnectionClosed as exc:
            raise transport_closed(exc) from None

    def send_nowait(self, message: Message) -> bool:
        """See :meth:`Transport.send_nowait`; always ``False`` here."""
        return False

    async def ping(self) -> None:
        """See :meth:`Transport.ping`."""
        try:
            await self._connection.ping()
        except ConnectionClosed as exc:
            raise transport_closed(exc) from None

    async def close(self, code: int, reason: str) -> None:
        """See :meth:`Transport.close`."""
        await self._connection.aclose(code, reason)

    async def abort(self) -> None:
        """See :meth:`Transport.abort`."""
        # trio-websocket's aclose(), when cancelled before it can send the close
        # frame, still closes the underlying stream: exactly an abort.
        with trio.CancelScope() as scope:
            scope.cancel()
            await self._connection.aclose(CloseCode.ABNORMAL)

    def __repr__(self) -> str:
        remote = self._connection.remote
        return f"<WebSocketTransport {remote}>"


def _send_no_pong_after_close(connection: WebSocketConnection) -> None:
    """Make ``connection`` drop the pongs it would send after its own close frame.

    trio-websocket issue #184 (its fix, PR #198, is not merged): a ping that
    arrives once the connection has sent its close frame (wsproto's
    ``LOCAL_CLOSING``: the hub closed it for shutdown, eviction or a keepalive
    timeout) is answered with a pong that wsproto refuses, and the
    ``LocalProtocolError`` escapes the connection's reader task, which ends
    the connection's nursery (with trio-websocket's own server, the whole
    server). After a close frame an endpoint sends nothing more (RFC 6455,
    5.5.1), so the pong is simply not sent. trio-websocket's reader looks
    ``_send`` up at each call, so wrapping it on the instance is enough.
    """
    send = connection._send

    async def send_unless_a_late_pong(event: wsproto.events.Event) -> None:
        if isinstance(event, wsproto.events.Pong) and (
            connection._wsproto.state is not ConnectionState.OPEN
        ):
            await trio.lowlevel.checkpoint()
            return
        await send(event)

    connection._send = send_unless_a_late_pong  # type: ignore[method-assign]


def can_ping(transport: Transport) -> bool:
    """Whether the hub's keepalive pings through ``transport`` (see :class:`Transport`)."""
    return getattr(transport, "can_ping", True) is not False


def transport_closed(exc: ConnectionClosed) -> TransportClosed:
    reason = exc.reason
    if reason is None:
        return TransportClosed(None)
    return TransportClosed(reason.code, reason.reason or "")
