"""Share a hub's broadcasts and publications between processes over Redis pub/sub.

Install the extra (``pip install 'trio_hub[redis]'``, which brings `coredis`_),
then give each hub process the same Redis URL. Every
:meth:`~trio_hub.Hub.broadcast` and :meth:`~trio_hub.Hub.publish` on any node
then reaches the matching clients of every node. Here two hubs in one process
stand for two nodes::

    >>> import trio
    >>> from trio_hub import Message, open_hub
    >>> from trio_hub.backends.redis import RedisBackend
    >>> from trio_hub.testing import TestHub
    >>> async def main() -> None:
    ...     url = "redis://127.0.0.1:6379/0"
    ...     async with (
    ...         open_hub(backend=RedisBackend(url)) as node_a,
    ...         open_hub(backend=RedisBackend(url)) as node_b,
    ...     ):
    ...         browser = TestHub(node_a).connect()  # a client of node A
    ...         node_b.broadcast(Message("hello", "from node B"))
    ...         print(await browser.receive())
    >>> trio.run(main)
    Message('hello', 'from node B')

What is guaranteed:

* While Redis is reachable, a publication reaches every subscribed client on
  every node exactly once, in the order in which its node issued it. A node
  delivers its own publications to its own clients at once, and ignores them
  when Redis sends them back (each is tagged with the backend's node id).
* A publication is encoded once and sent to Redis with one ``PUBLISH``,
  whatever the number of clients or nodes.
* A node subscribes in Redis only to the broadcast channel and to the topics
  that at least one of its clients holds, and unsubscribes when the last one
  leaves. Channel names are ``<prefix>:broadcast`` and ``<prefix>:topic:<topic>``
  (see :meth:`RedisBackend.channel_name`), so several applications can share one
  Redis with different prefixes.

What is lost when Redis goes away (Redis pub/sub is at-most-once: it stores
nothing for a subscriber that is not connected):

* Local delivery goes on: clients of the node that published still receive
  everything. Clients of the other nodes miss it.
* Publications made while a node is disconnected are not queued for later;
  they are counted in :attr:`~trio_hub.backends.BackendStatistics.publish_failures`.
  So are the ones that were on their way when the connection broke: some of
  those may in fact have reached Redis.
* Everything other nodes published while this node was disconnected, including
  between Redis' restart and this node's resubscription, never arrives here.
* The outage is logged once (WARNING, logger ``trio_hub``), and the return once
  (INFO); :meth:`RedisBackend.statistics` says ``state="disconnected"`` meanwhile.
  The node reconnects and resubscribes by itself, retrying with a delay that
  doubles up to ``max_reconnect_delay``.

Memory stays bounded: outgoing publications wait in a queue of at most
``outbox_size`` messages (when it is full, a publication is dropped and
counted as a failure), and incoming ones are handed to the hub as soon as the
socket delivers them, in batches, never accumulating in coredis' unbounded
buffers. Beyond that, Redis' own ``client-output-buffer-limit pubsub`` applies:
a node that cannot keep up is disconnected by Redis, which is an outage as above.

.. _coredis: https://coredis.readthedocs.io/
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import uuid
from collections.abc import Callable
from typing import Any, Final, final
from urllib.parse import urlsplit

import trio

from .._history import HistoryPolicy, HistorySink, HistoryUnavailableError, StreamPosition
from .._presence import PresenceSink, PresenceStore
from ._base import BackendSink, BackendStatistics, BackendUnavailableError

try:
    import anyio
    from coredis.commands.request import CommandRequest
    from coredis.connection import BaseConnection
    from coredis.exceptions import ConnectionError as RedisConnectionError
    from coredis.exceptions import RedisError
    from coredis.pool import ConnectionPool
    from coredis.typing import ResponseType
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "trio_hub.backends.redis needs coredis: pip install 'trio_hub[redis]'"
    ) from exc

# After the check above: these need coredis too.
from ._redis_history import (
    _Numbered,
    _Reply,
    append_command,
    appended_position,
    load_scripts,
    read_history,
    reset_epoch,
)
from ._redis_presence import _Commands, _RedisPresence

__all__ = ["RedisBackend"]

logger: Final = logging.getLogger("trio_hub")

# What a lost or hung Redis looks like, from coredis and from our own deadlines.
# coredis raises the built-in TimeoutError when a reply does not come in time.
_FAILURES: Final = (RedisError, TimeoutError, OSError, trio.TooSlowError)

# Each Redis message is this header, then the message as the hub encoded it.
# The version byte lets a later format coexist; the node id lets a node ignore
# its own publications when Redis sends them back.
_FORMAT_VERSION: Final = b"\x01"
_NODE_ID_SIZE: Final = 16
_HEADER_SIZE: Final = 1 + _NODE_ID_SIZE

# Publications sent per round trip: large enough to keep up with a burst,
# small enough that one failed round trip loses little.
_MAX_BATCH: Final = 1024

_FIRST_RECONNECT_DELAY: Final = 0.05

# Parsed bytes that coredis' parser may hold before we drop them.
_PARSER_COMPACT_BYTES: Final = 1 << 20

_SCHEMES: Final = frozenset({"redis", "rediss", "unix"})

_NOT_SUBSCRIBED: Final = object()

# Numbered publications (topics with history) have their own version byte, and
# the node id is followed by "<offset> <epoch> " and the message.
_NUMBERED_VERSION: Final = b"\x02"


@final
class RedisBackend:
    """A :class:`~trio_hub.backends.Backend` that links hub processes through Redis.

    Pass one to :func:`~trio_hub.open_hub`; a backend serves one hub, once.
    The module documentation above says what is guaranteed, and what is lost
    while Redis is unreachable.

    Args:
        url: Where Redis is: ``redis://[[user]:password@]host[:port][/db]``,
            ``rediss://`` for TLS, or ``unix:///path/to/socket``.
        prefix: The start of every channel name; hubs that share a prefix
            share their messages.
        start_timeout: Seconds that :func:`~trio_hub.open_hub` may spend
            reaching Redis, retrying, before it raises
            :class:`~trio_hub.backends.BackendUnavailableError`.
        io_timeout: Seconds that connecting, or any reply from Redis, may take
            before the connection counts as lost.
        keepalive_interval: Seconds between the pings that detect a Redis that
            hangs without closing the connection (detection then takes up to
            ``keepalive_interval + io_timeout``).
        max_reconnect_delay: The longest wait between two reconnection attempts.
        outbox_size: Publications that may wait to be sent to Redis; more than
            that are dropped and counted as failures.
        presence_ttl: For hubs that track presence: seconds after which the
            entries of a node that stopped refreshing them (it was killed, or
            lost Redis) drop out of every topic's presence; the other nodes
            send their ``leave`` events within ``presence_ttl * 4 / 3``. See
            "Presence" below.

    .. versionchanged:: 0.2
       The ``presence_ttl`` argument, and shared presence.

    Raises:
        ValueError: if a setting is out of range or the URL's scheme is unknown.
    """

    __slots__ = (
        "_awaiting",
        "_channels",
        "_confirmed",
        "_connect_attempts",
        "_connected",
        "_connection_class",
        "_connection_kwargs",
        "_dirty",
        "_down_since",
        "_header",
        "_inbound_peak",
        "_io_timeout",
        "_keepalive_interval",
        "_location",
        "_malformed",
        "_max_reconnect_delay",
        "_outages",
        "_outbox_full_logged",
        "_outbox_receive",
        "_outbox_send",
        "_parser_peak",
        "_prefix",
        "_presence",
        "_presence_ttl",
        "_publish_failures",
        "_published",
        "_publisher",
        "_reader",
        "_received",
        "_sink",
        "_start_timeout",
        "_subscribe_waiters",
        "_subscriber",
    )

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "trio_hub",
        start_timeout: float = 5.0,
        io_timeout: float = 5.0,
        keepalive_interval: float = 5.0,
        max_reconnect_delay: float = 2.0,
        outbox_size: int = 10_000,
        presence_ttl: float = 10.0,
    ) -> None:
        scheme = urlsplit(url).scheme
        if scheme not in _SCHEMES:
            raise ValueError(f"a Redis URL starts with redis://, rediss:// or unix://, got {url!r}")
        if not isinstance(prefix, str) or not prefix:
            raise ValueError(f"prefix must be a non-empty str, got {prefix!r}")
        for name, value in (
            ("start_timeout", start_timeout),
            ("io_timeout", io_timeout),
            ("keepalive_interval", keepalive_interval),
            ("max_reconnect_delay", max_reconnect_delay),
            ("presence_ttl", presence_ttl),
        ):
            if not isinstance(value, int | float) or not 0 < value < math.inf:
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if not isinstance(outbox_size, int) or outbox_size < 1:
            raise ValueError(f"outbox_size must be an int >= 1, got {outbox_size!r}")
        # coredis parses the URL (credentials, db, TLS options); we only borrow
        # the result and run each connection in our own nursery.
        pool = ConnectionPool.from_url(url, connect_timeout=io_timeout, stream_timeout=io_timeout)
        # Callable[..., ...] and Any: coredis types these per connection class,
        # and from_url() picks the class from the URL at run time.
        self._connection_class: Callable[..., BaseConnection] = pool.connection_class
        self._location = pool.location
        self._connection_kwargs: dict[str, Any] = dict(pool.connection_kwargs)
        # The pool's CPU limiter is shared by its connections; ours are independent.
        self._connection_kwargs.pop("processing_budget", None)
        self._prefix = prefix
        self._start_timeout = float(start_timeout)
        self._io_timeout = float(io_timeout)
        self._keepalive_interval = float(keepalive_interval)
        self._max_reconnect_delay = float(max_reconnect_delay)
        self._header = _FORMAT_VERSION + uuid.uuid4().bytes
        # An outbox entry: (channel, data, None) for a plain publication,
        # (channel, data, numbered) for one on a topic with history, or
        # presence commands.
        self._outbox_send, self._outbox_receive = trio.open_memory_channel[
            tuple[bytes, bytes, _Numbered | None] | _Commands
        ](outbox_size)
        # Topics with history whose publications reached local clients only
        # (Redis was out of reach): they get a new epoch once it is back.
        self._dirty: set[str] = set()
        # Publications whose caller waits for their position.
        self._awaiting: set[_Numbered] = set()
        self._subscribe_waiters: dict[bytes, trio.Event] = {}
        # The connection that history reads go through, while connected.
        self._reader: BaseConnection | None = None
        self._presence_ttl = float(presence_ttl)
        # Set by open_presence(), when the hub tracks presence.
        self._presence: _RedisPresence | None = None
        self._publisher: BaseConnection | None = None
        # The channels this node wants, each with its topic (None: broadcasts).
        # This is the source of truth, re-sent in full after every reconnection.
        self._channels: dict[bytes, str | None] = {self.channel_name(None).encode(): None}
        # The channels Redis has acknowledged on the current connection.
        self._confirmed: set[bytes] = set()
        self._sink: BackendSink | None = None
        self._subscriber: BaseConnection | None = None
        self._connected = False
        self._down_since: float | None = None
        self._outbox_full_logged = False
        self._connect_attempts = 0
        self._inbound_peak = 0
        self._parser_peak = 0
        self._published = 0
        self._publish_failures = 0
        self._received = 0
        self._outages = 0
        self._malformed = 0

    def channel_name(self, topic: str | None) -> str:
        """Return the Redis channel that carries ``topic`` (``None``: broadcasts).

        Useful to watch the traffic with ``redis-cli`` or ``PUBSUB CHANNELS``.
        """
        if topic is None:
            return f"{self._prefix}:broadcast"
        return f"{self._prefix}:topic:{topic}"

    # ---------------------------------------------------- the hub's side

    def publish(self, topic: str | None, data: bytes) -> None:
        """See :meth:`Backend.publish <trio_hub.backends.Backend.publish>`.

        Never blocks: while disconnected, or when the outbox is full, the
        publication is dropped and counted in ``publish_failures``.
        """
        if not self._connected:
            self._publish_failures += 1
            return
        channel = self.channel_name(topic).encode()
        try:
            self._outbox_send.send_nowait((channel, self._header + data, None))
        except trio.WouldBlock:
            self._publish_failures += 1
            if not self._outbox_full_logged:
                self._outbox_full_logged = True
                logger.warning(
                    "Redis at %s does not keep up: publications are being dropped "
                    "(outbox of %d full)",
                    self._location,
                    self._outbox_send.statistics().max_buffer_size,
                )

    # ------------------------------------------------------------ history

    def append(self, topic: str, policy: HistoryPolicy, data: bytes, reply: _Reply | None) -> bool:
        """Number, keep and publish a message on a topic with history, via Redis.

        The node delivers it to its own clients when Redis sends it back,
        numbered, as every node does. Returns ``False`` (and sends nothing)
        while Redis is out of reach or the outbox is full; the topic then gets
        a new epoch once Redis is back.
        """
        if self._connected:
            try:
                numbered = _Numbered(topic, policy, reply)
                self._outbox_send.send_nowait((self.channel_name(topic).encode(), data, numbered))
            except trio.WouldBlock:
                self._publish_failures += 1
            else:
                if reply is not None:
                    self._awaiting.add(numbered)
                return True
        self._dirty.add(topic)
        return False

    async def read(
        self,
        topic: str,
        policy: HistoryPolicy,
        since: StreamPosition | None,
        limit: int | None,
    ) -> tuple[StreamPosition, list[tuple[int, bytes]], bool]:
        """Read a topic's position and the publications after ``since``, from Redis.

        Raises:
            HistoryUnavailableError: if Redis is out of reach, or does not
                answer within ``io_timeout``.
        """
        reader = self._reader
        if reader is None or not self._connected:
            raise HistoryUnavailableError(f"Redis at {self._location} is unavailable")
        try:
            with trio.fail_after(self._io_timeout):
                return await read_history(reader, self._prefix, topic, policy, since, limit)
        except _FAILURES as exc:
            raise HistoryUnavailableError(
                f"Redis at {self._location} did not answer a history request: {exc!r}"
            ) from exc

    async def wait_subscribed(self, topic: str) -> None:
        """Return once Redis has confirmed this node's subscription to ``topic``.

        Raises:
            HistoryUnavailableError: if Redis is out of reach, or does not
                confirm within ``io_timeout``.
        """
        channel = self.channel_name(topic).encode()
        if channel not in self._confirmed:
            if not self._connected:
                raise HistoryUnavailableError(f"Redis at {self._location} is unavailable")
            waiter = self._subscribe_waiters.get(channel)
            if waiter is None:
                waiter = self._subscribe_waiters[channel] = trio.Event()
            with trio.move_on_after(self._io_timeout):
                await waiter.wait()
            if channel not in self._confirmed:
                raise HistoryUnavailableError(
                    f"Redis at {self._location} did not confirm a subscription"
                )
        await trio.lowlevel.checkpoint()

    def subscribe(self, topic: str) -> None:
        """See :meth:`Backend.subscribe <trio_hub.backends.Backend.subscribe>`."""
        channel = self.channel_name(topic).encode()
        if channel not in self._channels:
            self._channels[channel] = topic
            self._send_subscription(b"SUBSCRIBE", channel)

    def unsubscribe(self, topic: str) -> None:
        """See :meth:`Backend.unsubscribe <trio_hub.backends.Backend.unsubscribe>`."""
        channel = self.channel_name(topic).encode()
        if self._channels.pop(channel, _NOT_SUBSCRIBED) is not _NOT_SUBSCRIBED:
            self._send_subscription(b"UNSUBSCRIBE", channel)

    def _send_subscription(self, command: bytes, channel: bytes) -> None:
        subscriber = self._subscriber
        if subscriber is None:
            return  # the whole set is sent when the connection is (re)made
        # If the connection is lost, the session ends and the next one sends
        # the whole set.
        with contextlib.suppress(RedisError):
            subscriber.send_command(command, channel)

    def open_presence(self, sink: PresenceSink) -> PresenceStore:
        """Share the hub's presence with the other nodes; called once by the hub.

        :func:`~trio_hub.open_hub` calls it when opened with ``presence=True``
        (or ``presence_events``), before the backend runs.

        Raises:
            RuntimeError: if called twice or after the backend started.

        .. versionadded:: 0.2
        """
        if self._presence is not None or self._sink is not None:
            raise RuntimeError("open_presence() must be called once, before the backend runs")
        self._presence = _RedisPresence(self, sink)
        return self._presence

    def statistics(self) -> BackendStatistics:
        """See :meth:`Backend.statistics <trio_hub.backends.Backend.statistics>`.

        ``subscriptions`` counts the channels Redis has acknowledged on the
        current connection: 0 during an outage.
        """
        return BackendStatistics(
            name="redis",
            state="connected" if self._connected else "disconnected",
            published=self._published,
            publish_failures=self._publish_failures,
            received=self._received,
            outages=self._outages,
            subscriptions=len(self._confirmed),
        )

    def __repr__(self) -> str:
        state = "connected" if self._connected else "disconnected"
        return f"<RedisBackend {self._location} prefix={self._prefix!r} {state}>"

    # -------------------------------------------------------- connection

    async def run(
        self, sink: BackendSink, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Connect, then carry messages, reconnecting after outages, until cancelled.

        See :meth:`Backend.run <trio_hub.backends.Backend.run>`.

        Raises:
            BackendUnavailableError: if Redis cannot be reached within
                ``start_timeout`` seconds.
            RuntimeError: if this backend has run before.
        """
        if self._sink is not None:
            raise RuntimeError("a RedisBackend serves one hub, once")
        self._sink = sink
        try:
            await self._run(task_status)
        finally:
            # The hub is closing: nobody must wait for an offset forever.
            for numbered in list(self._awaiting):
                numbered.fail("the hub closed before Redis numbered this publication")
            self._awaiting.clear()

    async def _run(self, task_status: trio.TaskStatus[None]) -> None:
        deadline = trio.current_time() + self._start_timeout
        delay = _FIRST_RECONNECT_DELAY
        started = False
        while True:
            self._connect_attempts += 1
            failure: BaseException | None = None
            try:
                async with trio.open_nursery() as session:
                    if started:
                        subscriber, publisher = await self._connect(session)
                    else:
                        # Only the first connection has a deadline; later ones
                        # are retried for as long as the hub runs.
                        with trio.fail_at(deadline):
                            subscriber, publisher = await self._connect(session)
                    self._mark_up()
                    delay = _FIRST_RECONNECT_DELAY
                    if not started:
                        started = True
                        task_status.started()
                    session.start_soon(self._publish_loop, publisher)
                    session.start_soon(self._keepalive_loop, subscriber)
                    if self._presence is not None:
                        session.start_soon(self._presence.run, publisher)
                    await self._consume(subscriber)
            except* _FAILURES as group:
                failure = _first_leaf(group)
            finally:
                self._subscriber = None
                self._reader = None
                self._publisher = None
                self._confirmed.clear()
                for waiter in self._subscribe_waiters.values():
                    waiter.set()
                self._subscribe_waiters.clear()
            if not started:
                if trio.current_time() >= deadline:
                    raise BackendUnavailableError(
                        f"Redis at {self._location} is unreachable "
                        f"(gave up after {self._start_timeout:g} s): {failure!r}"
                    ) from failure
                logger.debug("Redis at %s: not reachable yet: %r", self._location, failure)
                await trio.sleep(min(delay, max(deadline - trio.current_time(), 0)))
            else:
                self._mark_down(failure)
                # Also the checkpoint that lets a cancellation through, should
                # coredis have turned one into a ConnectionError.
                await trio.sleep(delay)
            delay = min(delay * 2, self._max_reconnect_delay)

    async def _connect(self, session: trio.Nursery) -> tuple[BaseConnection, BaseConnection]:
        # Three connections: a subscribed connection answers only pub/sub
        # commands and PING, so publications (and presence writes) need their
        # own, and history reads one more, so that a read never waits behind
        # a batch of publications.
        subscriber = await self._open_connection(session)
        publisher = await self._open_connection(session)
        reader = await self._open_connection(session)
        await load_scripts(publisher)
        # Before any new publication: positions from before an unnumbered
        # delivery must not pass for complete.
        for topic in sorted(self._dirty):
            await reset_epoch(publisher, self._prefix, topic)
        self._dirty.clear()
        self._reader = reader
        self._publisher = publisher
        # From this line on, subscribe() and unsubscribe() queue their commands
        # on this connection after this SUBSCRIBE, so Redis sees them in order.
        self._subscriber = subscriber
        subscriber.send_command(b"SUBSCRIBE", *self._channels)
        # Redis answers in order: once PING is answered, the SUBSCRIBE took
        # effect and messages flow.
        await subscriber.create_request(b"PING")
        return subscriber, publisher

    async def _open_connection(self, session: trio.Nursery) -> BaseConnection:
        connection = self._connection_class(self._location, **self._connection_kwargs)
        await session.start(self._run_connection, connection)
        return connection

    async def _run_connection(
        self, connection: BaseConnection, *, task_status: trio.TaskStatus[None]
    ) -> None:
        try:
            await connection.run(task_status=task_status)
        finally:
            # coredis 6.9 creates these streams in __init__ but closes them only
            # once connected, so a refused connection would leave six of them to
            # the garbage collector, each with a ResourceWarning. Closing twice
            # is harmless.
            for stream in (
                connection._push_message_buffer_in,
                connection._push_message_buffer_out,
                connection._streamed_message_buffer_in,
                connection._streamed_message_buffer_out,
                connection._write_buffer_in,
                connection._write_buffer_out,
            ):
                stream.close()
        # run() returns, rather than raising, when an established connection
        # breaks: end the session so that it is made again.
        raise RedisConnectionError(f"lost the connection to Redis at {self._location}")

    def _mark_up(self) -> None:
        self._connected = True
        self._outbox_full_logged = False
        if self._down_since is not None:
            logger.info(
                "Redis at %s is back after %.1f s; resubscribed to %d channels",
                self._location,
                trio.current_time() - self._down_since,
                len(self._channels),
            )
            self._down_since = None

    def _mark_down(self, failure: BaseException | None) -> None:
        self._connected = False
        if self._down_since is None:
            self._down_since = trio.current_time()
            self._outages += 1
            logger.warning(
                "Redis at %s is unavailable (%r): publications reach this node's "
                "clients only until it is back; reconnecting",
                self._location,
                failure,
            )
        # Publications still waiting would go out late, after the outage, so
        # they are dropped and counted as every publication made during it is.
        while True:
            try:
                item = self._outbox_receive.receive_nowait()
            except trio.WouldBlock:
                break
            if isinstance(item, _Commands):
                # Presence writes: written again in full on reconnection.
                self._publish_failures += sum(c[0] == b"PUBLISH" for c in item.commands)
                continue
            _, data, numbered = item
            self._publish_failures += 1
            if numbered is not None:
                # Never sent: deliver it here, unnumbered, as a publication
                # made during the outage is.
                self._fail_numbered(numbered)
                if self._sink is not None:
                    self._sink.deliver(numbered.topic, data)

    def _fail_numbered(self, numbered: _Numbered) -> None:
        self._dirty.add(numbered.topic)
        numbered.fail(f"Redis at {self._location} became unavailable")
        self._awaiting.discard(numbered)

    # ------------------------------------------------------------ tasks

    async def _publish_loop(self, publisher: BaseConnection) -> None:
        # One task, one connection, and each batch answered before the next is
        # sent: Redis sees the publications in the order the hub made them.
        outbox = self._outbox_receive
        while True:
            batch = [await outbox.receive()]
            while len(batch) < _MAX_BATCH:
                try:
                    batch.append(outbox.receive_nowait())
                except trio.WouldBlock:
                    break
            # One request batch: coredis' writer takes a checkpoint for every
            # queued request, which a busy event loop turns into one request
            # per scheduler tick.
            commands: list[CommandRequest[Any]] = []
            # For each command, the numbered publication whose reply it carries.
            numbered_of: list[_Numbered | None] = []
            publications = 0
            flushed: list[trio.Event] = []
            for item in batch:
                if isinstance(item, _Commands):
                    # Presence: other commands, in order with the publications.
                    for command in item.take():
                        commands.append(
                            CommandRequest(command[0], *command[1:], execution_parameters={})
                        )
                        numbered_of.append(None)
                        publications += command[0] == b"PUBLISH"
                    if item.done is not None:
                        flushed.append(item.done)
                    continue
                channel, data, numbered = item
                commands.append(
                    CommandRequest(b"PUBLISH", channel, data, execution_parameters={})
                    if numbered is None
                    else append_command(
                        self._prefix, channel, _NUMBERED_VERSION + self._header[1:], data, numbered
                    )
                )
                numbered_of.append(numbered)
                publications += 1
            if not commands:
                for done in flushed:
                    done.set()
                continue
            try:
                replies = await publisher.create_request_batch(commands)
            except _FAILURES:
                self._fail_batch(numbered_of, publications)
                raise
            errors = [reply for reply in replies if isinstance(reply, BaseException)]
            if errors:
                # Timeouts or a lost connection: the session must end.
                self._fail_batch(numbered_of, publications)
                raise errors[0]
            self._published += publications
            for numbered, reply in zip(numbered_of, replies, strict=True):
                if numbered is not None and numbered.reply is not None:
                    numbered.resolve(appended_position(reply))
                    self._awaiting.discard(numbered)
            for done in flushed:
                done.set()

    def _fail_batch(self, numbered_of: list[_Numbered | None], publications: int) -> None:
        # Sent, but whether Redis ran them is unknown: not delivered here (they
        # may come back numbered), and the topics get a new epoch.
        self._publish_failures += publications
        for numbered in numbered_of:
            if numbered is not None:
                self._fail_numbered(numbered)

    async def _keepalive_loop(self, subscriber: BaseConnection) -> None:
        # A Redis that hangs (SIGSTOP, a dead network path) does not close the
        # connection; an unanswered PING (io_timeout) is how we notice.
        while True:
            await trio.sleep(self._keepalive_interval)
            await subscriber.create_request(b"PING")

    async def _consume(self, subscriber: BaseConnection) -> None:
        # coredis queues pushed messages in an unbounded stream, and its public
        # iterator takes one message per scheduler tick. Its reader adds one
        # socket read (up to 64 KiB of messages) per tick, so taking everything
        # that is queued each time keeps the backlog to about one read.
        pushed = subscriber._push_message_buffer_out
        while True:
            try:
                first = await pushed.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
                raise RedisConnectionError(
                    f"lost the connection to Redis at {self._location}"
                ) from None
            waiting = pushed.statistics().current_buffer_used
            self._inbound_peak = max(self._inbound_peak, waiting + 1)
            self._handle(first)
            for _ in range(waiting):
                self._handle(pushed.receive_nowait())
            self._compact_parser(subscriber)

    def _compact_parser(self, connection: BaseConnection) -> None:
        # coredis 6.9's parser keeps every byte it has read until a socket read
        # happens to end on a message boundary, which a steady stream of messages
        # rarely does: its buffer would grow with the whole burst. Keep only what
        # is not parsed yet. Safe here: the reader task feeds the parser only
        # between its own awaits, and the offsets are the parser's whole position.
        parser = connection._parser
        self._parser_peak = max(self._parser_peak, parser.bytes_written)
        if parser.bytes_read < _PARSER_COMPACT_BYTES:
            return
        with parser.localbuffer.getbuffer() as view:
            unread = bytes(view[parser.bytes_read : parser.bytes_written])
        parser.localbuffer = io.BytesIO(unread)
        parser.bytes_read = 0
        parser.bytes_written = len(unread)

    def _handle_numbered(self, topic: object, data: bytes) -> None:
        # Every node delivers numbered publications when Redis sends them,
        # its own included: that is what gives all nodes one order per topic.
        sink: object = self._sink
        try:
            offset_text, epoch, message = data[_HEADER_SIZE:].split(b" ", 2)
            offset = int(offset_text)
        except ValueError:
            self._malformed += 1
            return
        if not isinstance(topic, str) or not isinstance(sink, HistorySink):
            return  # a broadcast channel, or a hub that keeps no history
        if data[1:_HEADER_SIZE] != self._header[1:]:
            self._received += 1  # from another node
        try:
            sink.deliver_publication(topic, offset, epoch.decode(), message)
        except Exception:
            logger.exception("delivering a numbered message from Redis failed")

    def _handle(self, push: list[ResponseType]) -> None:
        kind = push[0]
        if kind == b"message":
            channel, data = push[1], push[2]
            assert isinstance(channel, bytes)
            assert isinstance(data, bytes)
            topic = self._channels.get(channel, _NOT_SUBSCRIBED)
            if topic is _NOT_SUBSCRIBED:
                return  # sent before our UNSUBSCRIBE took effect
            if data[:1] == _NUMBERED_VERSION:
                self._handle_numbered(topic, data)
                return
            if data[:_HEADER_SIZE] == self._header:
                return  # our own publication: delivered locally already
            if len(data) <= _HEADER_SIZE or data[:1] != _FORMAT_VERSION:
                self._malformed += 1
                if self._malformed == 1:
                    logger.warning(
                        "dropped a message on Redis channel %r that no trio_hub sent "
                        "(further ones are dropped silently)",
                        channel,
                    )
                return
            assert self._sink is not None
            assert topic is None or isinstance(topic, str)
            self._received += 1
            try:
                self._sink.deliver(topic, data[_HEADER_SIZE:])
            except Exception:
                # The hub logs and drops what it cannot deliver; anything else
                # is a bug, and must not pass for a Redis outage.
                logger.exception("delivering a message from Redis failed")
        elif kind == b"subscribe":
            channel = push[1]
            assert isinstance(channel, bytes)
            self._confirmed.add(channel)
            waiter = self._subscribe_waiters.pop(channel, None)
            if waiter is not None:
                waiter.set()
        elif kind == b"unsubscribe":
            channel = push[1]
            assert isinstance(channel, bytes)
            self._confirmed.discard(channel)


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
