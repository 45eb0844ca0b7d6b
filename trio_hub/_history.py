"""Per-topic history: stream positions, the in-memory history, and recovery.

A topic with history numbers its publications: each gets an ``offset``, one more
than the one before, within an ``epoch``, a string that changes whenever the
topic's history is lost or reset. A client that comes back with the position of
the last publication it got (:class:`StreamPosition`) receives exactly what it
missed, or is told that it cannot (``recovered=False``), never a part of it.

This module holds what every history shares (the positions, the results, the
stamping of offsets into messages) and the history of one process
(:class:`_MemoryHistory`). The Redis history lives in
:mod:`trio_hub.backends.redis`, its scripts in ``backends/_redis_history.py``;
the hub talks to either through the small interfaces at the end of this module.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol, TypeAlias, final, runtime_checkable

import trio

from ._closecodes import CloseCode
from ._errors import HubError
from ._message import Message

if TYPE_CHECKING:
    from ._client import Client
    from .backends._base import Backend

logger: Final = logging.getLogger("trio_hub")

__all__ = [
    "HistoryError",
    "HistoryPolicy",
    "HistoryResult",
    "HistoryUnavailableError",
    "Publication",
    "StreamPosition",
]

OFFSET_FIELD: Final = "offset"
"""The payload field that carries a publication's offset on a topic with history."""


class HistoryError(HubError):
    """A history request that cannot be served.

    .. versionadded:: 0.2
    """


class HistoryUnavailableError(HistoryError):
    """The shared history (Redis) cannot be reached now; try again later.

    Nothing was replayed and, for a recovery, the client was not subscribed.

    .. versionadded:: 0.2
    """


@dataclass(frozen=True, slots=True, order=False)
class StreamPosition:
    """Where a client is in a topic's stream: the last offset it got, in an epoch.

    Args:
        offset: The offset of the last publication received (0: none yet).
        epoch: The topic's epoch, as reported by the hub.

    .. versionadded:: 0.2
    """

    offset: int
    epoch: str

    def __post_init__(self) -> None:
        if not isinstance(self.offset, int) or isinstance(self.offset, bool) or self.offset < 0:
            raise ValueError(f"offset must be an int >= 0, got {self.offset!r}")
        if not isinstance(self.epoch, str):
            raise TypeError(f"epoch must be a str, got {self.epoch!r}")


@dataclass(frozen=True, slots=True)
class Publication:
    """One publication kept in a topic's history.

    Attributes:
        offset: Its place in the topic's stream.
        message: The message as its subscribers receive it: the payload carries
            ``"offset"``.

    .. versionadded:: 0.2
    """

    offset: int
    message: Message


@dataclass(frozen=True, slots=True)
class HistoryResult:
    """What :meth:`Hub.history` and :meth:`Client.recover` found.

    Attributes:
        position: The topic's position: its last offset and its epoch. For a
            recovery, the position right before the live publications that
            follow the replay.
        publications: The publications after ``since`` (replayed, for a
            recovery), oldest first; empty when ``recovered`` is false.
        recovered: Whether the history still covers everything after
            ``since`` (same epoch, nothing trimmed or expired). Always true
            when no ``since`` was given.

    .. versionadded:: 0.2
    """

    position: StreamPosition
    publications: tuple[Publication, ...]
    recovered: bool


@dataclass(frozen=True, slots=True)
class HistoryPolicy:
    """How much history one topic keeps.

    Args:
        size: The most publications kept; older ones are trimmed.
        ttl: Seconds a publication is kept; ``None``: no time limit.

    .. versionadded:: 0.2
    """

    size: int
    ttl: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 1:
            raise ValueError(f"history size must be an int >= 1, got {self.size!r}")
        if self.ttl is not None and (
            not isinstance(self.ttl, int | float) or not 0 < self.ttl < math.inf
        ):
            raise ValueError(f"history ttl must be None or a finite number > 0, got {self.ttl!r}")


HistoryPolicyFunction: TypeAlias = "Callable[[str], HistoryPolicy | None]"
"""Given a topic, its history policy, or ``None`` for a topic without history."""


def new_epoch() -> str:
    """Return a fresh epoch: random, so that no two histories share one."""
    return secrets.token_hex(4)


