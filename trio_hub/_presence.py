"""Presence: who is subscribed to a topic, with optional ``join`` and ``leave`` events.

The hub calls one small hook, :class:`_PresenceTracker`, when a client's
subscription to a topic begins or ends; everything else about presence lives
here (and, for several nodes, in the backend's :class:`PresenceStore`).

The rules (see :doc:`/howto/presence`):

* An entry is one *connection* on one topic. A client that subscribes twice
  has one entry and causes one ``join``; one identity with three connections
  has three entries, and each connection's arrival and departure is its own
  ``join`` and ``leave``. Applications that show people rather than
  connections group the entries by :attr:`PresenceInfo.identity`.
* A ``join`` goes to the topic's other subscribers (the one that joins knows:
  it asked), and a ``leave`` to those that remain; on every node, once each.
* With a shared store (:class:`~trio_hub.backends.redis.RedisBackend`), a node
  that dies without saying goodbye drops out of every topic's presence within
  the store's documented bound, and each surviving node sends the ``leave``
  events to its own subscribers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol, TypeAlias, final, runtime_checkable

import trio

from . import _codec
from ._errors import MessageEncodeError
from ._message import JSONValue, Message

if TYPE_CHECKING:
    from ._client import Client
    from ._hub import Hub

__all__ = [
    "MAX_PRESENCE_INFO_SIZE",
    "PresenceEvents",
    "PresenceInfo",
    "PresenceSink",
    "PresenceStore",
]

logger: Final = logging.getLogger("trio_hub")

MAX_PRESENCE_INFO_SIZE: Final = 1024
"""The largest ``info`` a client may carry, in bytes of encoded JSON.

