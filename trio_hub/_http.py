"""The plain-HTTP side of :func:`serve_hub`: the page, the publish API, ``/metrics``.

One request per connection (every response says ``Connection: close``): the
endpoints are for backends and scrapers, which send one request at a time, and
WebSocket clients never come here. The request head has been read by
``_server``; this module reads the body (``Content-Length`` only), checks the
key, acts, and answers, JSON for the API.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Final

import trio

from . import _codec
from ._auth import Grant
from ._errors import HubClosedError, InvalidJSONError
from ._history import HistoryUnavailableError
from ._message import JSONValue, _json_kind
from ._protocol import _TOPIC_AND_DATA, _ProtocolError, _topic_of, broadcast_message, publication

if TYPE_CHECKING:
    from ._hub import Hub
    from ._server import HubServer

__all__ = ["METRICS_MODES", "HTTPSide", "serve_metrics", "serve_request", "statistics_json"]

logger: Final = logging.getLogger("trio_hub")

METRICS_MODES: Final = ("open", "key", "off")
_RESPONSE_TIMEOUT: Final = 5.0
# After an answer that left part of the request unread (401, 413...), the rest is
# read and discarded for this long, so that closing does not reset the
# connection before the client has read the answer.
_LINGER: Final = 1.0
_LINGER_BYTES: Final = 4 << 20
_JSON: Final = "application/json"
_TEXT: Final = "text/plain; charset=utf-8"

_API_ROUTES: Final[Mapping[str, str]] = {
    "/api/publish": "POST",
    "/api/broadcast": "POST",
    "/api/stats": "GET",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class HTTPSide:
    """What the plain-HTTP side of one server needs."""

    hub: Hub
    index_html: bytes
    api_key: bytes | None
    metrics: str
    max_body_size: int
    # Filled in by the server: ``(endpoint, status) -> count``.
    requests: Counter[tuple[str, int]] = dataclasses.field(default_factory=Counter)


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    body: bytes
    content_type: str = _JSON
    headers: tuple[tuple[str, str], ...] = ()


class _Refusal(Exception):
    """A request the API cannot act on; becomes a JSON error answer."""

    def __init__(
        self, status: int, code: str, detail: str, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        super().__init__(status, code, detail)
        self.answer = _Answer(
            status, _codec.encode({"error": code, "detail": detail}) + b"\n", _JSON, headers
        )


@dataclass(slots=True, kw_only=True)
class _Request:
    method: str
    path: str
    headers: Mapping[str, str]
    stream: trio.SocketStream
    rest: bytes
    deadline: float
    body_read: bool = False

    @property
    def has_body(self) -> bool:
        headers = self.headers
        return "transfer-encoding" in headers or headers.get("content-length", "0") != "0"


async def serve_request(
    side: HTTPSide,
    server: HubServer,
    stream: trio.SocketStream,
    method: str,
    target: str,
    headers: Mapping[str, str],
    rest: bytes,
    deadline: float,
) -> None:
    """Answer one plain HTTP request whose head has been read (``rest`` follows it)."""
    request = _Request(
        method=method,
        path=target.partition("?")[0],
        headers=headers,
        stream=stream,
        rest=rest,
        deadline=deadline,
    )
    try:
        answer = await _route(side, server, request)
    except _Refusal as refusal:
        answer = refusal.answer
    except Exception:
        # A bug: this request alone gets a 500, and it is logged.
        logger.exception("error while answering %s %s", method, request.path[:100])
        answer = _Refusal(
            HTTPStatus.INTERNAL_SERVER_ERROR, "internal_error", "internal error"
        ).answer
    side.requests[(_endpoint(request.path), answer.status)] += 1
    if answer.status >= 400:
        try:
            peer = "{}:{}".format(*stream.socket.getpeername()[:2])
        except OSError:
            peer = "unknown peer"
        logger.info("%s: %s %s: %d", peer, method, request.path[:100], answer.status)
    await _send(stream, answer, head_only=method == "HEAD")
    if request.has_body and not request.body_read:
        await _linger(stream)


def _endpoint(path: str) -> str:
    if path in _API_ROUTES or path == "/metrics":
        return path
    return "page" if path in ("/", "/index.html") else "other"


async def _route(side: HTTPSide, server: HubServer, request: _Request) -> _Answer:
    method, path, headers = request.method, request.path, request.headers
    if path in ("/", "/index.html") and side.index_html:
        _allow(method, "GET")
        return _Answer(HTTPStatus.OK, side.index_html, "text/html; charset=utf-8")
    if path == "/metrics" and side.metrics != "off":
        _allow(method, "GET")
        if side.metrics == "key":
            _check_key(side, headers)
        from . import _metrics

        return _Answer(
            HTTPStatus.OK, _metrics.render(server.metrics_registry), _metrics.CONTENT_TYPE
        )
    expected = _API_ROUTES.get(path)
    if expected is None:
        if path.startswith("/api/"):
            raise _Refusal(HTTPStatus.NOT_FOUND, "not_found", f"no API endpoint {path!r}")
        return _Answer(HTTPStatus.NOT_FOUND, b"Not found\n", _TEXT)
    if side.api_key is None:
        raise _Refusal(
            HTTPStatus.NOT_FOUND,
            "api_disabled",
            "the HTTP API is disabled: the server needs an API key (--api-key)",
        )
    _allow(method, expected)
    _check_key(side, headers)
    if path == "/api/stats":
        return _Answer(HTTPStatus.OK, _codec.encode(statistics_json(side.hub, server)) + b"\n")
    body = await _read_json_body(side, request)
    try:
        if path == "/api/publish":
            reply = await _publish(side.hub, body)
        else:
            reply = _broadcast(side.hub, body)
    except _ProtocolError as exc:
        raise _Refusal(HTTPStatus.BAD_REQUEST, exc.code, exc.detail) from None
    except HubClosedError:
        raise _Refusal(
            HTTPStatus.SERVICE_UNAVAILABLE, "shutting_down", "the hub is shutting down"
        ) from None
    return _Answer(HTTPStatus.OK, _codec.encode(reply) + b"\n")


def _allow(method: str, expected: str) -> None:
    allowed = ("GET", "HEAD") if expected == "GET" else (expected,)
    if method not in allowed:
        raise _Refusal(
            HTTPStatus.METHOD_NOT_ALLOWED,
            "method_not_allowed",
            f"use {' or '.join(allowed)}, not {method}",
            (("Allow", ", ".join(allowed)),),
        )


def _check_key(side: HTTPSide, headers: Mapping[str, str]) -> None:
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    expected = side.api_key
    # compare_digest: the time taken must not tell how much of a guess was right.
    if (
        expected is None
        or scheme.lower() != "bearer"
        or not hmac.compare_digest(credentials.strip().encode(), expected)
    ):
        raise _Refusal(
            HTTPStatus.UNAUTHORIZED,
            "unauthorized",
            "send the API key as 'Authorization: Bearer <key>'",
            (("WWW-Authenticate", 'Bearer realm="trio_hub"'),),
        )


async def _read_json_body(side: HTTPSide, request: _Request) -> JSONValue:
    headers, stream = request.headers, request.stream
    if "transfer-encoding" in headers:
        raise _Refusal(
            HTTPStatus.LENGTH_REQUIRED,
            "length_required",
            "send the body with a Content-Length (chunked bodies are not supported)",
        )
    text = headers.get("content-length")
    if text is None:
        raise _Refusal(HTTPStatus.LENGTH_REQUIRED, "length_required", "send a Content-Length")
    if not text.isdigit() or not text.isascii():
        raise _Refusal(HTTPStatus.BAD_REQUEST, "bad_request", f"bad Content-Length {text[:40]!r}")
    length = int(text)
    if length > side.max_body_size:
        raise _Refusal(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            "too_large",
            f"the body is {length} bytes; at most {side.max_body_size} are allowed",
        )
    media_type = headers.get("content-type", _JSON).partition(";")[0].strip().lower()
    if media_type != _JSON:
        raise _Refusal(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            f"send the body as {_JSON}, not {media_type!r}",
        )
    if headers.get("expect", "").lower() == "100-continue":
        # curl asks before sending a body over 1 kB; the checks above have passed.
        with trio.move_on_after(_RESPONSE_TIMEOUT):
            await stream.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
    body = bytearray(request.rest[:length])
    with trio.move_on_at(request.deadline) as scope:
        while len(body) < length:
            data = await stream.receive_some(min(65536, length - len(body)))
            if not data:
                raise _Refusal(
                    HTTPStatus.BAD_REQUEST,
                    "bad_request",
                    f"the body ended after {len(body)} of {length} bytes",
                )
            body += data
    if scope.cancelled_caught:
        raise _Refusal(HTTPStatus.REQUEST_TIMEOUT, "timeout", "the body did not arrive in time")
    request.body_read = True
    try:
        return _codec.decode(bytes(body))  # type: ignore[return-value]
    except InvalidJSONError as exc:
        raise _Refusal(HTTPStatus.BAD_REQUEST, "invalid_json", str(exc)) from None


async def _publish(hub: Hub, body: JSONValue) -> dict[str, JSONValue]:
    # The same checks, and the same error codes, as the wire protocol's publish.
    topic = _topic_of("publish", body, _TOPIC_AND_DATA)
    assert isinstance(body, Mapping)
    message = publication(topic, body.get("data"))
    if not hub.has_history(topic):
        listeners = hub.publish(topic, message)
        return {"topic": topic, "listenerCount": listeners}
    # A topic with history: the reply says where the publication went, once
    # the history (with Redis, after a round trip) has numbered it.
    subscribers = hub._topics.get(topic)
    reply: dict[str, JSONValue] = {
        "topic": topic,
        "listenerCount": len(subscribers) if subscribers else 0,
    }
    try:
        position = await hub.publish_with_position(topic, message)
    except HistoryUnavailableError:
        # Delivered to this node's subscribers, unnumbered: no offset to give.
        return reply
    reply["offset"] = position.offset
    reply["epoch"] = position.epoch
    return reply


def _broadcast(hub: Hub, body: JSONValue) -> dict[str, JSONValue]:
    if not isinstance(body, Mapping):
        raise _ProtocolError(
            "invalid_payload", f"a broadcast body must be an object, got {_json_kind(body)}"
        )
    extra = body.keys() - {"payload"}
    if extra:
        raise _ProtocolError(
            "invalid_payload",
            f"unknown field(s) {sorted(extra)!r} in a broadcast body; only 'payload' allowed",
        )
    listeners = hub.broadcast(broadcast_message(body.get("payload")))
    return {"listenerCount": listeners}


def statistics_json(hub: Hub, server: HubServer) -> dict[str, JSONValue]:
    """The hub's statistics snapshot, and the server's, as JSON-ready data."""
    stats = hub.statistics()
    data: dict[str, JSONValue] = {
        field.name: _json_ready(getattr(stats, field.name)) for field in dataclasses.fields(stats)
    }
    data["subjects"] = _subjects(client.identity for client in hub.clients)
    data["connections"] = server.connections
    data["handshake_refusals"] = dict(server.refusals)
    return data


def _json_ready(value: object) -> JSONValue:
    # The snapshot holds read-only mappings and nested frozen snapshots
    # (backend, compression): plain dicts for the JSON encoder.
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            field.name: _json_ready(getattr(value, field.name))
            for field in dataclasses.fields(value)
        }
    if isinstance(value, Mapping):
        return {str(key): _json_ready(item) for key, item in value.items()}
    if isinstance(value, frozenset | set | tuple | list):
        return [_json_ready(item) for item in value]
    assert value is None or isinstance(value, bool | int | float | str)
    return value


def _subjects(identities: Iterable[object]) -> dict[str, JSONValue]:
    counts: Counter[str] = Counter()
    for identity in identities:
        if isinstance(identity, Grant) and identity.subject is not None:
            counts[identity.subject] += 1
    return dict(counts)


async def _send(stream: trio.SocketStream, answer: _Answer, *, head_only: bool) -> None:
    phrase = HTTPStatus(answer.status).phrase
    extra = "".join(f"{name}: {value}\r\n" for name, value in answer.headers)
    head = (
        f"HTTP/1.1 {answer.status} {phrase}\r\nContent-Type: {answer.content_type}\r\n"
        f"Content-Length: {len(answer.body)}\r\n{extra}Connection: close\r\n"
        "Cache-Control: no-store\r\n\r\n"
    ).encode("ascii")
    with trio.move_on_after(_RESPONSE_TIMEOUT):
        try:
            await stream.send_all(head if head_only else head + answer.body)
            await stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


async def _linger(stream: trio.SocketStream) -> None:
    discarded = 0
    with trio.move_on_after(_LINGER):
        try:
            while discarded < _LINGER_BYTES and (data := await stream.receive_some(65536)):
                discarded += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


async def serve_metrics(
    server: HubServer,
    host: str | None,
    port: int,
    *,
    handshake_timeout: float = 10.0,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``server``'s ``GET /metrics`` alone, on another address (``--metrics-address``)."""
    # Here, not at the top: _server imports this module.
    from ._server import _BadRequest, _parse_head, _read_head

    side = HTTPSide(hub=server.hub, index_html=b"", api_key=None, metrics="open", max_body_size=0)

    async def handle(stream: trio.SocketStream) -> None:
        deadline = trio.current_time() + handshake_timeout
        async with stream:
            with trio.move_on_at(deadline):
                try:
                    raw = await _read_head(stream)
                except trio.BrokenResourceError:
                    return
                if raw is None:
                    return
                head_bytes, _, rest = raw.partition(b"\r\n\r\n")
                try:
                    head = _parse_head(head_bytes)
                except _BadRequest as exc:
                    await _send(
                        stream,
                        _Answer(HTTPStatus.BAD_REQUEST, f"Bad request: {exc}\n".encode(), _TEXT),
                        head_only=False,
                    )
                    return
                await serve_request(
                    side, server, stream, head.method, head.target, head.headers, rest, deadline
                )

    listeners = await trio.open_tcp_listeners(port, host=host)
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handle, listeners)
        logger.info(
            "serving /metrics on http://%s:%d/metrics",
            *listeners[0].socket.getsockname()[:2],
        )
        task_status.started(listeners)