def stamp(message: Message, offset: int) -> Message:
    """Return ``message`` with ``"offset": offset`` in its payload.

    Raises:
        ValueError: if the payload is not a JSON object, or already has an
            ``"offset"``.
    """
    payload = message.payload
    if not isinstance(payload, Mapping):
        # ValueError, as for any JSON value of the wrong shape (the payload's
        # Python type is not the point).
        raise ValueError(  # noqa: TRY004
            "a message published on a topic with history needs an object payload "
            f"(it gets an {OFFSET_FIELD!r} field), got {type(payload).__name__}"
        )
    if OFFSET_FIELD in payload:
        raise ValueError(
            f"a message published on a topic with history must not have an "
            f"{OFFSET_FIELD!r} field: the hub sets it"
        )
    return Message._trusted(message.type, {**payload, OFFSET_FIELD: offset}, None)


def check_stampable(message: Message) -> None:
    """Raise as :func:`stamp` would, without building anything."""
    payload = message.payload
    if not isinstance(payload, Mapping) or OFFSET_FIELD in payload:
        stamp(message, 0)


# ---------------------------------------------------------------- memory


@final
class _TopicHistory:
    __slots__ = ("entries", "epoch", "offset", "policy")

    def __init__(self, policy: HistoryPolicy, epoch: str) -> None:
        self.policy = policy
        self.epoch = epoch
        self.offset = 0
        # (offset, expires at, message as delivered), oldest first.
        self.entries: deque[tuple[int, float, Message]] = deque()

    def expire(self, now: float) -> None:
        entries = self.entries
        while entries and entries[0][1] <= now:
            entries.popleft()


@final
class _MemoryHistory:
    """Every topic's history in this process: bounded rings, by size, TTL and topics.

    Memory is bounded by ``max_topics`` x the largest ``size`` x message size:
    each topic keeps at most its policy's ``size`` publications, and at most
    ``max_topics`` topics keep history; the one that published least recently
    loses its history (and its epoch) when one more comes.

    Only publications create a topic's history: reading a topic that has none
    (subscribing to it) costs nothing, so subscriptions cannot push out the
    history of busy topics. Such a topic stands at offset 0 in the *base
    epoch*, the epoch that its history gets when it is created; the base epoch
    changes whenever a topic loses its history, so that a topic that comes back
    never reuses an epoch.
    """

    __slots__ = ("_base_epoch", "_max_topics", "_policy", "_topics")

    def __init__(self, policy: HistoryPolicyFunction, max_topics: int) -> None:
        self._policy = policy
        self._max_topics = max_topics
        # Least recently published first.
        self._topics: OrderedDict[str, _TopicHistory] = OrderedDict()
        self._base_epoch = new_epoch()

    def policy(self, topic: str) -> HistoryPolicy | None:
        return self._policy(topic)

    def _topic(self, topic: str, policy: HistoryPolicy) -> _TopicHistory:
        history = self._topics.get(topic)
        if history is None:
            if len(self._topics) >= self._max_topics:
                self._topics.popitem(last=False)
                self._base_epoch = new_epoch()
            history = self._topics[topic] = _TopicHistory(policy, self._base_epoch)
        else:
            self._topics.move_to_end(topic)
        return history

    def append(
        self, topic: str, policy: HistoryPolicy, message: Message
    ) -> tuple[StreamPosition, Message]:
        """Number ``message`` and keep it; return its position, and it as subscribers get it."""
        history = self._topic(topic, policy)
        offset = history.offset + 1
        stamped = stamp(message, offset)
        history.offset = offset
        now = trio.current_time()
        ttl = history.policy.ttl
        entries = history.entries
        entries.append((offset, math.inf if ttl is None else now + ttl, stamped))
        while len(entries) > history.policy.size:
            entries.popleft()
        history.expire(now)
        return StreamPosition(offset, history.epoch), stamped

    def read(
        self,
        topic: str,
        policy: HistoryPolicy,
        since: StreamPosition | None,
        limit: int | None,
    ) -> HistoryResult:
        history = self._topics.get(topic)
        if history is None:
            position = StreamPosition(0, self._base_epoch)
            recovered = since is None or since == position
            return HistoryResult(position, (), recovered)
        history.expire(trio.current_time())
        position = StreamPosition(history.offset, history.epoch)
        entries = history.entries
        if since is None:
            selected = list(entries) if limit is None else list(entries)[:limit]
            return HistoryResult(position, _publications(selected), True)
        if since.epoch != history.epoch or since.offset > history.offset:
            return HistoryResult(position, (), False)
        if since.offset == history.offset:
            return HistoryResult(position, (), True)
        # Everything after since.offset must still be here, the first one included.
        if not entries or entries[0][0] > since.offset + 1:
            return HistoryResult(position, (), False)
        start = since.offset + 1 - entries[0][0]
        stop = len(entries) if limit is None else min(len(entries), start + limit)
        selected = [entries[index] for index in range(start, stop)]
        return HistoryResult(position, _publications(selected), True)

    def sizes(self) -> dict[str, int]:
        now = trio.current_time()
        for history in self._topics.values():
            history.expire(now)
        return {topic: len(history.entries) for topic, history in self._topics.items()}

    def trim(self, topic: str, keep: int) -> None:
        """Keep only the ``keep`` newest publications of ``topic`` (for tests)."""
        history = self._topics.get(topic)
        if history is not None:
            while len(history.entries) > keep:
                history.entries.popleft()


