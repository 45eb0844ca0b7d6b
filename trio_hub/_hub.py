"""The hub: registry, topics, broadcast and publish, statistics, shutdown."""

from __future__ import annotations

import logging
import types
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Final, NoReturn, Protocol, final, runtime_checkable

import trio
from trio_websocket import WebSocketConnection

from ._client import Client
from ._closecodes import CloseCode
from ._compression import CompressionCounters
from ._config import HubConfig, MessageHandler
from ._errors import HubClosedError, MessageError
from ._history import (
    HistoryError,
    HistoryPolicy,
    HistoryPolicyFunction,
    HistoryResult,
    HubHistory,
    SharedHistory,
    StreamPosition,
)
from ._message import JSONValue, Message
from ._pacing import IntakeGate
from ._policy import SlowClientPolicy
from ._presence import PresenceEvents, PresenceInfo, _PresenceTracker, check_info
from ._statistics import HubStatistics
from ._transport import Transport, WebSocketTransport, can_ping
from ._util import NoPublicConstructor
from .backends._base import Backend, MemoryBackend

__all__ = ["BroadcastSender", "Hub", "open_hub"]

logger: Final = logging.getLogger("trio_hub")


@runtime_checkable
class BroadcastSender(Protocol):
    """The part of a hub that code which only sends messages needs.

    Take a ``BroadcastSender`` instead of a :class:`Hub` in code that only
    broadcasts, and pass a :class:`trio_hub.testing.RecordingBroadcaster` in its
    tests. :class:`Hub` satisfies this protocol, statically and at run time.
    """

    def broadcast(self, message: Message) -> int:
        """Send ``message`` to every client; return how many it was meant for."""
        ...

    def publish(self, topic: str, message: Message) -> int:
        """Send ``message`` to ``topic``'s subscribers; return how many there were."""
        ...


