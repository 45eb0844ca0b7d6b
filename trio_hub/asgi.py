"""A hub for ASGI apps on Trio: Quart-Trio, or any ASGI app served by Hypercorn's Trio worker.

An ASGI WebSocket endpoint accepts its connection with :func:`asgi_transport`
(plain ASGI) or :func:`quart_transport` (Quart-Trio) and passes the transport
to :meth:`Hub.serve_client <trio_hub.Hub.serve_client>`; the hub lives as long
as the app serves: :class:`HubLifespan` runs it in a plain ASGI app's
lifespan, :class:`QuartTrioHub` in a Quart-Trio app's ``before_serving`` and
``after_serving``. :doc:`/howto/quart-trio` walks through an app of each kind
(``docs/examples/quart_trio_app.py`` and ``plain_asgi_app.py``); in short:

Lifetime:
    The hub opens when the server starts the app (the ASGI lifespan
    ``startup``) and is shut down, as :meth:`~trio_hub.Hub.aclose` does, at
    the lifespan ``shutdown``. Hypercorn sends that only after its
    connections have ended, and it ends WebSocket connections by cancelling
    them ``graceful_timeout`` seconds after its shutdown began: each client is
    then closed with 1001 without its queue being flushed. To flush them,
    pass :meth:`HubLifespan.shutdown_trigger` (or the same method of
    :class:`QuartTrioHub`) to Hypercorn's ``serve()``: it shuts the hub down
    (drain, then 1001) before Hypercorn stops.

Keepalive:
    ASGI has no ping: the server answers the peer's pings, and Hypercorn
    sends its own every ``websocket_ping_interval`` seconds (off by default).
    An :class:`ASGITransport` says ``can_ping = False``, so the hub's keepalive
    never pings it, and nothing is pinged twice; ``ping_interval`` and
    ``pong_timeout`` do not apply to these clients. Set Hypercorn's
    ``websocket_ping_interval`` to keep idle connections alive through
    proxies. Hypercorn does not wait for pongs, so a peer that vanished
    without a word is found by TCP, or by ``write_timeout`` once the hub has
    something to write to it.

Backpressure:
    Hypercorn's ``send`` returns once the frame is in the kernel's socket
    buffer, and it shields that write from cancellation: an ASGI ``send`` to a
    peer that stopped reading blocks, and nothing can interrupt it. So an
    :class:`ASGITransport` never makes the hub wait on ``send``: one sender task
    per connection, in the hub's nursery, makes the ``send`` calls. A broadcast
    hands an idle sender one message at once; the rest waits in the client's
    queue, and the client's writer hands it over and waits for the sender
    only as long as ``write_timeout`` allows. Past that, the client is
    evicted with 4000 as on any transport, and the transport is aborted:
    Hypercorn is told that the app closed (so that it writes nothing more),
    and once the endpoint returns Hypercorn closes the socket, which ends the
    blocked write. The queue bound, the slow-client policy and
    ``write_timeout`` therefore hold as they do for
    :func:`~trio_hub.serve_hub`, with the socket's buffers in the server.

.. versionadded:: 0.2
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any, ClassVar, Final, Protocol, TypeAlias, Unpack, final

import trio

from ._closecodes import CloseCode
from ._errors import HubClosedError, TransportClosed
from ._hub import Hub, open_hub
from ._message import Message
from ._util import NoPublicConstructor

if TYPE_CHECKING:
    from .testing import HubSettings

__all__ = [
    "ASGIApp",
    "ASGIReceive",
    "ASGIScope",
    "ASGISend",
    "ASGITransport",
    "HubLifespan",
    "QuartTrioHub",
    "QuartWebsocket",
    "asgi_transport",
    "quart_transport",
]

logger: Final = logging.getLogger("trio_hub")

ASGIScope: TypeAlias = "Mapping[str, Any]"
"""An ASGI connection scope (for a WebSocket, ``scope["type"] == "websocket"``)."""

ASGIReceive: TypeAlias = "Callable[[], Awaitable[Any]]"
"""The ASGI ``receive`` callable: returns the next event, a ``dict``."""

ASGISend: TypeAlias = "Callable[[Any], Awaitable[None]]"
"""The ASGI ``send`` callable: takes an event, a ``dict``."""

ASGIApp: TypeAlias = "Callable[[Any, ASGIReceive, ASGISend], Awaitable[None]]"
"""An ASGI 3 application, called as ``await app(scope, receive, send)``."""


class QuartWebsocket(Protocol):
    """The part of Quart's ``websocket`` object that :func:`quart_transport` uses."""

    async def accept(
        self, headers: dict[str, str] | None = None, subprotocol: str | None = None
    ) -> None:
        """Accept the connection; idempotent."""
        ...

    async def receive(self) -> str | bytes:
        """Wait for the next inbound message."""
        ...

    async def send(self, data: str) -> None:
        """Send one text frame."""
        ...

    async def close(self, code: int, reason: str = "") -> None:
        """Close the connection with ``code`` and ``reason``."""
        ...