def _publications(entries: Sequence[tuple[int, float, Message]]) -> tuple[Publication, ...]:
    return tuple(Publication(offset, message) for offset, _, message in entries)


# ---------------------------------------------------------------- shared


@runtime_checkable
class SharedHistory(Protocol):
    """What a backend provides when the history lives in it (Redis), for every node.

    The hub uses it instead of its own memory history for every topic with
    history. Offsets come from the backend, so every node delivers a topic's
    publications in one order: the hub hands each publication over with
    :meth:`append` and delivers it, on every node including its own, when the
    backend calls :meth:`HistorySink.deliver_publication`.
    """

    def subscribe(self, topic: str) -> None:
        """As :meth:`Backend.subscribe <trio_hub.backends.Backend.subscribe>`."""
        ...

    def unsubscribe(self, topic: str) -> None:
        """As :meth:`Backend.unsubscribe <trio_hub.backends.Backend.unsubscribe>`."""
        ...

    def append(
        self,
        topic: str,
        policy: HistoryPolicy,
        data: bytes,
        reply: Callable[[StreamPosition | BaseException], None] | None,
    ) -> bool:
        """Number and keep an encoded message, then deliver it on every node.

        Never blocks. ``reply``, if given, is called later with the
        publication's position, or with the exception that says why it failed.

        Returns:
            ``False`` if the backend is unreachable now: nothing was sent, and
            the topic's epoch changes once it is back (its history misses
            this publication); the hub then delivers it locally, unnumbered.
        """
        ...

    async def read(
        self,
        topic: str,
        policy: HistoryPolicy,
        since: StreamPosition | None,
        limit: int | None,
    ) -> tuple[StreamPosition, list[tuple[int, bytes]], bool]:
        """Return the position, the publications after ``since`` (offset, data), and recovered.

        Raises:
            HistoryUnavailableError: if the backend cannot be reached.
        """
        ...

    async def wait_subscribed(self, topic: str) -> None:
        """Return once publications on ``topic`` reach this node.

        Raises:
            HistoryUnavailableError: if the backend cannot be reached.
        """
        ...


@runtime_checkable
class HistorySink(Protocol):
    """What a backend with a shared history calls to deliver a numbered publication."""

    def deliver_publication(self, topic: str, offset: int, epoch: str, data: bytes) -> None:
        """Deliver one publication, numbered by the backend, to the local subscribers."""
        ...


# ---------------------------------------------------------------- the hub's side


class _HubInternals(Protocol):
    """The parts of :class:`~trio_hub.Hub` that history works with."""

    _topics: dict[str, dict[Client, None]]
    _closing: bool
    _backend: Backend | None

    def _fan_out(self, clients: dict[Client, None], message: Message) -> int: ...

    def _add_subscriber(self, topic: str, client: Client) -> None: ...

    def _remove_subscriber(self, topic: str, client: Client) -> None: ...


