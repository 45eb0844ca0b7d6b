"""serve_hub(): accept WebSocket clients for a hub, with a handshake policy."""

from __future__ import annotations

import importlib.resources
import logging
import math
import types
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from functools import partial
from http import HTTPStatus
from typing import TYPE_CHECKING, Final, Literal, final
from urllib.parse import parse_qsl, urlsplit

import trio

from ._client import Client
from ._closecodes import CloseCode
from ._compression import DeflateParameters, negotiate_deflate
from ._connection import ServerConnection, handshake_response
from ._errors import HubClosedError, HubError
from ._http import METRICS_MODES, HTTPSide, serve_request
from ._hub import Hub
from ._message import JSONValue
from ._stream import HubStream, WriteCoalescer
from ._util import NoPublicConstructor

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = [
    "Admission",
    "Authenticator",
    "HandshakeRejection",
    "HandshakeRequest",
    "HubServer",
    "default_index_html",
    "serve_hub",
]

logger: Final = logging.getLogger("trio_hub")

_MAX_HEAD_BYTES: Final = 16 * 1024
_RESPONSE_TIMEOUT: Final = 5.0


class HandshakeRejection(HubError):
    """Raise it from an ``authenticate`` hook to refuse a client before the upgrade.

    The client gets a real HTTP response with ``status`` and ``body``, and never
    becomes a WebSocket.

    Args:
        status: The HTTP status, usually 401 (who are you?) or 403 (not you).
        body: A short text for the response body.
    """

    def __init__(self, status: int = 403, body: str = "Forbidden") -> None:
        if not 400 <= status <= 599:
            raise ValueError(f"a rejection needs a 4xx or 5xx status, got {status}")
        super().__init__(status, body)
        self.status = status
        self.body = body


@dataclass(frozen=True, slots=True, kw_only=True)
class HandshakeRequest:
    """What an ``authenticate`` hook sees of the client's upgrade request.

    Attributes:
        path: The request path, without the query: ``"/chat"``.
        query: The query parameters (for a repeated name, the last value).
        headers: The request headers, with lower-case names (for a repeated
            header, the values joined with ``", "``).
        remote: The client's address and port, if known.
    """

    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    remote: tuple[str, int] | None


Authenticator = Callable[[HandshakeRequest], Awaitable[object]]
"""An async callable that returns the client's identity or raises :class:`HandshakeRejection`."""


@dataclass(frozen=True, slots=True)
class Admission:
    """Return one from an ``authenticate`` hook to attach presence ``info`` too.

    Any other return value is the client's identity alone.

    Attributes:
        identity: The client's :attr:`Client.identity`.
        info: Its :attr:`Client.info`: small JSON shown in presence, at most
            :data:`MAX_PRESENCE_INFO_SIZE` bytes.

    .. versionadded:: 0.2
    """

    identity: object
    info: JSONValue = None


def default_index_html() -> bytes:
    """The built-in browser page that :func:`serve_hub` serves on ``GET /``."""
    return importlib.resources.files("trio_hub").joinpath("_static/index.html").read_bytes()


