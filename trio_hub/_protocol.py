"""The wire protocol of the ready server (``python -m trio_hub serve``).

It is an ``on_message`` handler, :func:`protocol_handler`, so that any hub can
speak it. It is a superset of the websocket-shootout benchmark protocol (``echo``
and ``broadcast``), so that load tools written for that benchmark drive the
server unchanged; topics are an addition.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Final, TypeAlias

from . import _codec
from ._auth import Grant, InvalidTokenError
from ._errors import HubClosedError
from ._history import HistoryResult, HistoryUnavailableError, StreamPosition
from ._message import JSONValue, Message, _json_kind
from .backends._base import BackendUnavailableError

if TYPE_CHECKING:
    from ._client import Client

__all__ = ["MAX_TOPICS_PER_CLIENT", "MAX_TOPIC_LENGTH", "protocol_handler"]

logger: Final = logging.getLogger("trio_hub.protocol")

MAX_TOPIC_LENGTH: Final = 128
"""The longest topic name, in characters, that the wire protocol accepts."""

MAX_TOPICS_PER_CLIENT: Final = 100
"""How many topics one client may be subscribed to at once through the wire protocol."""


class _ProtocolError(Exception):
    """A message the protocol cannot act on; it becomes an ``error`` reply."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(code, detail)
        self.code = code
        self.detail = detail