@final
class Hub(metaclass=NoPublicConstructor):
    """A set of clients that messages are broadcast and published to.

    Get one from :func:`open_hub`; there is no public constructor. Every method
    except :meth:`serve_client`, :meth:`aclose` and :meth:`wait_closed` is
    synchronous and never waits for a client.
    """

    __slots__ = (
        "__weakref__",
        "_all_finished",
        "_backend",
        "_backend_scope",
        "_clients",
        "_closed",
        "_closing",
        "_compression",
        "_config",
        "_deliveries",
        "_discarded",
        "_drops",
        "_errors",
        "_evictions",
        "_fan_outs",
        "_gate",
        "_history",
        "_keepalive_scope",
        "_keepalive_timeouts",
        "_live",
        "_messages_broadcast",
        "_messages_published",
        "_messages_received",
        "_messages_sent",
        "_nursery",
        "_ping_departed",
        "_ping_queue",
        "_ping_wakeup",
        "_presence",
        "_registrations",
        "_topics",
    )

    def __init__(self, nursery: trio.Nursery, config: HubConfig, backend: Backend) -> None:
        self._nursery = nursery
        self._config = config
        # The default in-process backend does nothing: skip it on the hot path.
        self._backend: Backend | None = None if isinstance(backend, MemoryBackend) else backend
        # History, where configured: numbering, keeping and replaying
        # publications per topic (see _history.py).
        self._history: HubHistory | None = None
        if config.history is not None:
            self._history = HubHistory(
                self,
                config.history,
                max_topics=config.max_history_topics,
                shared=backend if isinstance(backend, SharedHistory) else None,
                queue_size=config.queue_size,
            )
        self._backend_scope = trio.CancelScope()
        self._keepalive_scope = trio.CancelScope()
        # Clients in the order their next ping is due. Every client has the same
        # interval and joins at the back, so this stays sorted: one task pings
        # everyone, and an idle client costs no task of its own.
        self._ping_queue: deque[tuple[float, Client]] = deque()
        # Entries in _ping_queue for clients that have left (see _forget_pings).
        self._ping_departed = 0
        self._ping_wakeup = trio.Event()
        # dicts, not sets: iteration follows registration order, which keeps
        # runs reproducible.
        self._clients: dict[Client, None] = {}
        # Overload: the hub-wide backlog, and the gate it closes (see _pacing).
        self._gate = IntakeGate(config.intake_limit)
        # Where the next fan-out starts (see _fan_out).
        self._fan_outs = 0
        self._topics: dict[str, dict[Client, None]] = {}
        # Clients whose tasks are still running, registered or closing.
        self._live: set[Client] = set()
        self._closing = False
        self._all_finished = trio.Event()
        self._closed = trio.Event()
        self._messages_broadcast = 0
        self._messages_published = 0
        self._messages_sent = 0
        self._messages_received = 0
        self._deliveries = 0
        self._drops = 0
        self._evictions = 0
        self._keepalive_timeouts = 0
        self._discarded = 0
        self._errors = 0
        self._registrations = 0
        # Set by open_hub(presence=True): see _presence.py.
        self._presence: _PresenceTracker | None = None
        # Counted by the served connections that negotiated permessage-deflate.
        self._compression = CompressionCounters()

    # ---------------------------------------------------------- registration

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` has started; the hub then takes no new clients."""
        return self._closing

    @property
    def clients(self) -> tuple[Client, ...]:
        """The clients registered now, in the order they registered."""
        return tuple(self._clients)

    def __len__(self) -> int:
        return len(self._clients)

    def register(
        self,
        connection: WebSocketConnection | Transport,
        *,
        topics: Iterable[str] = (),
        identity: object = None,
        info: JSONValue = None,
        on_message: MessageHandler | None = None,
    ) -> Client:
        """Register a connection and start its tasks in the hub's nursery.

        The client receives every message broadcast from now on, and what is
        published on ``topics``, until it disconnects, is removed with
        :meth:`Client.close`, or is evicted.

        When you register a trio-websocket connection from inside a
        :func:`trio_websocket.serve_websocket` handler, the handler must not
        return while the client is connected (trio-websocket closes the
        connection when it does): use :meth:`serve_client` there.

        Args:
            connection: An accepted :class:`trio_websocket.WebSocketConnection`,
                or any :class:`Transport`.
            topics: Topics to subscribe the client to at once.
            identity: Anything the application wants to attach to the client,
                available as :attr:`Client.identity`. Presence shows it to other
                clients if it is a ``str``.
            info: Small JSON the application attaches for presence (a display
                name, a colour), at most :data:`MAX_PRESENCE_INFO_SIZE` bytes;
                available as :attr:`Client.info`.
            on_message: Handler for this client's inbound messages; overrides
                the hub's ``on_message``.

        Returns:
            The new client.

        Raises:
            HubClosedError: if :meth:`aclose` has started.
            TypeError: if ``connection`` is neither a trio-websocket connection
                nor a :class:`Transport`.
            ValueError: if ``info`` is not JSON or too large.

        .. versionchanged:: 0.2
           The ``info`` argument.
        """
        client = self._add_client(
            connection, topics=topics, identity=identity, info=info, on_message=on_message
        )
        self._nursery.start_soon(client._run, name=f"trio_hub client #{client.id}")
        return client

    def _add_client(
        self,
        connection: WebSocketConnection | Transport,
        *,
        topics: Iterable[str] = (),
        identity: object = None,
        info: JSONValue = None,
        on_message: MessageHandler | None = None,
    ) -> Client:
        # Register without starting the client's task: the caller runs
        # client._run(), in the hub's nursery or (serve_hub) in its own task.
        if self._closing:
            raise HubClosedError("the hub is closed: it takes no new clients")
        transport: Transport
        if isinstance(connection, WebSocketConnection):
            transport = WebSocketTransport(connection)
        elif isinstance(connection, Transport):
            transport = connection
        else:
            raise TypeError(
                "connection must be a trio_websocket.WebSocketConnection or implement "
                f"trio_hub.Transport, got {type(connection).__name__}"
            )
        topic_list = [_check_topic(topic) for topic in topics]
        client = Client._create(
            self,
            transport,
            identity=identity,
            info=check_info(info),
            on_message=on_message if on_message is not None else self._config.on_message,
        )
        self._clients[client] = None
        self._live.add(client)
        self._registrations += 1
        for topic in topic_list:
            self._add_subscriber(topic, client)
        interval = self._config.ping_interval
        # A transport whose server pings for it (ASGI) never enters the queue.
        if interval is not None and can_ping(transport):
            self._ping_queue.append((trio.current_time() + interval, client))
            self._ping_wakeup.set()
        logger.debug("client #%d registered: %r", client.id, transport)
        return client

    async def serve_client(
        self,
        connection: WebSocketConnection | Transport,
        *,
        topics: Iterable[str] = (),
        identity: object = None,
        info: JSONValue = None,
        on_message: MessageHandler | None = None,
    ) -> Client:
        """Register a connection, and return once the client has left.

        This is the call for a trio-websocket handler: it keeps the handler
        alive while the client is connected. If the calling task is cancelled,
        the client is closed with 1001 before this returns.

        Args:
            connection: As for :meth:`register`.
            topics: As for :meth:`register`.
            identity: As for :meth:`register`.
            info: As for :meth:`register`.
            on_message: As for :meth:`register`.

        Returns:
            The client, closed; :attr:`Client.close_code` says why it left.

        Raises:
            HubClosedError: if :meth:`aclose` has started.
        """
        client = self.register(
            connection, topics=topics, identity=identity, info=info, on_message=on_message
        )
        try:
            await client.wait_closed()
        finally:
            if not client._done:
                client.close(CloseCode.GOING_AWAY, "server shutting down")
                with trio.CancelScope(shield=True):
                    await client.wait_closed()
        return client

    def _unregister(self, client: Client) -> None:
        self._clients.pop(client, None)
        if self._history is not None:
            self._history.forget(client)
        for topic in list(client._topics):
            self._remove_subscriber(topic, client)
        if self._config.ping_interval is not None and can_ping(client._transport):
            self._forget_pings()

    def _forget_pings(self) -> None:
        # A client that left keeps its place in the ping queue until its ping
        # is due, and with it its transport and buffers: under churn, that is
        # every client of the last ping_interval seconds. Compact the queue
        # once departed clients are the majority; each compaction removes at
        # least half of it, so the cost per client stays constant, and the
        # queue never holds more than twice the clients still registered.
        self._ping_departed += 1
        queue = self._ping_queue
        if self._ping_departed * 2 > len(queue):
            # In place: the keepalive task holds a reference to this deque.
            live = [entry for entry in queue if not entry[1]._ending]
            queue.clear()
            queue.extend(live)
            self._ping_departed = 0

    def _add_subscriber(self, topic: str, client: Client) -> None:
        subscribers = self._topics.get(topic)
        if subscribers is None:
            subscribers = self._topics[topic] = {}
            if self._backend is not None:
                self._backend.subscribe(topic)
        elif client in subscribers:
            return
        if self._presence is not None:
            self._presence.joining(topic, client)
            # The join may have evicted the topic's last other subscriber,
            # which removed the topic.
            if self._topics.get(topic) is not subscribers:
                subscribers = self._topics[topic] = {}
                if self._backend is not None:
                    self._backend.subscribe(topic)
        subscribers[client] = None
        client._topics.add(topic)

    def _remove_subscriber(self, topic: str, client: Client) -> None:
        subscribers = self._topics.get(topic)
        if subscribers is None or client not in subscribers:
            return
        del subscribers[client]
        client._topics.discard(topic)
        if self._presence is not None:
            self._presence.left(topic, client)
        # (The leave may have evicted the last subscriber, and removed the topic.)
        if not subscribers and self._topics.get(topic) is subscribers:
            del self._topics[topic]
            if self._backend is not None and not (
                self._history is not None and self._history.buffered(topic)
            ):
                self._backend.unsubscribe(topic)
                if self._history is not None:
                    self._history.released(topic)

    def _client_finished(self, client: Client) -> None:
        self._live.discard(client)
        if self._closing and not self._live:
            self._all_finished.set()

    # ---------------------------------------------------------------- topics

    def subscribe(self, client: Client, topic: str) -> None:
        """Subscribe ``client`` to ``topic``; it then receives what is published there.

        Subscribing twice is harmless. A client that has left stays unsubscribed.

        Raises:
            ValueError: if ``topic`` is not a non-empty ``str``.
        """
        _check_topic(topic)
        if client._ending or client._hub is not self:
            return
        self._add_subscriber(topic, client)

    def unsubscribe(self, client: Client, topic: str) -> None:
        """Unsubscribe ``client`` from ``topic``; harmless if it was not subscribed."""
        if self._history is not None:
            self._history.forget(client, topic)
        self._remove_subscriber(topic, client)

    def topics(self) -> frozenset[str]:
        """The topics that have at least one subscriber now."""
        return frozenset(self._topics)

    # -------------------------------------------------------------- presence

    async def presence(self, topic: str) -> list[PresenceInfo]:
        """Who is subscribed to ``topic`` now, on every node: one entry per connection.

        This node's entries come first, in the order they subscribed. With a
        backend that shares presence (:class:`~trio_hub.backends.redis.RedisBackend`),
        the other nodes' follow, read from the backend; a node that died
        without saying goodbye drops out within the backend's documented bound.
        See :doc:`/howto/presence`.

        Raises:
            RuntimeError: if the hub was not opened with ``presence=True``.
            ValueError: if ``topic`` is not a non-empty ``str``.
            BackendUnavailableError: if the shared presence cannot be read now.

        .. versionadded:: 0.2
        """
        _check_topic(topic)
        return await self._require_presence().presence(topic)

    def local_presence(self, topic: str) -> list[PresenceInfo]:
        """This node's part of :meth:`presence`, without waiting.

        Raises:
            RuntimeError: if the hub was not opened with ``presence=True``.
            ValueError: if ``topic`` is not a non-empty ``str``.

        .. versionadded:: 0.2
        """
        _check_topic(topic)
        return self._require_presence().local(topic)

    @property
    def presence_enabled(self) -> bool:
        """Whether the hub tracks presence (``open_hub(presence=True)``).

        .. versionadded:: 0.2
        """
        return self._presence is not None

    def _require_presence(self) -> _PresenceTracker:
        if self._presence is None:
            raise RuntimeError("presence is not tracked: open the hub with presence=True")
        return self._presence

    # ------------------------------------------------------------ messaging

    def broadcast(self, message: Message) -> int:
        """Send ``message`` to every registered client, without waiting.

        Each client receives messages in the order of the calls, across
        broadcasts and publishes. A client whose queue is full gets the hub's
        slow-client policy; the others are not affected.

        Returns:
            How many clients the message was meant for (registered now).

        Raises:
            HubClosedError: if :meth:`aclose` has started.
        """
        if self._closing:
            raise HubClosedError("the hub is closing: broadcast() is no longer possible")
        self._messages_broadcast += 1
        count = self._fan_out(self._clients, message)
        if self._backend is not None:
            self._backend.publish(None, message.encode())
        return count

    def publish(self, topic: str, message: Message) -> int:
        """Send ``message`` to the clients subscribed to ``topic``, without waiting.

        Returns:
            How many subscribers the message was meant for (0 if none).

        Raises:
            HubClosedError: if :meth:`aclose` has started.
            ValueError: if ``topic`` is not a non-empty ``str``.
        """
        _check_topic(topic)
        if self._closing:
            raise HubClosedError("the hub is closing: publish() is no longer possible")
        self._messages_published += 1
        history = self._history
        if history is not None:
            policy = history.policy(topic)
            if policy is not None:
                return history.publish(topic, policy, message)
        subscribers = self._topics.get(topic)
        count = self._fan_out(subscribers, message) if subscribers else 0
        if self._backend is not None:
            self._backend.publish(topic, message.encode())
        return count

    async def publish_with_position(self, topic: str, message: Message) -> StreamPosition:
        """Publish on a topic with history, and return the publication's position.

        It is :meth:`publish`, which delivers without waiting; this waits only
        for the offset, which a shared history (Redis) gives after a round trip.

        .. versionadded:: 0.2

        Raises:
            HistoryError: if ``topic`` has no history.
            HistoryUnavailableError: if the shared history is unreachable; the
                message still reached this node's subscribers, unnumbered.
            HubClosedError: if :meth:`aclose` has started.
            ValueError: if the payload is not a JSON object or has an ``"offset"``.
        """
        _check_topic(topic)
        if self._closing:
            raise HubClosedError("the hub is closing: publish() is no longer possible")
        history = self._history
        policy = history.policy(topic) if history is not None else None
        if history is None or policy is None:
            raise HistoryError(f"topic {topic!r} has no history")
        done = trio.Event()
        outcome: list[StreamPosition | BaseException] = []

        def reply(result: StreamPosition | BaseException) -> None:
            outcome.append(result)
            done.set()

        self._messages_published += 1
        history.publish(topic, policy, message, reply)
        await done.wait()
        result = outcome[0]
        if isinstance(result, BaseException):
            raise result
        return result

    async def history(
        self, topic: str, *, since: StreamPosition | None = None, limit: int | None = None
    ) -> HistoryResult:
        """Read ``topic``'s history: its position, and the publications it keeps.

        Args:
            topic: A topic with history.
            since: Only publications after this position; if the history no
                longer covers them all (another epoch, trimmed, expired), the
                result has ``recovered=False`` and none.
            limit: At most this many publications, the oldest first.

        .. versionadded:: 0.2

        Raises:
            HistoryError: if ``topic`` has no history.
            HistoryUnavailableError: if the shared history is unreachable.
        """
        _check_topic(topic)
        if self._history is None:
            raise HistoryError(f"topic {topic!r} has no history")
        return await self._history.history(topic, since, limit)

    async def position(self, topic: str) -> StreamPosition:
        """Return ``topic``'s position: its last offset (0: none yet) and its epoch.

        A position taken before the first publication stays valid after it.

        .. versionadded:: 0.2

        Raises:
            HistoryError: if ``topic`` has no history.
            HistoryUnavailableError: if the shared history is unreachable.
        """
        return (await self.history(topic, limit=0)).position

    async def recover(
        self,
        client: Client,
        topic: str,
        since: StreamPosition | None = None,
        *,
        announce: Callable[[HistoryResult], Message | None] | None = None,
    ) -> HistoryResult:
        """Subscribe ``client`` to ``topic``, first replaying what it missed since ``since``.

        The client receives, in this order: ``announce(result)`` if that returns
        a message; every publication after ``since`` (if the history still
        covers them all: ``result.recovered``); then every later publication.
        Nothing is missing and nothing comes twice, also while publications
        keep coming during the catch-up. If the history does not cover
        ``since`` (another epoch, trimmed, expired), nothing is replayed and
        ``result.recovered`` is false: the client gets only live publications,
        from ``result.position`` on. Without ``since`` this subscribes, and
        says where the topic stands.

        A client already subscribed to ``topic`` is resubscribed from ``since``.

        .. versionadded:: 0.2

        Args:
            client: A registered client.
            topic: A topic with history.
            since: The position of the last publication the client received.
            announce: Builds the message that goes first, such as the wire
                protocol's ``subscribed``.

        Returns:
            What was found; see :class:`HistoryResult`.

        Raises:
            HistoryError: if ``topic`` has no history.
            HistoryUnavailableError: if the shared history is unreachable;
                the client was not subscribed.
        """
        _check_topic(topic)
        if self._history is None:
            raise HistoryError(f"topic {topic!r} has no history")
        return await self._history.recover(client, topic, since, announce)

    def has_history(self, topic: str) -> bool:
        """Whether ``topic``'s publications are numbered and kept.

        .. versionadded:: 0.2
        """
        return self._history is not None and self._history.policy(topic) is not None

    def deliver_publication(self, topic: str, offset: int, epoch: str, data: bytes) -> None:
        """Deliver a publication numbered by a shared history; called by the backend.

        .. versionadded:: 0.2
        """
        self._messages_received += 1
        if self._history is not None:
            self._history.deliver_publication(topic, offset, epoch, data)

    def deliver(self, topic: str | None, data: bytes) -> None:
        """Deliver a message that another node published; called by the backend.

        It reaches the local clients as a local broadcast (``topic=None``) or
        publication would, in order with local messages. Data that does not
        decode is logged and dropped; it never reaches a client.
        """
        if self._closing:
            return
        try:
            message = Message.decode(data)
        except MessageError:
            logger.exception("dropped an undecodable message from the backend")
            return
        self._messages_received += 1
        if topic is None:
            self._fan_out(self._clients, message)
        else:
            subscribers = self._topics.get(topic)
            if subscribers:
                self._fan_out(subscribers, message)

    def _fan_out(self, clients: dict[Client, None], message: Message) -> int:
        if type(message) is not Message:
            raise TypeError(f"expected a trio_hub.Message, got {type(message).__name__}")
        # A snapshot: an eviction during the loop unregisters its client.
        targets = list(clients)
        count = len(targets)
        if count > 1:
            # Each fan-out starts at another client. The order of the offers
            # is the order in which writes go out (and writer tasks start)
            # under load: always starting with the first registered would put
            # the same clients at the back of every round. Each client still
            # gets each message in the order of the calls.
            start = self._fan_outs % count
            self._fan_outs += 1
            if start:
                targets = targets[start:] + targets[:start]
        for client in targets:
            client._offer(message)
        return count

    # -------------------------------------------------------------- overload

    @property
    def intake_paused(self) -> bool:
        """Whether the hub's backlog is over ``intake_limit`` now (see :ref:`overload`).

        While it is, served clients' inbound messages wait before they are
        handled, and :meth:`wait_intake_open` waits.

        .. versionadded:: 0.2
        """
        return self._gate.closed

    async def wait_intake_open(self) -> None:
        """Wait until the hub's backlog is low enough to take more messages.

        Call it before :meth:`broadcast` or :meth:`publish` in a loop that
        publishes as fast as it can: the loop then runs at the pace the
        clients' sockets take, as the hub's own publishing clients do, instead
        of filling every queue. It returns at once (after a checkpoint) while
        the backlog is under ``intake_limit``; once the backlog went over, it
        returns when the backlog is down to half the limit, or when the hub
        starts closing. With ``intake_limit=None`` it never waits. See
        :ref:`overload`.

        .. versionadded:: 0.2
        """
        await self._gate.wait_open()

    # ------------------------------------------------------------ statistics

    def statistics(self) -> HubStatistics:
        """Return a frozen snapshot of the hub's state and counters."""
        history = self._history
        queued = queued_bytes = 0
        for client in self._live:
            queued += client._backlog
            queued_bytes += client._backlog_bytes
        return HubStatistics(
            clients=len(self._clients),
            clients_per_topic=types.MappingProxyType(
                {topic: len(subscribers) for topic, subscribers in self._topics.items()}
            ),
            messages_broadcast=self._messages_broadcast,
            messages_published=self._messages_published,
            messages_sent=self._messages_sent,
            messages_received=self._messages_received,
            deliveries=self._deliveries,
            queued=queued,
            queued_bytes=queued_bytes,
            unsent_bytes=self._gate._unsent_bytes,
            peak_queued_bytes=self._gate._peak_queued_bytes,
            intake_paused=self._gate.closed,
            intake_pauses=self._gate._pauses,
            drops=self._drops,
            evictions=self._evictions,
            keepalive_timeouts=self._keepalive_timeouts,
            discarded=self._discarded,
            errors=self._errors,
            registrations=self._registrations,
            presence_entries=self._presence.entry_count() if self._presence else 0,
            presence_joins=self._presence.joins if self._presence else 0,
            presence_leaves=self._presence.leaves if self._presence else 0,
            presence_expirations=self._presence.expirations if self._presence else 0,
            backend=(
                self._backend.statistics()
                if self._backend is not None
                else MemoryBackend().statistics()
            ),
            history_sizes=types.MappingProxyType(history.sizes() if history else {}),
            recoveries=history.recoveries if history else 0,
            recovery_failures=history.recovery_failures if history else 0,
            history_errors=history.history_errors if history else 0,
            history_local_only=history.local_only if history else 0,
            history_gaps=history.gaps if history else 0,
            compression=self._compression.snapshot(),
        )

    # -------------------------------------------------------------- shutdown

    async def aclose(self) -> None:
        """Shut the hub down; return once every client task has ended.

        The sequence (see :ref:`shutdown`):

        1. Registration stops: :meth:`register`, :meth:`broadcast` and
           :meth:`publish` raise :class:`HubClosedError` from now on.
        2. Each client stops handling input and pinging, and its writer flushes what is
           queued, for up to ``drain_timeout`` seconds in all.
        3. Every client is closed with 1001 (going away); each close handshake
           gets up to ``close_timeout`` seconds.
        4. Every client task has ended when this returns.

        It is idempotent and safe to call from several tasks at once: every call
        returns when the shutdown is complete. Leaving :func:`open_hub`'s block,
        or cancelling the scope around it, runs the same sequence.
        """
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        logger.debug("hub closing: %d clients", len(self._clients))
        if not self._live:
            self._all_finished.set()
        # No more pings: the clients are leaving.
        self._keepalive_scope.cancel()
        # Nothing more is taken in: nobody may wait for the backlog any more.
        self._gate.disable()
        # Shielded: a caller's cancellation must not leave the hub half closed.
        # Every step is bounded by drain_timeout or close_timeout.
        with trio.CancelScope(shield=True):
            for client in list(self._clients):
                client._start_drain()
            with trio.move_on_after(self._config.drain_timeout):
                await self._all_finished.wait()
            for client in list(self._clients):
                client.close(CloseCode.GOING_AWAY, "hub shutting down")
            await self._all_finished.wait()
        if self._presence is not None:
            # Goodbye to the other nodes (bounded by the backend's timeouts).
            await self._presence.aclose()
        # Last, once no client can publish any more: disconnect from the backend.
        self._backend_scope.cancel()
        self._closed.set()
        logger.debug("hub closed")

    async def wait_closed(self) -> None:
        """Wait until a shutdown that has started has completed."""
        await self._closed.wait()

    async def _keepalive_loop(self, interval: float) -> None:
        queue = self._ping_queue
        with self._keepalive_scope:
            while True:
                if not queue:
                    self._ping_wakeup = trio.Event()
                    await self._ping_wakeup.wait()
                    continue
                due, client = queue[0]
                if due > trio.current_time():
                    await trio.sleep_until(due)
                    continue
                queue.popleft()
                if client._ending:
                    self._ping_departed -= 1
                    continue
                if not client._pinging and client._nursery is not None:
                    client._nursery.start_soon(client._ping)
                queue.append((due + interval, client))

    async def _run_backend(self, *, task_status: trio.TaskStatus[None]) -> None:
        assert self._backend is not None
        with self._backend_scope:
            await self._backend.run(self, task_status=task_status)

    def __repr__(self) -> str:
        state = "closed" if self._closing else "open"
        return f"<trio_hub.Hub {state}, {len(self._clients)} clients>"


def _check_topic(topic: str) -> str:
    if not isinstance(topic, str) or not topic:
        raise ValueError(f"a topic must be a non-empty str, got {topic!r}")
    return topic


@asynccontextmanager
async def open_hub(
    *,
    queue_size: int = 256,
    max_queue_bytes: int | None = None,
    on_slow_client: SlowClientPolicy = SlowClientPolicy.EVICT,
    ping_interval: float | None = 20.0,
    pong_timeout: float = 20.0,
    write_timeout: float = 10.0,
    drain_timeout: float = 5.0,
    close_timeout: float = 5.0,
    on_message: MessageHandler | None = None,
    intake_limit: int | None = 16384,
    backend: Backend | None = None,
    history_size: int | None = None,
    history_ttl: float | None = None,
    history: Callable[[str], HistoryPolicy | None] | None = None,
    max_history_topics: int = 10_000,
    presence: bool = False,
    presence_events: PresenceEvents = False,
) -> AsyncIterator[Hub]:
    """Open a hub that owns a nursery for its clients' tasks.

    Leaving the ``async with`` block shuts the hub down as :meth:`Hub.aclose`
    does, whether the block ends normally, raises, or is cancelled.

    Args:
        queue_size: Messages that may wait for one client (accepted and not yet
            written) before the slow-client policy applies.
        max_queue_bytes: An optional bound on the encoded size of those
            messages. A message is always accepted into an empty queue.
        on_slow_client: What to do when a client's queue is full.
        ping_interval: Seconds between keepalive pings; ``None`` disables them.
        pong_timeout: Seconds a client has to answer a ping before it is closed
            with 4001.
        write_timeout: Seconds one write to a client may take before the client
            is evicted with 4000.
        drain_timeout: Seconds that shutdown waits, in all, for queued messages
            to be written before closing clients.
        close_timeout: Seconds each client's close handshake may take.
        on_message: Default handler for inbound messages: an async callable
            taking ``(client, message)``. Invalid envelopes never reach it; the
            hub answers them with an ``error`` message.
        intake_limit: Overload: the hub-wide backlog (messages accepted for
            clients and not yet written, each client counted for at most 4)
            above which intake pauses: clients' inbound messages wait before
            they are handled, and :meth:`Hub.wait_intake_open` waits, until the
            backlog is down to half of it. ``None`` never pauses. See
            :ref:`overload`.

            .. versionadded:: 0.2
        backend: Where broadcasts and publications are shared with other hub
            processes; by default a :class:`~trio_hub.backends.MemoryBackend`
            (this process only). See :mod:`trio_hub.backends`.
        history_size: Give every topic a history of this many publications
            (see :ref:`recovery`); ``None`` (the default): no history.
        history_ttl: Seconds each publication stays in the history; ``None``:
            no time limit. Needs ``history_size``.
        history: Decides per topic instead: a function of the topic that
            returns its :class:`HistoryPolicy`, or ``None`` for no history.
        max_history_topics: The most topics whose history this process keeps
            in memory; past it, the topic that published least recently loses
            its history (its epoch changes). Not used with a shared history.
        presence: Track who is subscribed to each topic, for
            :meth:`Hub.presence`; shared by every node if the backend supports
            it (see :doc:`/howto/presence`).
        presence_events: Send ``join`` and ``leave`` messages to a topic's
            subscribers when a connection subscribes or leaves: ``True`` for
            every topic, or a predicate that takes the topic. ``True`` or a
            predicate implies ``presence=True``.

    .. versionchanged:: 0.2
       The ``history_size``, ``history_ttl``, ``history``,
       ``max_history_topics``, ``presence`` and ``presence_events`` arguments.

    Yields:
        The open hub.

    Raises:
        ValueError: if a setting is out of range.
        BackendUnavailableError: if the backend cannot be reached at start.
    """
    config = HubConfig(
        queue_size=queue_size,
        max_queue_bytes=max_queue_bytes,
        on_slow_client=on_slow_client,
        ping_interval=ping_interval,
        pong_timeout=pong_timeout,
        write_timeout=write_timeout,
        drain_timeout=drain_timeout,
        close_timeout=close_timeout,
        on_message=on_message,
        intake_limit=intake_limit,
        history=_history_policy(history_size, history_ttl, history),
        max_history_topics=max_history_topics,
    )
    try:
        async with trio.open_nursery() as nursery:
            hub = Hub._create(nursery, config, backend if backend is not None else MemoryBackend())
            if presence or presence_events is not False:
                _enable_presence(hub, presence_events)
            if hub._backend is not None:
                await nursery.start(hub._run_backend)
            if config.ping_interval is not None:
                nursery.start_soon(hub._keepalive_loop, config.ping_interval)
            try:
                yield hub
            finally:
                # aclose() shields itself, so cancelling the enclosing scope gets
                # the same orderly shutdown, bounded by drain_timeout and
                # close_timeout.
                await hub.aclose()
    except BaseExceptionGroup as group:
        # The hub's own tasks never raise (each client catches and logs its
        # failures), so a group from the nursery holds exactly the exception
        # that left the ``async with`` block. Re-raise it as itself, as
        # trio-websocket's open_websocket() does, instead of wrapped.
        if len(group.exceptions) != 1:
            raise
        _reraise(group.exceptions[0])


def _history_policy(
    size: int | None, ttl: float | None, per_topic: HistoryPolicyFunction | None
) -> HistoryPolicyFunction | None:
    if per_topic is not None:
        if size is not None or ttl is not None:
            raise ValueError("give either history, or history_size and history_ttl, not both")
        if not callable(per_topic):
            raise TypeError(f"history must be a function of the topic, got {per_topic!r}")
        return per_topic
    if size is None:
        if ttl is not None:
            raise ValueError("history_ttl needs history_size")
        return None
    policy = HistoryPolicy(size, ttl)
    return lambda topic: policy


def _enable_presence(hub: Hub, events: PresenceEvents) -> None:
    tracker = _PresenceTracker(hub, events)
    # A backend shares presence if it can open a store for it (duck-typed, so
    # that the Backend protocol stays as it is for backends without presence).
    open_presence = getattr(hub._backend, "open_presence", None)
    if open_presence is not None:
        tracker.attach(open_presence(tracker))
    hub._presence = tracker


def _reraise(exc: BaseException) -> NoReturn:
    __tracebackhide__ = True
    context = exc.__context__
    try:
        raise exc
    finally:
        exc.__context__ = context
        del exc, context