class _Connection(Protocol):
    """The three things a transport does to an ASGI connection, over raw ASGI or Quart."""

    async def receive(self) -> str | bytes: ...
    async def send(self, text: str) -> None: ...
    async def close(self, code: int, reason: str) -> None: ...

    # Whether receive() reports the peer's close (raw ASGI does; Quart-Trio
    # cancels the endpoint instead, and close() then cannot wait for it).
    reports_disconnect: bool


@final
class ASGITransport(metaclass=NoPublicConstructor):
    """A :class:`~trio_hub.Transport` over one accepted ASGI WebSocket connection.

    Get one from :func:`asgi_transport` or :func:`quart_transport`, and pass it
    to :meth:`~trio_hub.Hub.serve_client`. One sender task per connection (in
    the hub's nursery, started at the first write) makes the ASGI ``send``
    calls, so that ``write_timeout`` bounds the hub's wait even though the
    server's ``send`` cannot be interrupted (see :mod:`trio_hub.asgi`).

    Its non-blocking write path: while the sender is idle and holds nothing,
    :meth:`send_nowait` hands it the message and returns ``True`` (one message
    at most, like a socket buffer); otherwise the message waits in the client's
    queue, and the client's writer passes it on with :meth:`send_batch`.

    Keepalive is the server's: ``can_ping`` is ``False``, and the hub never
    calls :meth:`ping`.

    .. versionadded:: 0.2
    """

    can_ping: ClassVar[bool] = False
    """Always ``False``, so the hub's keepalive skips this transport (the server pings)."""

    __slots__ = (
        "_aborted",
        "_closing",
        "_connection",
        "_description",
        "_disconnect",
        "_failure",
        "_nursery",
        "_outbox",
        "_sender_done",
        "_sender_started",
        "_sending",
        "_taken",
        "_waiter",
        "_wakeup",
        "_written",
    )

    def __init__(self, connection: _Connection, nursery: trio.Nursery, description: str) -> None:
        self._connection = connection
        self._nursery = nursery
        self._description = description
        # What the sender owns and has not written yet, oldest first.
        self._outbox: deque[Message] = deque()
        # Messages handed to the sender, and written by it, since the start.
        self._taken = 0
        self._written = 0
        self._sending = False
        # send_batch() waits for _written to reach a count.
        self._waiter: tuple[int, trio.Event] | None = None
        self._wakeup = trio.Event()
        self._sender_started = False
        self._sender_done = trio.Event()
        self._closing = False
        self._aborted = False
        # (code, reason) from websocket.disconnect, once the peer has gone.
        self._disconnect: tuple[int, str] | None = None
        self._failure: BaseException | None = None

    async def receive(self) -> str | bytes:
        """See :meth:`trio_hub.Transport.receive`."""
        if self._disconnect is not None:
            raise TransportClosed(*self._disconnect)
        try:
            return await self._connection.receive()
        except _Disconnected as gone:
            self._disconnect = (gone.code, gone.reason)
            raise TransportClosed(gone.code, gone.reason) from None

    async def send_batch(self, messages: Sequence[Message]) -> None:
        """See :meth:`trio_hub.Transport.send_batch`.

        Returns once the server has taken every frame. If the caller is
        cancelled (the hub's ``write_timeout``), the frames still go out in
        order unless the transport is aborted; Hypercorn never cuts one short.
        """
        self._raise_if_gone()
        if self._closing:
            raise TransportClosed(None)
        self._hand_over(messages)
        written = trio.Event()
        self._waiter = (self._taken, written)
        await written.wait()
        self._raise_if_gone()

    def send_nowait(self, message: Message) -> bool:
        """See :meth:`trio_hub.Transport.send_nowait`.

        Returns:
            ``True`` if the sender was idle and took ``message``; ``False`` if
            it is busy (the hub then queues the message).
        """
        if (
            self._outbox
            or self._sending
            or self._closing
            or self._disconnect is not None
            or self._failure is not None
        ):
            return False
        self._hand_over((message,))
        return True

    async def ping(self) -> None:
        """Not available over ASGI; the hub never calls it (``can_ping`` is ``False``).

        Raises:
            NotImplementedError: always.
        """
        raise NotImplementedError("ASGI has no ping: the server keeps the connection alive")

    async def close(self, code: int, reason: str) -> None:
        """See :meth:`trio_hub.Transport.close`.

        Waits until what the sender holds is written, sends the close, then
        (over raw ASGI) waits for the peer's close, so that the server never
        resets a connection that still has unread input. The hub bounds all
        of it with ``close_timeout``, and aborts the connection past it.
        """
        if self._closing:
            return
        self._stop_sender()
        if self._sender_started:
            await self._sender_done.wait()
        if self._disconnect is not None or self._aborted:
            return
        await self._connection.close(code, reason)
        if self._connection.reports_disconnect:
            # Read what the peer still sends, up to its answer to our close.
            while True:
                try:
                    await self._connection.receive()
                except _Disconnected:
                    self._disconnect = (code, reason)
                    return

    async def abort(self) -> None:
        """See :meth:`trio_hub.Transport.abort`.

        ASGI cannot drop a connection: this tells the server that the app has
        closed, without waiting for (or sending) a close frame, so that once the
        endpoint returns the server closes the socket. A write blocked in the
        server then ends too. The sender writes nothing after this.
        """
        if self._aborted:
            return
        self._aborted = True
        self._stop_sender()
        if self._disconnect is not None:
            return
        # Hypercorn marks the connection closed as soon as it is handed the
        # websocket.close event, before it waits to write the close frame; a
        # cancelled call therefore marks it without writing anything, whatever
        # the sender is blocked on.
        with trio.CancelScope() as scope:
            scope.cancel()
            try:
                await self._connection.close(CloseCode.INTERNAL_ERROR, "")
            except Exception:  # already closed, or the server objects: best effort
                logger.debug("%r: error while aborting", self, exc_info=True)

    def __repr__(self) -> str:
        return f"<ASGITransport {self._description}>"

    # ------------------------------------------------------------ the sender

    def _hand_over(self, messages: Sequence[Message]) -> None:
        self._outbox.extend(messages)
        self._taken += len(messages)
        if not self._sender_started:
            self._sender_started = True
            self._nursery.start_soon(self._run_sender, name=f"trio_hub sender {self!r}")
        self._wakeup.set()

    def _stop_sender(self) -> None:
        # The sender writes what it holds (or, aborted, stops between frames),
        # then ends; nothing is handed to it after this.
        self._closing = True
        self._wakeup.set()

    def _raise_if_gone(self) -> None:
        if self._disconnect is not None:
            raise TransportClosed(*self._disconnect)
        if self._failure is not None:
            raise TransportClosed(None) from self._failure

    async def _run_sender(self) -> None:
        # Shielded: the sender ends when the transport is closed or aborted,
        # which the hub does for every client it registered. A write that the
        # server blocks on (a peer that stopped reading) ends when the server
        # closes the socket, after abort() and the endpoint's return.
        outbox = self._outbox
        send = self._connection.send
        try:
            with trio.CancelScope(shield=True):
                while True:
                    # Made before looking, so that a hand-over while we write
                    # is never missed.
                    self._wakeup = trio.Event()
                    while outbox and not self._aborted and self._failure is None:
                        message = outbox.popleft()
                        self._sending = True
                        try:
                            await send(message.text)
                        except Exception as exc:
                            # The hub learns of it at its next write; the
                            # reader learns that the peer left from the server.
                            logger.debug("%r: send failed", self, exc_info=True)
                            self._failure = exc
                        finally:
                            self._sending = False
                        self._written += 1
                        self._wake_waiter()
                    if self._aborted or self._failure is not None:
                        outbox.clear()
                        self._written = self._taken
                        self._wake_waiter()
                    if self._closing and not outbox:
                        return
                    await self._wakeup.wait()
        finally:
            self._sender_done.set()

    def _wake_waiter(self) -> None:
        waiter = self._waiter
        if waiter is not None and self._written >= waiter[0]:
            self._waiter = None
            waiter[1].set()