async def protocol_handler(client: Client, message: Message) -> None:
    """Answer one inbound message as the wire protocol says; an ``on_message`` handler.

    ``python -m trio_hub serve`` runs this handler. Pass it to
    :func:`~trio_hub.open_hub` to serve the same protocol from your own program::

        >>> import trio
        >>> from trio_websocket import open_websocket_url
        >>> from trio_hub import open_hub, protocol_handler, serve_hub
        >>> async def main() -> None:
        ...     async with (
        ...         open_hub(on_message=protocol_handler) as hub,
        ...         trio.open_nursery() as nursery,
        ...     ):
        ...         server = await nursery.start(serve_hub, hub, "127.0.0.1", 0)
        ...         async with open_websocket_url(server.url) as connection:
        ...             await connection.send_message('{"type": "echo", "payload": "hi"}')
        ...             print(await connection.get_message())
        ...         await server.aclose()
        >>> trio.run(main)
        {"type":"echo","payload":"hi"}

    Or call it from your own handler, for the types that you do not handle::

        >>> from trio_hub import Client, Message
        >>> from trio_hub.testing import open_test_hub
        >>> async def on_message(client: Client, message: Message) -> None:
        ...     if message.type == "whoami":
        ...         client.send(Message("you are", str(client.identity)))
        ...     else:
        ...         await protocol_handler(client, message)
        >>> async def main() -> None:
        ...     async with open_test_hub(on_message=on_message) as test_hub:
        ...         browser = test_hub.connect(identity="alice")
        ...         await browser.send(Message("whoami"))
        ...         await browser.send(Message("echo", "hi"))
        ...         print(await browser.receive())
        ...         print(await browser.receive())
        >>> trio.run(main)
        Message('you are', 'alice')
        Message('echo', 'hi')

    Every frame is a JSON text frame holding ``{"type": ..., "payload": ...}``.
    What a client sends, and what it gets:

    * ``echo`` with any payload: the sender gets ``echo`` with the same payload.
    * ``broadcast`` with any payload: every client, the sender included, gets
      ``broadcast`` with the same payload; then the sender gets
      ``{"type": "broadcastResult", "payload": <the same>, "listenerCount": N}``
      (``listenerCount`` sits beside the payload, as websocket-shootout has it).
    * ``subscribe`` with ``{"topic": T}``: the sender gets ``subscribed``
      ``{"topic": T}``. Subscribing twice is harmless. On a topic with history
      (:ref:`wire-recovery`), ``subscribed`` also carries ``"offset"`` (the
      topic's last offset) and ``"epoch"``, and ``subscribe`` may carry
      ``"recover": {"offset": N, "epoch": E}``: ``subscribed`` then says
      ``"recovered": true`` and is followed by every publication after ``N``
      as ordinary ``message`` frames, before any later one, or says
      ``"recovered": false`` and replays nothing.
    * ``unsubscribe`` with ``{"topic": T}``: the sender gets ``unsubscribed``
      ``{"topic": T}``, whether it was subscribed or not.
    * ``publish`` with ``{"topic": T, "data": X}`` (``data`` defaults to
      ``null``): each subscriber of T, the sender too if subscribed, gets
      ``message`` ``{"topic": T, "data": X}`` (with ``"offset": N`` on a
      topic with history); then the sender gets
      ``publishResult`` ``{"topic": T, "listenerCount": N}``.
    * ``presence`` with ``{"topic": T}``, for a topic the sender is subscribed
      to, on a hub that tracks presence: the sender gets ``presence``
      ``{"topic": T, "clients": [E, ...]}``, one entry per connection on every
      node, the sender's own included. Each entry ``E`` is
      ``{"id": "<client id>", "identity": "<str>" | null, "info": <JSON> | null}``
      (:meth:`PresenceInfo.to_json <trio_hub.PresenceInfo.to_json>`).

    When the hub sends presence events (``open_hub(presence_events=...)``, the
    server's ``--presence``), each subscriber of T also gets ``join``
    ``{"topic": T, "client": E}`` when another connection subscribes to T, and
    ``leave`` ``{"topic": T, "client": E}`` when one unsubscribes, disconnects,
    or its node dies (within the backend's bound). A connection gets neither
    for itself: it has its ``subscribed``/``unsubscribed`` reply.

    A topic is a non-empty string of at most :data:`MAX_TOPIC_LENGTH`
    characters, and one client may hold at most :data:`MAX_TOPICS_PER_CLIENT`
    subscriptions, so that the memory one client can make the hub hold stays
    bounded.

    * ``refresh`` with ``{"token": T}``: a fresh connection token, for a
      client whose identity is a :class:`Grant` from
      :class:`JWTAuthenticator`; the sender gets ``refreshed`` ``{"expires":
      E, "unsubscribed": [...]}`` (the topics the new token no longer allows,
      which it has left).

    Permissions: when the client's :attr:`~Client.identity` is a
    :class:`Grant`, a ``subscribe`` needs :meth:`Grant.may_subscribe`, and a
    ``publish`` or ``broadcast`` :meth:`Grant.may_publish`; a refusal is an
    ``error`` of code ``forbidden``, and the connection stays open. Any other
    identity may do everything.

    Error handling:
        A message it cannot act on is answered, to the sender alone, with
        ``{"type": "error", "payload": {"code": C, "detail": "<text>"}}``, and
        the connection stays open. ``C`` is ``unknown_type`` (no such message
        type), ``invalid_payload`` (the payload does not have the shape the
        type needs: not an object, a missing, empty, non-string or too long
        topic, an unknown field, or a malformed ``recover``), ``limit_exceeded``
        (one ``subscribe`` too many), ``forbidden`` (see above), ``invalid_token``
        (a ``refresh`` whose token is refused), ``history_unavailable`` (a
        ``subscribe`` on a topic with history while the shared history is
        unreachable; the client is not subscribed), ``not_subscribed``
        (``presence`` for a topic the sender is not subscribed to),
        ``presence_disabled`` (``presence`` on a hub that does not track it) or
        ``unavailable`` (the shared presence cannot be read now, during a
        backend outage). The hub itself answers frames that are not JSON
        (``invalid_json``) or not an envelope (``invalid_envelope``) before any
        handler sees them.

    It never waits: each reply, broadcast and publication is queued at once,
    so a slow client only ever slows itself.

    Args:
        client: The client that sent ``message``.
        message: The decoded message.
    """
    if message.type == "presence":
        # The one request that may wait: with a shared store it reads Redis.
        try:
            await _presence(client, message.payload)
        except _ProtocolError as exc:
            _reply_error(client, exc.code, exc.detail)
        except HubClosedError:
            return
        return
    action = _ACTIONS.get(message.type)
    if action is None:
        _reply_error(
            client,
            "unknown_type",
            f"unknown message type {message.type!r}; expected one of {_KNOWN_TYPES}",
        )
        return
    try:
        pending = action(client, message.payload)
        if pending is not None:
            await pending
    except _ProtocolError as exc:
        _reply_error(client, exc.code, exc.detail)
    except HistoryUnavailableError as exc:
        _reply_error(client, "history_unavailable", str(exc))
    except HubClosedError:
        # Only reachable when a caller's own handler awaited something before
        # calling us and the hub began shutting down meanwhile: the client is
        # about to be closed with 1001, and there is nobody left to answer.
        return


def _reply_error(client: Client, code: str, detail: str) -> None:
    logger.debug("client #%d: %s: %s", client.id, code, detail)
    try:
        client.send(Message("error", {"code": code, "detail": detail}))
    except HubClosedError:
        return