@final
class HubServer(metaclass=NoPublicConstructor):
    """A running :func:`serve_hub`; ``await nursery.start(serve_hub, ...)`` returns it."""

    __slots__ = (
        "_accept_scope",
        "_connections",
        "_handler_scopes",
        "_http",
        "_hub",
        "_listeners",
        "_refusals",
        "_registry",
        "_stopped",
    )

    def __init__(self, hub: Hub, listeners: list[trio.SocketListener], http: HTTPSide) -> None:
        self._hub = hub
        self._listeners = listeners
        self._http = http
        self._accept_scope = trio.CancelScope()
        self._stopped = trio.Event()
        self._connections = 0
        self._handler_scopes: set[trio.CancelScope] = set()
        self._refusals: Counter[str] = Counter()
        self._registry: CollectorRegistry | None = None

    @property
    def hub(self) -> Hub:
        """The hub whose clients this server accepts."""
        return self._hub

    @property
    def port(self) -> int:
        """The port the server listens on (the real one, when you asked for 0)."""
        port: int = self._listeners[0].socket.getsockname()[1]
        return port

    @property
    def host(self) -> str:
        """The address the (first) listener is bound to."""
        host: str = self._listeners[0].socket.getsockname()[0]
        return host

    @property
    def url(self) -> str:
        """``ws://HOST:PORT/`` for the first listener."""
        host = self.host
        if ":" in host:
            host = f"[{host}]"
        return f"ws://{host}:{self.port}/"

    @property
    def connections(self) -> int:
        """How many connections are open now, WebSocket clients and handshakes in progress."""
        return self._connections

    @property
    def refusals(self) -> Mapping[str, int]:
        """How many connections the handshake refused or dropped, by reason.

        The reasons: ``bad_request``, ``too_many_connections``, ``bad_upgrade``,
        ``origin``, ``shutting_down``, ``rejected_<status>`` (the
        ``authenticate`` hook refused, as with 401), ``auth_timeout``,
        ``auth_error``, ``handshake_timeout`` and ``lost``.

        .. versionadded:: 0.2
        """
        return types.MappingProxyType(self._refusals)

    @property
    def metrics_registry(self) -> CollectorRegistry:
        """The server's own Prometheus registry, which ``GET /metrics`` serves.

        Its collector reads :meth:`Hub.statistics` and :attr:`refusals` at
        each scrape. Register your own collectors with it to serve them beside
        trio_hub's; it is never the process-global registry.

        .. versionadded:: 0.2
        """
        if self._registry is None:
            # Imported on first use: a server without /metrics needs no prometheus_client.
            from . import _metrics

            collector = _metrics.HubCollector(
                self._hub,
                refusals=lambda: self._refusals,
                connections=lambda: self._connections,
                requests=lambda: self._http.requests,
            )
            self._registry = _metrics.open_registry(collector)
        return self._registry

    async def aclose(self) -> None:
        """Stop accepting, then shut the hub down; return when both are done.

        Idempotent. Cancelling the scope that runs :func:`serve_hub` does the same.
        """
        self._accept_scope.cancel()
        await self._stopped.wait()