class _Disconnected(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


# ---------------------------------------------------------------- raw ASGI


class _RawConnection:
    __slots__ = ("_receive", "_send")

    reports_disconnect = True

    def __init__(self, receive: ASGIReceive, send: ASGISend) -> None:
        self._receive = receive
        self._send = send

    async def receive(self) -> str | bytes:
        while True:
            event = await self._receive()
            kind = event.get("type")
            if kind == "websocket.receive":
                text = event.get("text")
                if text is not None:
                    return str(text)
                data = event.get("bytes")
                if data is not None:
                    return bytes(data)
            elif kind == "websocket.disconnect":
                raise _Disconnected(
                    int(event.get("code", CloseCode.ABNORMAL)), str(event.get("reason") or "")
                )

    async def send(self, text: str) -> None:
        await self._send({"type": "websocket.send", "text": text})

    async def close(self, code: int, reason: str) -> None:
        await self._send({"type": "websocket.close", "code": code, "reason": reason})


async def asgi_transport(
    hub: Hub,
    scope: ASGIScope,
    receive: ASGIReceive,
    send: ASGISend,
    *,
    subprotocol: str | None = None,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> ASGITransport:
    """Accept an ASGI WebSocket connection and return its transport, for ``hub``.

    Call it from an ASGI app for a ``"websocket"`` scope, pass the result to
    :meth:`Hub.serve_client <trio_hub.Hub.serve_client>`, and return when that
    does (``docs/examples/plain_asgi_app.py`` does exactly this). Returning
    matters: Hypercorn closes the socket only once the app has returned.

    It waits for ``websocket.connect`` and answers ``websocket.accept``.

    Args:
        hub: The hub that the connection will be registered with; its nursery
            runs the transport's sender task.
        scope: The connection's scope.
        receive: The connection's ASGI ``receive``.
        send: The connection's ASGI ``send``.
        subprotocol: The subprotocol to accept, if any.
        headers: Extra headers for the handshake response.

    Returns:
        The transport of the accepted connection.

    Raises:
        ValueError: if ``scope`` is not a WebSocket scope.
        HubClosedError: if the hub is closing; the handshake is then refused
            (Hypercorn answers 403).
        TransportClosed: if the peer left before the handshake completed.

    .. versionadded:: 0.2
    """
    if scope.get("type") != "websocket":
        raise ValueError(f"asgi_transport() needs a 'websocket' scope, got {scope.get('type')!r}")
    event = await receive()
    if event.get("type") != "websocket.connect":
        raise TransportClosed(int(event.get("code", CloseCode.ABNORMAL)), "")
    if hub.closed:
        await send({"type": "websocket.close", "code": CloseCode.GOING_AWAY})
        raise HubClosedError("the hub is closed: it takes no new clients")
    await send({"type": "websocket.accept", "subprotocol": subprotocol, "headers": list(headers)})
    client = scope.get("client")
    description = f"{client[0]}:{client[1]}" if client else "ASGI"
    return ASGITransport._create(_RawConnection(receive, send), hub._nursery, description)


# ---------------------------------------------------------------- Quart-Trio


class _QuartConnection:
    __slots__ = ("_websocket",)

    # Quart-Trio answers websocket.disconnect by cancelling the endpoint, and
    # keeps the peer's close code to itself.
    reports_disconnect = False

    def __init__(self, websocket: QuartWebsocket) -> None:
        self._websocket = websocket

    async def receive(self) -> str | bytes:
        return await self._websocket.receive()

    async def send(self, text: str) -> None:
        await self._websocket.send(text)

    async def close(self, code: int, reason: str) -> None:
        await self._websocket.close(code, reason)


async def quart_transport(
    hub: Hub,
    websocket: QuartWebsocket,
    *,
    subprotocol: str | None = None,
    headers: dict[str, str] | None = None,
) -> ASGITransport:
    """Accept a Quart-Trio WebSocket and return its transport, for ``hub``.

    Call it from a ``@app.websocket`` endpoint with Quart's ``websocket``,
    pass the result to :meth:`Hub.serve_client <trio_hub.Hub.serve_client>`,
    and return when that does (as ``docs/examples/quart_trio_app.py`` does).

    Quart-Trio cancels the endpoint when the peer disconnects, and does not
    tell it the peer's close code: such a client is recorded as closed with
    1001 (:meth:`~trio_hub.Hub.serve_client` was cancelled). Quart itself is
    not imported: anything with Quart's ``accept``, ``receive``, ``send`` and
    ``close`` will do.

    Args:
        hub: As for :func:`asgi_transport`.
        websocket: Quart's ``websocket`` (the context-local proxy is resolved
            to the connection's own object, which the sender task uses outside
            the request context).
        subprotocol: The subprotocol to accept, if any.
        headers: Extra headers for the handshake response.

    Returns:
        The transport of the accepted connection.

    Raises:
        HubClosedError: if the hub is closing; the handshake is then refused.

    .. versionadded:: 0.2
    """
    resolve = getattr(websocket, "_get_current_object", None)
    target: QuartWebsocket = resolve() if callable(resolve) else websocket
    if hub.closed:
        await target.close(CloseCode.GOING_AWAY, "")
        raise HubClosedError("the hub is closed: it takes no new clients")
    await target.accept(headers, subprotocol)
    remote = getattr(target, "remote_addr", None)
    return ASGITransport._create(_QuartConnection(target), hub._nursery, f"Quart {remote}")


# ------------------------------------------------------------------ lifetime


class _AppHub:
    """The hub of an app: open while the app serves."""

    def __init__(self, settings: HubSettings) -> None:
        self._settings = settings
        self._hub: Hub | None = None

    @property
    def hub(self) -> Hub:
        """The app's hub, once the app has started serving.

        Raises:
            RuntimeError: before the server has started the app.
        """
        if self._hub is None:
            raise RuntimeError("the hub opens when the server starts the app (lifespan startup)")
        return self._hub

    def shutdown_trigger(
        self, trigger: Callable[[], Awaitable[object]]
    ) -> Callable[[], Awaitable[None]]:
        """Wrap Hypercorn's ``shutdown_trigger`` so that the hub shuts down first.

        Pass the result to ``hypercorn.trio.serve()``: once ``trigger``
        returns, the hub drains every client's queue and closes each with 1001
        (:meth:`~trio_hub.Hub.aclose`), the endpoints return, and only then
        does Hypercorn stop.

        Args:
            trigger: What Hypercorn would have waited for, for example a task
                that returns on SIGTERM.
        """

        async def shutdown() -> None:
            await trigger()
            if self._hub is not None:
                await self._hub.aclose()

        return shutdown

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[Hub]:
        async with open_hub(**self._settings) as hub:
            self._hub = hub
            yield hub


@final
class HubLifespan(_AppHub):
    """An ASGI app that runs a hub for as long as the server serves ``app``.

    It answers the ``lifespan`` scope: at ``startup`` it opens the hub (and
    then passes the startup to ``app``, if ``app`` speaks the lifespan
    protocol), and at ``shutdown`` it passes the shutdown on and then shuts
    the hub down. Every other scope goes to ``app`` unchanged. Between the
    two, the hub is :attr:`hub`, and also ``scope["state"]["trio_hub"]`` in
    every connection's scope (the ASGI lifespan state). Serve the
    ``HubLifespan``, not ``app``, with Hypercorn (see
    ``docs/examples/plain_asgi_app.py``).

    Args:
        app: The ASGI app to serve.
        settings: The settings of :func:`~trio_hub.open_hub`.

    .. versionadded:: 0.2
    """

    def __init__(self, app: ASGIApp, **settings: Unpack[HubSettings]) -> None:
        super().__init__(settings)
        self._app = app

    async def __call__(self, scope: Any, receive: ASGIReceive, send: ASGISend) -> None:
        """Serve one ASGI scope."""
        if scope["type"] != "lifespan":
            await self._app(scope, receive, send)
            return
        event = await receive()
        if event["type"] != "lifespan.startup":
            return
        async with AsyncExitStack() as stack:
            try:
                hub = await stack.enter_async_context(self._open())
            except Exception as exc:
                # A hub that cannot open (a bad setting, a backend that is
                # down) fails the server's startup, rather than leaving it
                # without a hub.
                await send({"type": "lifespan.startup.failed", "message": f"trio_hub: {exc}"})
                return
            nursery = await stack.enter_async_context(trio.open_nursery())
            state = scope.get("state")
            if state is not None:
                state["trio_hub"] = hub
            inner = await nursery.start(_InnerLifespan.run, self._app, scope)
            failure = await inner.tell("lifespan.startup")
            if failure is not None:
                nursery.cancel_scope.cancel()
                await send({"type": "lifespan.startup.failed", "message": failure})
                return
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown
            failure = await inner.tell("lifespan.shutdown")
            # An app whose lifespan does not return after its shutdown must
            # not keep the hub (and the server) from shutting down.
            nursery.cancel_scope.cancel()
        # The hub has shut down (leaving the block above): only now is the
        # server told that the app has.
        if failure is not None:
            await send({"type": "lifespan.shutdown.failed", "message": failure})
        else:
            await send({"type": "lifespan.shutdown.complete"})


class _InnerLifespan:
    """The wrapped app's side of the lifespan protocol, relayed through channels."""

    def __init__(self) -> None:
        self._to_app, self._app_receives = trio.open_memory_channel[Mapping[str, Any]](1)
        self._app_sends, self._from_app = trio.open_memory_channel[Mapping[str, Any]](1)
        self._supported = True

    @classmethod
    async def run(
        cls, app: ASGIApp, scope: Any, *, task_status: trio.TaskStatus[_InnerLifespan]
    ) -> None:
        inner = cls()
        task_status.started(inner)
        try:
            await app(scope, inner._app_receives.receive, inner._app_sends.send)
        except Exception:
            # As Hypercorn does: an app that raises here has no lifespan support.
            logger.debug("the app does not speak the ASGI lifespan protocol", exc_info=True)
            inner._supported = False
        finally:
            # Both ways: tell() then never waits on an app that has returned.
            inner._app_sends.close()
            inner._app_receives.close()

    async def tell(self, kind: str) -> str | None:
        """Pass ``kind`` on; return the failure message, or ``None`` once it is done."""
        if not self._supported:
            return None
        try:
            await self._to_app.send({"type": kind})
            reply = await self._from_app.receive()
        except (trio.EndOfChannel, trio.BrokenResourceError):
            return None  # the app returned: it has no lifespan support
        if reply.get("type") == f"{kind}.failed":
            return str(reply.get("message", ""))
        return None


@final
class QuartTrioHub(_AppHub):
    """A hub for a Quart-Trio app, open while the app serves.

    It registers a ``before_serving`` function that opens the hub in the
    app's nursery (``app.nursery``, which Quart-Trio opens for the app's
    lifespan), and an ``after_serving`` one that shuts it down; endpoints use
    :attr:`hub` in between (see ``docs/examples/quart_trio_app.py``).

    Args:
        app: A ``quart_trio.QuartTrio`` app (typed loosely, so that this
            module imports without Quart).
        settings: The settings of :func:`~trio_hub.open_hub`.

    .. versionadded:: 0.2
    """

    def __init__(self, app: Any, **settings: Unpack[HubSettings]) -> None:
        super().__init__(settings)
        self._app = app
        self._stop: trio.Event | None = None
        app.before_serving(self._start)
        app.after_serving(self._shut_down)

    async def _start(self) -> None:
        self._stop = trio.Event()
        nursery: trio.Nursery = self._app.nursery
        await nursery.start(self._run)

    async def _run(self, *, task_status: trio.TaskStatus[None]) -> None:
        assert self._stop is not None
        async with self._open():
            task_status.started()
            await self._stop.wait()

    async def _shut_down(self) -> None:
        # Quart-Trio cancels app.nursery just before this; the hub's shutdown
        # is shielded, so it runs to completion (drain, then 1001) all the same.
        if self._stop is not None:
            self._stop.set()
        if self._hub is not None:
            await self._hub.aclose()