def _echo(client: Client, payload: JSONValue) -> None:
    # Payloads come out of the JSON decoder: no need to validate them again.
    client.send(Message._trusted("echo", payload, None))


def _forbid(client: Client, action: str, topic: str | None) -> None:
    """Raise ``forbidden`` unless the client's :class:`Grant` allows ``action``."""
    grant = client.identity
    if not isinstance(grant, Grant):
        return  # no permission hook attached: everything is allowed
    who = "this client" if grant.subject is None else repr(grant.subject)
    if action == "subscribe":
        assert topic is not None
        if grant.may_subscribe(topic):
            return
        raise _ProtocolError("forbidden", f"{who} may not subscribe to {topic!r}")
    if grant.may_publish(topic):
        return
    what = "broadcast on this server" if topic is None else f"publish on {topic!r}"
    raise _ProtocolError("forbidden", f"{who} may not {what}")


def broadcast_message(payload: JSONValue) -> Message:
    """The frame every client gets for a broadcast of ``payload`` (decoded JSON)."""
    return Message._trusted("broadcast", payload, None)


def publication(topic: str, data: JSONValue) -> Message:
    """The frame a subscriber of ``topic`` gets for a publication of ``data`` (decoded JSON)."""
    return Message._trusted("message", {"topic": topic, "data": data}, None)


def _broadcast(client: Client, payload: JSONValue) -> None:
    _forbid(client, "broadcast", None)
    count = client.hub.broadcast(broadcast_message(payload))
    # websocket-shootout puts listenerCount beside the payload, which the strict
    # envelope cannot hold: encode the frame ourselves and hand over the bytes.
    data = _codec.encode({"type": "broadcastResult", "payload": payload, "listenerCount": count})
    client.send(Message._trusted("broadcastResult", payload, data))


def _subscribe(client: Client, payload: JSONValue) -> Awaitable[None] | None:
    topic = _topic_of("subscribe", payload, _SUBSCRIBE_FIELDS, required=1)
    assert isinstance(payload, Mapping)  # _topic_of checked it
    _forbid(client, "subscribe", topic)
    since = _recover_position(payload["recover"]) if "recover" in payload else None
    topics = client.topics
    if topic not in topics and len(topics) >= MAX_TOPICS_PER_CLIENT:
        raise _ProtocolError(
            "limit_exceeded",
            f"a client may be subscribed to at most {MAX_TOPICS_PER_CLIENT} topics; "
            "unsubscribe from one first",
        )
    if client.hub.has_history(topic):
        return _subscribe_with_history(client, topic, since, "recover" in payload)
    client.subscribe(topic)
    reply: dict[str, JSONValue] = {"topic": topic}
    if "recover" in payload:
        # Nothing to recover from: a topic without history has no positions.
        reply["recovered"] = False
    client.send(Message._trusted("subscribed", reply, None))
    return None


async def _subscribe_with_history(
    client: Client, topic: str, since: StreamPosition | None, asked: bool
) -> None:
    def announce(result: HistoryResult) -> Message:
        reply: dict[str, JSONValue] = {
            "topic": topic,
            "offset": result.position.offset,
            "epoch": result.position.epoch,
        }
        if asked:
            reply["recovered"] = result.recovered
        return Message._trusted("subscribed", reply, None)

    # The reply goes first, then the replayed publications, then live ones.
    await client.recover(topic, since, announce=announce)


def _recover_position(value: JSONValue) -> StreamPosition | None:
    """Return the position in a ``recover`` field, or raise ``invalid_payload``."""
    if not isinstance(value, Mapping) or value.keys() != {"offset", "epoch"}:
        raise _ProtocolError(
            "invalid_payload",
            "'recover' must be an object with exactly 'offset' and 'epoch', "
            f"got {_json_kind(value) if not isinstance(value, Mapping) else sorted(value)!r}",
        )
    offset, epoch = value["offset"], value["epoch"]
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise _ProtocolError(
            "invalid_payload", f"'recover.offset' must be an integer >= 0, got {offset!r}"
        )
    if not isinstance(epoch, str):
        raise _ProtocolError(
            "invalid_payload", f"'recover.epoch' must be a string, got {_json_kind(epoch)}"
        )
    return StreamPosition(offset, epoch)


def _unsubscribe(client: Client, payload: JSONValue) -> None:
    topic = _topic_of("unsubscribe", payload, _TOPIC_ONLY)
    client.unsubscribe(topic)
    client.send(Message._trusted("unsubscribed", {"topic": topic}, None))