async def serve_hub(
    hub: Hub,
    host: str | None,
    port: int,
    *,
    authenticate: Authenticator | None = None,
    allowed_origins: Iterable[str] = (),
    max_connections: int | None = None,
    handshake_timeout: float = 10.0,
    max_message_size: int = 1 << 20,
    index_html: bytes | None = None,
    api_key: str | None = None,
    metrics: str = "off",
    compression: Literal["deflate"] | None = "deflate",
    task_status: trio.TaskStatus[HubServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept WebSocket clients for ``hub`` on ``host``:``port``.

    Use it with ``server = await nursery.start(serve_hub, hub, host, port)``: it
    returns a :class:`HubServer` once listening, so that ``port=0`` works
    (``server.port`` is the real port). Each accepted client is served with
    :meth:`Hub.serve_client`, with the fast write path of :mod:`trio_hub`.

    Handshake policy, in order (see :ref:`handshake`):

    1. A client must send its request head within ``handshake_timeout``, or the
       TCP connection is dropped. Garbage gets 400.
    2. Past ``max_connections``: 503; clients already connected are unharmed.
    3. A plain HTTP request goes to the HTTP side (:ref:`http-api`):
       ``GET /`` gets the browser page (``index_html``), ``/api/...`` the
       HTTP API (with ``api_key``), ``GET /metrics`` the Prometheus metrics;
       other paths 404, other methods 405.
    4. Origin: if the request has an ``Origin`` header, its host must equal the
       ``Host`` header (gorilla's CheckOrigin), unless the origin is in
       ``allowed_origins`` (``"*"`` allows all). Otherwise 403.
    5. ``authenticate(request)`` returns the client's identity
       (:attr:`Client.identity`) or raises :class:`HandshakeRejection`.
    6. The upgrade; inbound messages over ``max_message_size`` close with 1009.
       With ``compression="deflate"``, permessage-deflate is negotiated with
       clients that offer it (see :ref:`compression`): each message is
       compressed once for all of them, and a compressed message from a client
       that inflates past ``max_message_size`` closes with 1009 too.

    Stopping (:meth:`HubServer.aclose`, or cancelling this task) stops
    accepting first, then shuts the hub down (drain, then 1001 to every client).

    Args:
        hub: The hub to register clients with.
        host: The address to bind, or ``None`` for all interfaces.
        port: The port to bind; 0 picks a free one.
        authenticate: Optional hook that admits or rejects each client.
        allowed_origins: Origins allowed besides the same-host one.
        max_connections: Optional limit on open connections.
        handshake_timeout: Seconds a client has to complete the handshake.
        max_message_size: The largest inbound message, in bytes.
        index_html: The page served on ``GET /``; ``None`` for the built-in page,
            ``b""`` to serve none (404).
        api_key: The key that the HTTP API (``POST /api/publish``, ``POST
            /api/broadcast``, ``GET /api/stats``) requires as
            ``Authorization: Bearer <key>``; ``None`` disables the API (404).
        metrics: ``"open"`` serves ``GET /metrics`` to anyone, ``"key"``
            requires ``api_key`` for it too, ``"off"`` (the default, so that
            no server exposes its figures without being asked to) serves none
            (404). ``python -m trio_hub serve`` passes ``"open"``.
        compression: ``"deflate"`` to negotiate permessage-deflate (RFC 7692)
            with clients that offer it, ``None`` to never compress.

            .. versionadded:: 0.2
        task_status: For ``nursery.start``.

    .. versionchanged:: 0.2
       The HTTP API and ``/metrics``: ``api_key`` and ``metrics``.
    """
    if max_connections is not None and max_connections < 1:
        raise ValueError(f"max_connections must be None or >= 1, got {max_connections!r}")
    if not handshake_timeout > 0:
        raise ValueError(f"handshake_timeout must be > 0, got {handshake_timeout!r}")
    if compression not in ("deflate", None):
        raise ValueError(f"compression must be 'deflate' or None, got {compression!r}")
    if metrics not in METRICS_MODES:
        raise ValueError(f"metrics must be one of {METRICS_MODES}, got {metrics!r}")
    if api_key is not None and not api_key:
        raise ValueError("api_key must not be empty; None disables the HTTP API")
    if metrics == "key" and api_key is None:
        raise ValueError("metrics='key' needs an api_key")
    page = default_index_html() if index_html is None else index_html
    http = HTTPSide(
        hub=hub,
        index_html=page,
        api_key=api_key.encode() if api_key is not None else None,
        metrics=metrics,
        max_body_size=max_message_size,
    )
    policy = _Policy(
        hub=hub,
        authenticate=authenticate,
        allowed_origins=frozenset(allowed_origins),
        max_connections=max_connections if max_connections is not None else math.inf,
        handshake_timeout=handshake_timeout,
        max_message_size=max_message_size,
        index_html=page,
        coalescer=WriteCoalescer(),
        http=http,
        flush_nursery=None,
        compression=compression == "deflate",
    )
    listeners = await trio.open_tcp_listeners(port, host=host)
    server = HubServer._create(hub, listeners, http)
    # The coalescer outlives accepting: it must flush for clients being drained.
    coalescer_scope = trio.CancelScope(shield=True)

    async def run_coalescer() -> None:
        with coalescer_scope:
            await policy.coalescer.run()

    try:
        async with trio.open_nursery() as handler_nursery:
            policy = replace(policy, flush_nursery=handler_nursery)
            handler_nursery.start_soon(run_coalescer)
            try:
                with server._accept_scope:
                    async with trio.open_nursery() as listen_nursery:
                        await listen_nursery.start(
                            partial(
                                trio.serve_listeners,
                                partial(_handle, policy, server),
                                listeners,
                                handler_nursery=handler_nursery,
                            )
                        )
                        logger.info("listening on %s", server.url)
                        task_status.started(server)
            finally:
                # Stop accepting first (leaving serve_listeners closed the
                # listeners), then the hub's own ordered shutdown. Connection
                # handlers are shielded, so they see it through: they end when
                # their client has been drained and closed with 1001.
                with trio.CancelScope(shield=True):
                    for listener in listeners:
                        await listener.aclose()
                    await hub.aclose()
                # What is left is handshakes in progress: cut them short.
                for scope in server._handler_scopes:
                    scope.cancel()
                coalescer_scope.cancel()
    finally:
        server._stopped.set()
        logger.info("server stopped")


@dataclass(frozen=True, slots=True, kw_only=True)
class _Policy:
    hub: Hub
    authenticate: Authenticator | None
    allowed_origins: frozenset[str]
    max_connections: float
    handshake_timeout: float
    max_message_size: int
    index_html: bytes
    coalescer: WriteCoalescer
    http: HTTPSide
    flush_nursery: trio.Nursery | None
    compression: bool


@dataclass(frozen=True, slots=True)
class _Head:
    method: str
    target: str
    headers: Mapping[str, str]


class _BadRequest(Exception):
    pass


async def _handle(policy: _Policy, server: HubServer, stream: trio.SocketStream) -> None:
    # Shielded: outer cancellation must not cut a client off before the hub has
    # drained it; serve_hub cancels handshakes itself once the hub is closed.
    server._connections += 1
    try:
        scope = trio.CancelScope(shield=True)
        server._handler_scopes.add(scope)
        try:
            with scope:
                # Two steps, so that nothing of the handshake stays alive in
                # this task's frames while the client is connected.
                admitted = await _handshake(policy, server, stream)
                client = None if admitted is None else await _upgrade(policy, stream, admitted)
        finally:
            server._handler_scopes.discard(scope)
        del scope, admitted
        if client is not None:
            # The client runs right here, in this connection's task, under
            # its own shielded scope: it reads, answers pings and closes the
            # connection itself, so an idle client costs this one task. It is
            # registered with the hub all the same, and hub shutdown waits for it.
            await client._run()
            logger.info(
                "client #%d disconnected: code %s %s",
                client.id,
                client.close_code,
                client.close_reason,
            )
    except Exception:
        logger.exception("error while serving a connection")
    finally:
        server._connections -= 1


async def _handshake(
    policy: _Policy, server: HubServer, stream: trio.SocketStream
) -> list[object] | None:
    """Apply the handshake policy; return what the upgrade needs, if admitted."""
    remote = _remote(stream)
    deadline = trio.current_time() + policy.handshake_timeout
    with trio.move_on_at(deadline) as head_scope:
        try:
            raw = await _read_head(stream)
        except trio.BrokenResourceError:
            # The peer reset the connection: its business, not a server error.
            logger.info("%s: connection lost during the handshake", _show(remote))
            server._refusals["lost"] += 1
            return None
    if head_scope.cancelled_caught:
        logger.info("%s: no handshake within %ss; dropped", _show(remote), policy.handshake_timeout)
        server._refusals["handshake_timeout"] += 1
        return None
    if raw is None:
        return None  # the peer closed before sending anything
    try:
        head_bytes, _, body_start = raw.partition(b"\r\n\r\n")
        head = _parse_head(head_bytes)
    except _BadRequest as exc:
        logger.info("%s: bad request: %s", _show(remote), exc)
        server._refusals["bad_request"] += 1
        await _respond(stream, HTTPStatus.BAD_REQUEST, f"Bad request: {exc}\n")
        return None
    if server._connections > policy.max_connections:
        logger.warning("%s: refused, connection limit reached", _show(remote))
        server._refusals["too_many_connections"] += 1
        await _respond(stream, HTTPStatus.SERVICE_UNAVAILABLE, "Too many connections\n")
        return None
    headers = head.headers
    if "websocket" not in headers.get("upgrade", "").lower():
        await _serve_plain_http(policy, server, stream, head, body_start, deadline)
        return None
    path, _, query = head.target.partition("?")
    request = HandshakeRequest(
        path=path,
        query=types.MappingProxyType(dict(parse_qsl(query))),
        headers=headers,
        remote=remote,
    )
    problem = _check_upgrade(headers)
    reason = "bad_upgrade"
    if problem is None:
        problem, reason = _check_origin(policy, headers), "origin"
    if problem is not None:
        status, body = problem
        logger.info("%s: refused (%d): %s", _show(remote), status, body.strip())
        server._refusals[reason] += 1
        await _respond(stream, status, body)
        return None
    if policy.hub.closed:
        server._refusals["shutting_down"] += 1
        await _respond(stream, HTTPStatus.SERVICE_UNAVAILABLE, "Shutting down\n")
        return None
    identity: object = None
    if policy.authenticate is not None:
        try:
            with trio.fail_at(deadline):
                identity = await policy.authenticate(request)
        except HandshakeRejection as rejection:
            logger.info("%s: rejected (%d): %s", _show(remote), rejection.status, rejection.body)
            server._refusals[f"rejected_{rejection.status}"] += 1
            await _respond(stream, rejection.status, rejection.body + "\n")
            return None
        except trio.TooSlowError:
            logger.warning("%s: authentication took too long; dropped", _show(remote))
            server._refusals["auth_timeout"] += 1
            await _respond(stream, HTTPStatus.SERVICE_UNAVAILABLE, "Authentication timed out\n")
            return None
        except Exception:
            logger.exception("%s: the authenticate hook raised", _show(remote))
            server._refusals["auth_error"] += 1
            await _respond(stream, HTTPStatus.INTERNAL_SERVER_ERROR, "Internal error\n")
            return None
        subject = getattr(identity, "subject", None)
        if subject is not None:
            logger.info("%s: authenticated as %r", _show(remote), subject)
    # What the connection needs of the request: the response (the accept key,
    # and permessage-deflate's answer, if agreed) and the bytes after the head.
    # A list, which _upgrade empties: nothing of it may stay alive in
    # _handle's frame for as long as the client is connected.
    offers = headers.get("sec-websocket-extensions")
    deflate = negotiate_deflate([offers]) if policy.compression and offers else None
    return [
        handshake_response(headers, deflate),
        raw[len(head_bytes) + 4 :],
        identity,
        deadline,
        remote,
        deflate,
    ]


async def _upgrade(
    policy: _Policy, stream: trio.SocketStream, admitted: list[object]
) -> Client | None:
    """Send the 101 response and register the client; return it, not yet running."""
    response, initial, identity, deadline, remote, deflate = admitted
    admitted.clear()
    assert isinstance(response, bytes)
    assert isinstance(initial, bytes)
    assert isinstance(deadline, float)
    assert remote is None or isinstance(remote, tuple)
    assert deflate is None or isinstance(deflate, DeflateParameters)
    with trio.move_on_at(deadline) as accept_scope:
        try:
            await stream.send_all(response)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            # The peer went away before our 101 response went out.
            logger.info("%s: connection lost during the handshake", _show(remote))
            await trio.aclose_forcefully(stream)
            return None
    if accept_scope.cancelled_caught:
        logger.info("%s: handshake did not complete; dropped", _show(remote))
        await trio.aclose_forcefully(stream)
        return None
    # What a write from broadcast() leaves over is flushed by a short-lived
    # task in the server's nursery: an idle connection runs none, and holds no
    # nursery of its own.
    writer = HubStream(
        stream, nursery=policy.flush_nursery, coalescer=policy.coalescer, gate=policy.hub._gate
    )
    connection = ServerConnection(
        stream,
        writer,
        max_message_size=policy.max_message_size,
        initial=initial,
        deflate=deflate,
        counters=policy.hub._compression,
    )
    info: JSONValue = None
    if isinstance(identity, Admission):
        admission = identity
        identity, info = admission.identity, admission.info
    try:
        client = policy.hub._add_client(connection, identity=identity, info=info)
    except ValueError:
        logger.exception("%s: the authenticate hook returned unusable info", _show(remote))
        with trio.move_on_after(_RESPONSE_TIMEOUT):
            await connection.close(CloseCode.INTERNAL_ERROR, "internal error")
        return None
    except HubClosedError:
        with trio.move_on_after(_RESPONSE_TIMEOUT):
            await connection.close(CloseCode.GOING_AWAY, "shutting down")
        return None
    logger.info("client #%d connected from %s", client.id, _show(remote))
    return client


async def _read_head(stream: trio.SocketStream) -> bytes | None:
    """Read up to the end of the HTTP request head; keep any bytes after it."""
    buffer = bytearray()
    while b"\r\n\r\n" not in buffer:
        if len(buffer) > _MAX_HEAD_BYTES:
            return bytes(buffer)  # _parse_head rejects it
        data = await stream.receive_some(4096)
        if not data:
            return bytes(buffer) if buffer else None
        buffer += data
    return bytes(buffer)


def _parse_head(head: bytes) -> _Head:
    if len(head) > _MAX_HEAD_BYTES:
        raise _BadRequest("request head too large")
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        raise _BadRequest("not an HTTP request") from None
    request_line, *header_lines = text.split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1].startswith("/"):
        raise _BadRequest("not an HTTP/1.1 request")
    method, target, _ = parts
    headers: dict[str, str] = {}
    for line in header_lines:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise _BadRequest(f"malformed header line {line[:40]!r}")
        key = name.lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return _Head(method, target, types.MappingProxyType(headers))


def _check_upgrade(headers: Mapping[str, str]) -> tuple[int, str] | None:
    if "upgrade" not in headers.get("connection", "").lower():
        return HTTPStatus.BAD_REQUEST, "Missing 'Connection: Upgrade'\n"
    if headers.get("sec-websocket-version") != "13":
        return HTTPStatus.UPGRADE_REQUIRED, "Only WebSocket version 13 is supported\n"
    if not headers.get("sec-websocket-key"):
        return HTTPStatus.BAD_REQUEST, "Missing Sec-WebSocket-Key\n"
    return None


def _check_origin(policy: _Policy, headers: Mapping[str, str]) -> tuple[int, str] | None:
    origin = headers.get("origin")
    if origin is None or "*" in policy.allowed_origins or origin in policy.allowed_origins:
        return None
    origin_host = urlsplit(origin).netloc.lower()
    if origin_host and origin_host == headers.get("host", "").lower():
        return None
    return HTTPStatus.FORBIDDEN, f"Origin {origin!r} is not allowed\n"


async def _serve_plain_http(
    policy: _Policy,
    server: HubServer,
    stream: trio.SocketStream,
    head: _Head,
    body_start: bytes,
    deadline: float,
) -> None:
    # The page, the HTTP API and /metrics: trio_hub/_http.py.
    await serve_request(
        policy.http, server, stream, head.method, head.target, head.headers, body_start, deadline
    )


async def _respond(
    stream: trio.SocketStream,
    status: int,
    body: str | bytes,
    *,
    content_type: str = "text/plain; charset=utf-8",
    head_only: bool = False,
) -> None:
    data = body.encode() if isinstance(body, str) else body
    phrase = HTTPStatus(status).phrase
    response = (
        f"HTTP/1.1 {status} {phrase}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n"
        "Cache-Control: no-store\r\n\r\n"
    ).encode("ascii")
    with trio.move_on_after(_RESPONSE_TIMEOUT):
        try:
            await stream.send_all(response if head_only else response + data)
            await stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


def _remote(stream: trio.SocketStream) -> tuple[str, int] | None:
    try:
        address = stream.socket.getpeername()
    except OSError:
        return None
    return (str(address[0]), int(address[1]))


def _show(remote: tuple[str, int] | None) -> str:
    return "unknown peer" if remote is None else f"{remote[0]}:{remote[1]}"