Presence is copied into every ``join``, ``leave`` and ``presence`` reply, and
(with Redis) into the shared store, so it stays small: a display name, an
avatar URL, a colour.
"""

PresenceEvents: TypeAlias = "bool | Callable[[str], bool]"
"""Which topics send ``join``/``leave`` events: all, none, or those a predicate accepts."""


@final
@dataclass(frozen=True, slots=True)
class PresenceInfo:
    """One connection's entry in a topic's presence.

    Attributes:
        client_id: Unique among the connections of every node that shares the
            presence: :attr:`Client.id <trio_hub.Client.id>` as a string on one
            node; ``"<node id>.<client id>"`` with a shared store.
        identity: The client's :attr:`~trio_hub.Client.identity` if it is a
            ``str`` (what ``authenticate`` returned), or its ``subject`` if
            that is a ``str`` (with connection tokens: the token's ``sub``),
            else ``None``: other objects may not be shown to other clients.
        info: What the application attached at registration
            (:meth:`Hub.register(info=...) <trio_hub.Hub.register>`), at most
            :data:`MAX_PRESENCE_INFO_SIZE` bytes of JSON; ``None`` if nothing.

    .. versionadded:: 0.2
    """

    client_id: str
    identity: str | None
    info: JSONValue = None

    def to_json(self) -> JSONValue:
        """The entry as the wire protocol sends it: ``{"id", "identity", "info"}``."""
        return {"id": self.client_id, "identity": self.identity, "info": self.info}

    @classmethod
    def _from_json(cls, value: JSONValue) -> PresenceInfo:
        # Raises ValueError: the value comes from another node or from Redis.
        # Plain type checks: this runs once per entry of a presence read.
        if type(value) is not dict:
            raise ValueError(f"not a presence entry: {value!r}")
        client_id = value.get("id")
        identity = value.get("identity")
        if type(client_id) is not str or (identity is not None and type(identity) is not str):
            raise ValueError(f"not a presence entry: {value!r}")
        return cls(client_id, identity, value.get("info"))


def check_info(info: JSONValue) -> JSONValue:
    """Return ``info`` if it may be attached to a client, or raise ``ValueError``."""
    if info is None:
        return None
    try:
        size = len(_codec.encode(info))
    except MessageEncodeError as exc:
        raise ValueError(f"info must be JSON: {exc}") from exc
    if size > MAX_PRESENCE_INFO_SIZE:
        raise ValueError(
            f"info is {size} bytes of JSON; at most {MAX_PRESENCE_INFO_SIZE} are allowed"
        )
    return info


def presence_identity(identity: object) -> str | None:
    """What presence shows of a client's identity.

    A ``str`` as is; an object with a ``str`` attribute ``subject`` (a
    connection token's grant: the token's ``sub``) by that subject; nothing
    of anything else.
    """
    if isinstance(identity, str):
        return identity
    subject = getattr(identity, "subject", None)
    return subject if isinstance(subject, str) else None


def event_message(kind: str, topic: str, entry: PresenceInfo) -> Message:
    """A ``join`` or ``leave`` event: ``{"topic": T, "client": <entry>}``."""
    return Message._trusted(kind, {"topic": topic, "client": entry.to_json()}, None)


# ------------------------------------------------------------ shared store


@runtime_checkable
class PresenceSink(Protocol):
    """What a :class:`PresenceStore` asks of the hub's presence (its local side)."""

    def local_entries(self) -> Iterator[tuple[str, PresenceInfo]]:
        """Every entry of this node, as ``(topic, entry)``: to write again after an outage."""
        ...

    def local_topics(self) -> Iterable[str]:
        """The topics that have subscribers on this node now."""
        ...

    def expired(self, topic: str, entries: list[PresenceInfo]) -> None:
        """Entries of a dead node have left ``topic``: tell the local subscribers."""
        ...


@runtime_checkable
class PresenceStore(Protocol):
    """Presence shared by several nodes: what a backend that supports it provides.

    A backend offers one through ``open_presence(sink)``; the hub calls that
    once, before the backend runs, when it is opened with ``presence=True``.
    Every method but :meth:`entries` and :meth:`aclose` is synchronous and
    never blocks.

    .. versionadded:: 0.2
    """

    @property
    def node_id(self) -> str:
        """The id of this node, which starts the ``client_id`` of its entries."""
        ...

    def add(self, topic: str, entry: PresenceInfo) -> None:
        """Record that ``entry`` (of this node) is on ``topic``."""
        ...

    def remove(self, topic: str, entry: PresenceInfo) -> None:
        """Record that ``entry`` (of this node) has left ``topic``."""
        ...

    async def entries(self, topic: str) -> list[PresenceInfo]:
        """The entries of the *other* live nodes on ``topic``.

        Raises:
            BackendUnavailableError: if the store cannot be read now.
        """
        ...

    async def aclose(self) -> None:
        """Say goodbye: remove this node's entries, bounded in time."""
        ...


# ------------------------------------------------------------- the tracker


@final
class _PresenceTracker:
    """The hub's presence: this node's entries, events, and the shared store."""

    __slots__ = ("_events", "_hub", "_local", "_store", "expirations", "joins", "leaves")

    def __init__(self, hub: Hub, events: PresenceEvents) -> None:
        if not isinstance(events, bool) and not callable(events):
            raise TypeError(f"presence_events must be a bool or a callable, got {events!r}")
        self._hub = hub
        self._events = events
        self._store: PresenceStore | None = None
        # For each topic, this node's entries in the order they joined.
        self._local: dict[str, dict[Client, PresenceInfo]] = {}
        self.joins = 0
        self.leaves = 0
        self.expirations = 0

    def attach(self, store: PresenceStore) -> None:
        self._store = store

    @property
    def shared(self) -> bool:
        return self._store is not None

    def _sends_events(self, topic: str) -> bool:
        events = self._events
        if isinstance(events, bool):
            return events
        try:
            return bool(events(topic))
        except Exception:
            # An application callback must not break a subscription, a
            # broadcast or a client's departure (guarantee 4): no events.
            logger.exception("the presence_events predicate raised for topic %r", topic)
            return False

    def _entry(self, client: Client) -> PresenceInfo:
        store = self._store
        client_id = str(client.id) if store is None else f"{store.node_id}.{client.id}"
        return PresenceInfo(client_id, presence_identity(client.identity), client.info)

    # Called by the hub: before ``client`` is among the topic's subscribers,
    # so that its own join does not reach it.
    def joining(self, topic: str, client: Client) -> None:
        entry = self._entry(client)
        self._local.setdefault(topic, {})[client] = entry
        self.joins += 1
        if self._store is not None:
            self._store.add(topic, entry)
        if self._sends_events(topic):
            self._send(topic, event_message("join", topic, entry))

    # Called by the hub: after ``client`` has left the topic's subscribers.
    def left(self, topic: str, client: Client) -> None:
        entries = self._local.get(topic)
        if entries is None:
            return
        entry = entries.pop(client, None)
        if entry is None:
            return
        if not entries:
            del self._local[topic]
        self.leaves += 1
        if self._store is not None:
            self._store.remove(topic, entry)
        if self._sends_events(topic):
            self._send(topic, event_message("leave", topic, entry))

    def _send(self, topic: str, message: Message) -> None:
        hub = self._hub
        # During shutdown every local client is leaving: telling them about
        # each other is noise. Other nodes' clients still hear the goodbyes.
        if not hub._closing:
            subscribers = hub._topics.get(topic)
            if subscribers:
                hub._fan_out(subscribers, message)
        if hub._backend is not None:
            hub._backend.publish(topic, message.encode())

    # The hub's public side.
    def local(self, topic: str) -> list[PresenceInfo]:
        entries = self._local.get(topic)
        return list(entries.values()) if entries else []

    async def presence(self, topic: str) -> list[PresenceInfo]:
        if self._store is None:
            await trio.lowlevel.checkpoint()
            return self.local(topic)
        others = await self._store.entries(topic)
        # This node's entries from memory: they are current, while the store
        # may not have received the latest change yet.
        return self.local(topic) + others

    def entry_count(self) -> int:
        return sum(len(entries) for entries in self._local.values())

    async def aclose(self) -> None:
        if self._store is not None:
            await self._store.aclose()

    # PresenceSink, for the store.
    def local_entries(self) -> Iterator[tuple[str, PresenceInfo]]:
        for topic, entries in list(self._local.items()):
            for entry in list(entries.values()):
                yield topic, entry

    def local_topics(self) -> Iterable[str]:
        return list(self._hub._topics)

    def expired(self, topic: str, entries: list[PresenceInfo]) -> None:
        hub = self._hub
        self.expirations += len(entries)
        if hub._closing or not self._sends_events(topic):
            return
        subscribers = hub._topics.get(topic)
        if not subscribers:
            return
        for entry in entries:
            # Local delivery only: every surviving node tells its own clients.
            hub._fan_out(subscribers, event_message("leave", topic, entry))