@final
class HubHistory:
    """A hub's history: numbering, keeping and replaying publications per topic.

    The hub hands over publications on topics with history, and recoveries. With
    the memory history everything is synchronous: a publication is numbered,
    kept and fanned out at once, and a recovery reads and subscribes in one
    step, so nothing can come between. With a shared history (Redis) a
    publication is fanned out when the backend delivers it numbered, on every
    node; a recovering client's live publications wait in a buffer while the
    history is read, and the two are merged by offset.
    """

    __slots__ = (
        "_buffers",
        "_hub",
        "_memory",
        "_policy",
        "_positions",
        "_queue_size",
        "_reads",
        "_shared",
        "gaps",
        "history_errors",
        "local_only",
        "recoveries",
        "recovery_failures",
    )

    def __init__(
        self,
        hub: _HubInternals,
        policy: HistoryPolicyFunction,
        *,
        max_topics: int,
        shared: SharedHistory | None,
        queue_size: int,
    ) -> None:
        self._hub = hub
        self._policy = policy
        self._shared = shared
        self._memory = _MemoryHistory(policy, max_topics) if shared is None else None
        self._queue_size = queue_size
        # Shared history: clients recovering a topic, each with the numbered
        # publications that arrived meanwhile.
        self._buffers: dict[str, dict[Client, _Recovering]] = {}
        # Shared history: reads about to be sent, which other recoveries from
        # the same position may join.
        self._reads: dict[tuple[str, StreamPosition | None, int | None], _SharedRead] = {}
        # Shared history: the last (epoch, offset) delivered here, per topic.
        self._positions: dict[str, tuple[str, int]] = {}
        self.recoveries = 0
        self.recovery_failures = 0
        self.history_errors = 0
        self.local_only = 0
        self.gaps = 0

    def policy(self, topic: str) -> HistoryPolicy | None:
        return self._policy(topic)

    def _require(self, topic: str) -> HistoryPolicy:
        policy = self._policy(topic)
        if policy is None:
            raise HistoryError(f"topic {topic!r} has no history")
        return policy

    # ---------------------------------------------------------- publishing

    def publish(
        self,
        topic: str,
        policy: HistoryPolicy,
        message: Message,
        reply: Callable[[StreamPosition | BaseException], None] | None = None,
    ) -> int:
        if type(message) is not Message:
            raise TypeError(f"expected a trio_hub.Message, got {type(message).__name__}")
        hub = self._hub
        subscribers = hub._topics.get(topic)
        if self._memory is not None:
            position, stamped = self._memory.append(topic, policy, message)
            count = hub._fan_out(subscribers, stamped) if subscribers else 0
            if hub._backend is not None:
                # A backend without a shared history: each node numbers its own.
                hub._backend.publish(topic, stamped.encode())
            if reply is not None:
                reply(position)
            return count
        assert self._shared is not None
        check_stampable(message)
        if self._shared.append(topic, policy, message.encode(), reply):
            # Delivered here, as on every node, once the backend numbers it.
            return len(subscribers) if subscribers else 0
        # The shared history is out of reach: local delivery goes on, without
        # an offset. The backend changes the topic's epoch once it is back,
        # so that no position from before passes for complete.
        self.local_only += 1
        if reply is not None:
            reply(HistoryUnavailableError("the shared history is unreachable"))
        return hub._fan_out(subscribers, message) if subscribers else 0

    def deliver_publication(self, topic: str, offset: int, epoch: str, data: bytes) -> None:
        hub = self._hub
        if hub._closing:
            return
        try:
            message = stamp(Message.decode(data), offset)
        except (HubError, ValueError):
            logger.exception("dropped an undecodable publication from the backend")
            return
        last = self._positions.get(topic)
        subscribers = hub._topics.get(topic)
        buffers = self._buffers.get(topic)
        if subscribers is None and buffers is None:
            self._positions.pop(topic, None)
            return
        if last is not None:
            if last[0] == epoch and offset <= last[1]:
                return  # delivered already
            if last[0] != epoch or offset > last[1] + 1:
                # Publications that never reached this node (its pub/sub
                # connection broke), or a history that Redis lost: the
                # clients here cannot tell, so they are told to come back.
                self._resync(topic, f"{last[0]}:{last[1]} then {epoch}:{offset}")
                subscribers = hub._topics.get(topic)
                buffers = self._buffers.get(topic)
        self._positions[topic] = (epoch, offset)
        if subscribers:
            hub._fan_out(subscribers, message)
        if buffers:
            for client, recovering in list(buffers.items()):
                floor = recovering.floor
                if floor is None:
                    # Still reading the history: keep it for the merge.
                    recovering.pending.append((epoch, offset, message))
                    if len(recovering.pending) > self._queue_size:
                        client._evict("queue full while recovering")
                    continue
                # Replayed up to floor already: only what comes after.
                if epoch != floor.epoch or offset > floor.offset + 1:
                    self._close_for_gap(client)
                    del buffers[client]
                    continue
                if offset > floor.offset:
                    client._offer(message)
                if epoch != floor.epoch or offset >= floor.offset:
                    # The live stream has caught up with the replay.
                    del buffers[client]
                    if not client._ending:
                        hub._add_subscriber(topic, client)
            if not buffers:
                del self._buffers[topic]

    # ------------------------------------------------------------ reading

    async def history(
        self, topic: str, since: StreamPosition | None, limit: int | None
    ) -> HistoryResult:
        policy = self._require(topic)
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise ValueError(f"limit must be None or an int >= 0, got {limit!r}")
        if self._memory is not None:
            await trio.lowlevel.checkpoint()
            return self._memory.read(topic, policy, since, limit)
        assert self._shared is not None
        try:
            position, entries, recovered = await self._shared.read(topic, policy, since, limit)
        except HistoryUnavailableError:
            self.history_errors += 1
            raise
        return HistoryResult(position, _decode(entries), recovered)

    async def recover(
        self,
        client: Client,
        topic: str,
        since: StreamPosition | None,
        announce: Callable[[HistoryResult], Message | None] | None,
    ) -> HistoryResult:
        policy = self._require(topic)
        hub = self._hub
        # Recovering replaces a live subscription: what it holds would be sent twice.
        hub._remove_subscriber(topic, client)
        if self._memory is not None:
            # One synchronous step: no publication can come between the read
            # and the subscription.
            result = self._memory.read(topic, policy, since, None if since else 0)
            self._count(since, result)
            if not client._ending:
                hub._add_subscriber(topic, client)
                self._send(client, announce, result, ())
            await trio.lowlevel.checkpoint()
            return result
        assert self._shared is not None
        recovering = _Recovering()
        self._buffers.setdefault(topic, {})[client] = recovering
        self._shared.subscribe(topic)
        ok = False
        try:
            # Subscribed first, read second: whatever is published after the
            # read reaches the buffer.
            await self._shared.wait_subscribed(topic)
            result = await self._read_together(topic, policy, since, None if since else 0)
            ok = True
        except HistoryUnavailableError:
            self.history_errors += 1
            raise
        finally:
            if not ok:
                self._drop_recovering(topic, client)
                self._release(topic)
        position = result.position
        self._count(since, result)
        if client._ending:
            self._drop_recovering(topic, client)
            self._release(topic)
            return result
        # What arrived live meanwhile is in offset order, and the read saw
        # everything up to position: send what comes after it. The live
        # stream to this node may also lag behind the read: until it reaches
        # position, the client stays apart and gets only later offsets.
        later = [
            (epoch, offset, message)
            for epoch, offset, message in recovering.pending
            if epoch != position.epoch or offset > position.offset
        ]
        delivered = self._positions.get(topic)
        if delivered is not None and delivered[0] != position.epoch:
            # The read found a history that this node's live stream has not
            # seen yet (Redis lost it): whoever was live here missed the change.
            self._resync(topic, f"{delivered[0]} then {position.epoch}")
            delivered = self._positions[topic] = (position.epoch, position.offset)
        if later and (later[0][0] != position.epoch or later[0][1] != position.offset + 1):
            # The live stream skipped past the read: this node missed some.
            self._send(client, announce, result, ())
            self._drop_recovering(topic, client)
            self._close_for_gap(client)
            self._release(topic)
            return result
        self._send(client, announce, result, [message for _, _, message in later])
        if delivered is None:
            # This node has delivered nothing on the topic yet: its live stream
            # may still bring what the read saw, unless the read saw nothing
            # (a new topic), when every live publication comes after it.
            lagging = position.offset > 0
        else:
            lagging = delivered[0] == position.epoch and delivered[1] < position.offset
        if lagging:
            recovering.floor = position
            recovering.pending = []
        else:
            self._drop_recovering(topic, client)
            hub._add_subscriber(topic, client)
        return result

    def _resync(self, topic: str, what: str) -> None:
        """This node missed publications on ``topic``: close everyone who relied on it."""
        self.gaps += 1
        hub = self._hub
        clients = list(hub._topics.get(topic, ()))
        clients += [
            client
            for client, recovering in self._buffers.get(topic, {}).items()
            if recovering.floor is not None
        ]
        logger.warning(
            "topic %r: publications never reached this node (%s); closing its %d "
            "client(s) with %d, so that they reconnect and recover",
            topic,
            what,
            len(clients),
            CloseCode.HISTORY_GAP,
        )
        for client in clients:
            self._drop_recovering(topic, client)
            self._close_for_gap(client)

    @staticmethod
    def _close_for_gap(client: Client) -> None:
        client.close(CloseCode.HISTORY_GAP, "missed publications: reconnect and recover")

    def released(self, topic: str) -> None:
        """This node no longer receives ``topic``: its live stream starts afresh."""
        self._positions.pop(topic, None)

    def _drop_recovering(self, topic: str, client: Client) -> None:
        buffers = self._buffers.get(topic)
        if buffers is not None:
            buffers.pop(client, None)
            if not buffers:
                del self._buffers[topic]

    async def _read_together(
        self,
        topic: str,
        policy: HistoryPolicy,
        since: StreamPosition | None,
        limit: int | None,
    ) -> HistoryResult:
        # After a restart or a network blip, many clients recover from the same
        # position at once: one read serves all those that ask before it is
        # sent. Only those: a read sent before a client's buffer was in place
        # could miss what was published in between.
        assert self._shared is not None
        key = (topic, since, limit)
        while True:
            pending = self._reads.get(key)
            if pending is None:
                break
            await pending.done.wait()
            if pending.result is not None:
                return pending.result
            if pending.error is not None:
                raise HistoryUnavailableError(str(pending.error)) from pending.error
            # The task that read was cancelled: read again.
        pending = self._reads[key] = _SharedRead()
        try:
            try:
                await trio.lowlevel.checkpoint()  # let the others join
            finally:
                del self._reads[key]
            position, entries, recovered = await self._shared.read(topic, policy, since, limit)
            # Decoded once: every client that it serves gets the same frames.
            pending.result = HistoryResult(position, _decode(entries), recovered)
        except HistoryUnavailableError as exc:
            pending.error = exc
            raise
        finally:
            pending.done.set()
        return pending.result

    def _release(self, topic: str) -> None:
        hub = self._hub
        if topic not in hub._topics and topic not in self._buffers:
            assert self._shared is not None
            self._shared.unsubscribe(topic)
            self.released(topic)

    def buffered(self, topic: str) -> bool:
        """Whether clients are recovering ``topic`` (the backend must stay subscribed)."""
        return topic in self._buffers

    def forget(self, client: Client, topic: str | None = None) -> None:
        """``client`` left (or unsubscribed from ``topic``): drop its recoveries under way."""
        if topic is not None:
            self._drop_recovering(topic, client)
            return
        for buffers in self._buffers.values():
            buffers.pop(client, None)

    def _count(self, since: StreamPosition | None, result: HistoryResult) -> None:
        if since is None:
            return
        if result.recovered:
            self.recoveries += 1
        else:
            self.recovery_failures += 1

    @staticmethod
    def _send(
        client: Client,
        announce: Callable[[HistoryResult], Message | None] | None,
        result: HistoryResult,
        later: Sequence[Message],
    ) -> None:
        if announce is not None:
            first = announce(result)
            if first is not None:
                client._offer(first)
        for publication in result.publications:
            if client._ending:
                return
            client._offer(publication.message)
        for message in later:
            if client._ending:
                return
            client._offer(message)

    def sizes(self) -> dict[str, int]:
        return self._memory.sizes() if self._memory is not None else {}

    def trim(self, topic: str, keep: int) -> None:
        if self._memory is not None:
            self._memory.trim(topic, keep)


@final
class _SharedRead:
    """One history read that several recoveries wait for."""

    __slots__ = ("done", "error", "result")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: HistoryResult | None = None
        self.error: HistoryUnavailableError | None = None


@final
class _Recovering:
    """A client catching up on a topic with a shared history."""

    __slots__ = ("floor", "pending")

    def __init__(self) -> None:
        # Live publications that arrived while the history was being read.
        self.pending: list[tuple[str, int, Message]] = []
        # Once replayed: the position replayed up to.
        self.floor: StreamPosition | None = None


def _decode(entries: Sequence[tuple[int, bytes]]) -> tuple[Publication, ...]:
    publications = []
    for offset, data in entries:
        try:
            message = stamp(Message.decode(data), offset)
        except (HubError, ValueError):
            logger.exception("dropped an undecodable publication from the history")
            continue
        publications.append(Publication(offset, message))
    return tuple(publications)