def _publish(client: Client, payload: JSONValue) -> None:
    topic = _topic_of("publish", payload, _TOPIC_AND_DATA)
    assert isinstance(payload, Mapping)  # _topic_of checked it
    _forbid(client, "publish", topic)
    count = client.hub.publish(topic, publication(topic, payload.get("data")))
    client.send(Message._trusted("publishResult", {"topic": topic, "listenerCount": count}, None))


async def _presence(client: Client, payload: JSONValue) -> None:
    topic = _topic_of("presence", payload, _TOPIC_ONLY)
    hub = client.hub
    if not hub.presence_enabled:
        raise _ProtocolError("presence_disabled", "this hub does not track presence")
    # Presence follows the right to subscribe: whoever may not hear a topic
    # may not see who is on it either.
    if topic not in client.topics:
        raise _ProtocolError("not_subscribed", f"subscribe to {topic!r} before asking who is on it")
    try:
        entries = await hub.presence(topic)
    except BackendUnavailableError as exc:
        raise _ProtocolError("unavailable", f"presence cannot be read now: {exc}") from None
    if client.closed:
        return
    client.send(
        Message._trusted(
            "presence", {"topic": topic, "clients": [entry.to_json() for entry in entries]}, None
        )
    )


def _refresh(client: Client, payload: JSONValue) -> None:
    if not isinstance(payload, Mapping) or payload.keys() != {"token"}:
        raise _ProtocolError(
            "invalid_payload", "a 'refresh' payload must be an object with 'token' alone"
        )
    token = payload["token"]
    if not isinstance(token, str) or not token:
        raise _ProtocolError("invalid_payload", "'token' must be a non-empty string")
    grant = client.identity
    if not isinstance(grant, Grant):
        raise _ProtocolError("invalid_token", "this server does not use connection tokens")
    try:
        grant.refresh(token)
    except InvalidTokenError as exc:
        raise _ProtocolError("invalid_token", str(exc)) from None
    # The new token may allow fewer topics: leave those it no longer allows.
    dropped = sorted(topic for topic in client.topics if not grant.may_subscribe(topic))
    for topic in dropped:
        client.unsubscribe(topic)
    reply: dict[str, JSONValue] = {"expires": grant.expires, "unsubscribed": list(dropped)}
    client.send(Message._trusted("refreshed", reply, None))


def _topic_of(
    message_type: str, payload: JSONValue, fields: tuple[str, ...], required: int = 0
) -> str:
    """Return the payload's topic, or raise ``invalid_payload`` saying what is wrong."""
    if not isinstance(payload, Mapping):
        expected = " and ".join(repr(field) for field in fields[: required or None])
        raise _ProtocolError(
            "invalid_payload",
            f"a {message_type!r} payload must be an object with {expected}, "
            f"got {_json_kind(payload)}",
        )
    # Strict, like the envelope: a misspelt field is reported, not ignored.
    extra = payload.keys() - set(fields)
    if extra:
        allowed = " and ".join(repr(field) for field in fields)
        raise _ProtocolError(
            "invalid_payload",
            f"unknown field(s) {sorted(extra)!r} in a {message_type!r} payload; "
            f"only {allowed} allowed",
        )
    if "topic" not in payload:
        raise _ProtocolError("invalid_payload", f"a {message_type!r} payload needs a 'topic'")
    topic = payload["topic"]
    if not isinstance(topic, str):
        raise _ProtocolError(
            "invalid_payload", f"'topic' must be a string, got {_json_kind(topic)}"
        )
    if not topic:
        raise _ProtocolError("invalid_payload", "'topic' must not be empty")
    if len(topic) > MAX_TOPIC_LENGTH:
        raise _ProtocolError(
            "invalid_payload",
            f"'topic' is {len(topic)} characters long; at most {MAX_TOPIC_LENGTH} are allowed",
        )
    return topic


_Action: TypeAlias = "Callable[[Client, JSONValue], Awaitable[None] | None]"

_ACTIONS: Final[Mapping[str, _Action]] = {
    "echo": _echo,
    "broadcast": _broadcast,
    "subscribe": _subscribe,
    "unsubscribe": _unsubscribe,
    "publish": _publish,
    "refresh": _refresh,
}
_KNOWN_TYPES: Final = ", ".join(repr(name) for name in [*_ACTIONS, "presence"])
_TOPIC_ONLY: Final = ("topic",)
_SUBSCRIBE_FIELDS: Final = ("topic", "recover")
_TOPIC_AND_DATA: Final = ("topic", "data")
