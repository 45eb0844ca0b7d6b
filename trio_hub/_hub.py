"""The hub: registry, topics, broadcast and publish, statistics, shutdown."""

from __future__ import annotations

import logging
import types
from collections import deque
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Final, NoReturn, Protocol, final, runtime_checkable

import trio
from trio_websocket import WebSocketConnection

from ._client import Client
from ._closecodes import CloseCode
from ._compression import CompressionCounters
from ._config import HubConfig, MessageHandler
from ._errors import HubClosedError, MessageError
from ._message import Message
from ._policy import SlowClientPolicy
from ._statistics import HubStatistics
from ._transport import Transport, WebSocketTransport
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
        "_registrations",
        "_topics",
    )

    def __init__(self, nursery: trio.Nursery, config: HubConfig, backend: Backend) -> None:
        self._nursery = nursery
        self._config = config
        # The default in-process backend does nothing: skip it on the hot path.
        self._backend: Backend | None = None if isinstance(backend, MemoryBackend) else backend
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
                available as :attr:`Client.identity`.
            on_message: Handler for this client's inbound messages; overrides
                the hub's ``on_message``.

        Returns:
            The new client.

        Raises:
            HubClosedError: if :meth:`aclose` has started.
            TypeError: if ``connection`` is neither a trio-websocket connection
                nor a :class:`Transport`.
        """
        client = self._add_client(
            connection, topics=topics, identity=identity, on_message=on_message
        )
        self._nursery.start_soon(client._run, name=f"trio_hub client #{client.id}")
        return client

    def _add_client(
        self,
        connection: WebSocketConnection | Transport,
        *,
        topics: Iterable[str] = (),
        identity: object = None,
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
            on_message=on_message if on_message is not None else self._config.on_message,
        )
        self._clients[client] = None
        self._live.add(client)
        self._registrations += 1
        for topic in topic_list:
            self._add_subscriber(topic, client)
        interval = self._config.ping_interval
        if interval is not None:
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
            on_message: As for :meth:`register`.

        Returns:
            The client, closed; :attr:`Client.close_code` says why it left.

        Raises:
            HubClosedError: if :meth:`aclose` has started.
        """
        client = self.register(connection, topics=topics, identity=identity, on_message=on_message)
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
        for topic in list(client._topics):
            self._remove_subscriber(topic, client)
        if self._config.ping_interval is not None:
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
        subscribers[client] = None
        client._topics.add(topic)

    def _remove_subscriber(self, topic: str, client: Client) -> None:
        subscribers = self._topics.get(topic)
        if subscribers is None or client not in subscribers:
            return
        del subscribers[client]
        client._topics.discard(topic)
        if not subscribers:
            del self._topics[topic]
            if self._backend is not None:
                self._backend.unsubscribe(topic)

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
        self._remove_subscriber(topic, client)

    def topics(self) -> frozenset[str]:
        """The topics that have at least one subscriber now."""
        return frozenset(self._topics)

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
        subscribers = self._topics.get(topic)
        count = self._fan_out(subscribers, message) if subscribers else 0
        if self._backend is not None:
            self._backend.publish(topic, message.encode())
        return count

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
        for client in targets:
            client._offer(message)
        return len(targets)

    # ------------------------------------------------------------ statistics

    def statistics(self) -> HubStatistics:
        """Return a frozen snapshot of the hub's state and counters."""
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
            drops=self._drops,
            evictions=self._evictions,
            keepalive_timeouts=self._keepalive_timeouts,
            discarded=self._discarded,
            errors=self._errors,
            registrations=self._registrations,
            backend=(
                self._backend.statistics()
                if self._backend is not None
                else MemoryBackend().statistics()
            ),
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
    backend: Backend | None = None,
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
        backend: Where broadcasts and publications are shared with other hub
            processes; by default a :class:`~trio_hub.backends.MemoryBackend`
            (this process only). See :mod:`trio_hub.backends`.

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
    )
    try:
        async with trio.open_nursery() as nursery:
            hub = Hub._create(nursery, config, backend if backend is not None else MemoryBackend())
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


def _reraise(exc: BaseException) -> NoReturn:
    __tracebackhide__ = True
    context = exc.__context__
    try:
        raise exc
    finally:
        exc.__context__ = context
        del exc, context
