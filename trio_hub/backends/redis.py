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
import hashlib
import io
import logging
import math
import re
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, cast, final
from urllib.parse import urlsplit

import orjson
import trio

from .. import _codec
from .._errors import MessageDecodeError
from .._history import (
    HistoryPolicy,
    HistorySink,
    HistoryUnavailableError,
    StreamPosition,
    new_epoch,
)
from .._presence import PresenceInfo, PresenceSink, PresenceStore, event_message
from ._base import BackendSink, BackendStatistics, BackendUnavailableError

if TYPE_CHECKING:
    from .._message import JSONValue

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

# Every Redis key of a topic's history lives this long after its last
# publication (at least), so that idle topics cost Redis nothing forever.
_META_TTL: Final = 86_400  # seconds

# Number, keep and publish one message, atomically: so every node sees one
# order per topic. KEYS: meta hash, stream. ARGV: channel, header, message,
# size, epoch for a new history, stream TTL (ms), meta TTL (s).
_APPEND_SCRIPT: Final = b"""
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[5]
  redis.call('HSET', KEYS[1], 'e', epoch)
end
local offset = redis.call('HINCRBY', KEYS[1], 'o', 1)
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], offset .. '-0', 't', ms, 'd', ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
redis.call('EXPIRE', KEYS[1], ARGV[7])
redis.call('PUBLISH', ARGV[1], ARGV[2] .. offset .. ' ' .. epoch .. ' ' .. ARGV[3])
return {offset, epoch}
"""

# Read a topic's position and the publications after a position, only if the
# stream still holds all of them (none trimmed, none older than the TTL).
# KEYS: meta, stream. ARGV: since (-1: none), its epoch, limit (-1: none),
# epoch for a new history, TTL (ms, 0: none), meta TTL (s).
# Returns {top, epoch, recovered (0/1), offset, message, offset, message...}.
_READ_SCRIPT: Final = b"""
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[4]
  redis.call('HSET', KEYS[1], 'e', epoch, 'o', 0)
  redis.call('EXPIRE', KEYS[1], ARGV[6])
end
local top = tonumber(redis.call('HGET', KEYS[1], 'o') or '0')
local since = tonumber(ARGV[1])
local limit = tonumber(ARGV[3])
local ttl = tonumber(ARGV[5])
local oldest = -1
if ttl > 0 then
  local now = redis.call('TIME')
  oldest = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - ttl
end
local result = {top, epoch, 1}
if since >= 0 then
  if ARGV[2] ~= epoch or since > top then return {top, epoch, 0} end
  if since == top then return result end
end
if limit == 0 then return result end
local start = '-'
if since >= 0 then start = (since + 1) .. '-0' end
local entries
if limit > 0 then
  entries = redis.call('XRANGE', KEYS[2], start, '+', 'COUNT', limit)
else
  entries = redis.call('XRANGE', KEYS[2], start, '+')
end
local first = true
for _, entry in ipairs(entries) do
  local offset = tonumber(string.match(entry[1], '^(%d+)'))
  local fields = entry[2]
  if tonumber(fields[2]) > oldest then
    if first and since >= 0 and offset ~= since + 1 then return {top, epoch, 0} end
    first = false
    table.insert(result, offset)
    table.insert(result, fields[4])
  elseif since >= 0 then
    return {top, epoch, 0}
  end
end
if first and since >= 0 then return {top, epoch, 0} end
return result
"""

# A node that delivered publications unnumbered (Redis was out of reach) gives
# the topic a new epoch once Redis is back: no position from before may then
# pass for complete. KEYS: meta. ARGV: the new epoch.
_RESET_SCRIPT: Final = b"""
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'e', ARGV[1]) end
return 1
"""

_SCRIPTS: Final = (_APPEND_SCRIPT, _READ_SCRIPT, _RESET_SCRIPT)
_APPEND_SHA, _READ_SHA, _RESET_SHA = (
    hashlib.sha1(script).hexdigest().encode() for script in _SCRIPTS
)

# An outbox entry: (channel, data) for a plain publication, or
# (channel, data, numbered) for one on a topic with history.
_Reply = Callable[[StreamPosition | BaseException], None]


@final
class _Numbered:
    """What an outbox entry for a topic with history carries besides its bytes."""

    __slots__ = ("policy", "reply", "topic")

    def __init__(self, topic: str, policy: HistoryPolicy, reply: _Reply | None) -> None:
        self.topic = topic
        self.policy = policy
        self.reply = reply

    def resolve(self, result: StreamPosition | BaseException) -> None:
        # At most once: whoever waits is told exactly one outcome.
        reply, self.reply = self.reply, None
        if reply is not None:
            reply(result)

    def fail(self, why: str) -> None:
        self.resolve(HistoryUnavailableError(why))


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

    def _keys(self, topic: str) -> tuple[bytes, bytes]:
        base = f"{self._prefix}:history:{topic}"
        return f"{base}:meta".encode(), f"{base}:stream".encode()

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
        meta, stream = self._keys(topic)
        ttl_ms = 0 if policy.ttl is None else max(1, round(policy.ttl * 1000))
        try:
            with trio.fail_after(self._io_timeout):
                reply = await reader.create_request(
                    b"EVALSHA",
                    _READ_SHA,
                    2,
                    meta,
                    stream,
                    -1 if since is None else since.offset,
                    "" if since is None else since.epoch,
                    -1 if limit is None else limit,
                    new_epoch(),
                    ttl_ms,
                    _meta_ttl(policy),
                )
        except _FAILURES as exc:
            raise HistoryUnavailableError(
                f"Redis at {self._location} did not answer a history request: {exc!r}"
            ) from exc
        assert isinstance(reply, list)
        top, epoch, recovered, *flat = reply
        assert isinstance(top, int)
        assert isinstance(epoch, bytes)
        entries: list[tuple[int, bytes]] = []
        for index in range(0, len(flat), 2):
            offset, data = flat[index], flat[index + 1]
            assert isinstance(offset, int)
            assert isinstance(data, bytes)
            entries.append((offset, data))
        return StreamPosition(top, epoch.decode()), entries, recovered == 1

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
        for script in _SCRIPTS:
            await publisher.create_request(b"SCRIPT", b"LOAD", script)
        # Before any new publication: positions from before an unnumbered
        # delivery must not pass for complete.
        for topic in sorted(self._dirty):
            meta, _ = self._keys(topic)
            await publisher.create_request(b"EVALSHA", _RESET_SHA, 1, meta, new_epoch())
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
                    else self._append_command(channel, data, numbered)
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
                    assert isinstance(reply, list)
                    offset, epoch = reply
                    assert isinstance(offset, int)
                    assert isinstance(epoch, bytes)
                    numbered.resolve(StreamPosition(offset, epoch.decode()))
                    self._awaiting.discard(numbered)
            for done in flushed:
                done.set()

    def _append_command(
        self, channel: bytes, data: bytes, numbered: _Numbered
    ) -> CommandRequest[Any]:
        meta, stream = self._keys(numbered.topic)
        policy = numbered.policy
        ttl_ms = round((policy.ttl if policy.ttl is not None else _META_TTL) * 1000)
        return CommandRequest(
            b"EVALSHA",
            _APPEND_SHA,
            2,
            meta,
            stream,
            channel,
            _NUMBERED_VERSION + self._header[1:],
            data,
            policy.size,
            new_epoch(),
            max(ttl_ms, 1),
            _meta_ttl(policy),
            execution_parameters={},
        )

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


def _meta_ttl(policy: HistoryPolicy) -> int:
    # The meta (offset and epoch) outlives the stream, so that offsets never
    # go back while entries remain.
    return max(_META_TTL, math.ceil(policy.ttl or 0) + 1)


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


# ------------------------------------------------------------------ presence
#
# The layout in Redis, after centrifuge's presence manager, with a node-level
# heartbeat instead of one expiry per entry (a node refreshes one key, not
# every entry, however many clients it has):
#
#   <prefix>:presence:<topic>           hash: client id -> entry (JSON); each
#                                       client id starts with its node's id
#   <prefix>:presence:alive:<node>      "1" with a TTL of presence_ttl, set
#                                       again every presence_ttl / 3
#   <prefix>:presence:nodes             set: the nodes that have written entries
#   <prefix>:presence:topics:<node>     set: the topics where a node has entries
#
# A read filters out the entries of nodes whose alive key has expired, so a
# dead node drops out of presence within presence_ttl. Each node's heartbeat
# also lists the nodes whose key has expired; for each new one it reads that
# node's entries on the topics that have local subscribers, and hands them to
# the hub as expired (each surviving node tells its own subscribers). A dead
# node's entries are deleted one presence_ttl after a node noticed it: by then
# every connected node has had a heartbeat to notice it too.


@final
class _Commands:
    """Commands for the outbox, sent in order; ``done`` is set once answered.

    With ``build``, the commands are made when the publish loop takes the item,
    from what has changed by then: presence changes wait in one place and go
    out together, however many there were, in order with the publications
    queued after them.
    """

    __slots__ = ("build", "commands", "done")

    def __init__(
        self,
        commands: list[tuple[bytes, ...]],
        done: trio.Event | None = None,
        build: Callable[[], list[tuple[bytes, ...]]] | None = None,
    ) -> None:
        self.commands = commands
        self.done = done
        self.build = build

    def take(self) -> list[tuple[bytes, ...]]:
        return self.build() if self.build is not None else self.commands


# KEYS: nodes set, own alive key. ARGV: own node, ttl in ms, alive key prefix.
# Returns the nodes whose alive key has expired.
_HEARTBEAT: Final = b"""
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
redis.call('SADD', KEYS[1], ARGV[1])
local dead = {}
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[3] .. node) == 0 then dead[#dead + 1] = node end
end
return dead
"""

# KEYS: the topics' hashes. ARGV: the node. Returns [index, entry, ...]: the
# node's entries in each hash, by the hash's 1-based index.
_ENTRIES_OF_NODE: Final = b"""
local found = {}
local start = ARGV[1] .. '.'
for index, key in ipairs(KEYS) do
  local all = redis.call('HGETALL', key)
  for i = 1, #all, 2 do
    if string.sub(all[i], 1, #start) == start then
      found[#found + 1] = index
      found[#found + 1] = all[i + 1]
    end
  end
end
return found
"""

# KEYS: nodes set, the node's topics set, its alive key. ARGV: the node, the
# hash key prefix, 1 to forget the node (0: keep it, it is being resynced), and
# 1 if the node is dead (then nothing happens if its heartbeat is back).
_CLEAR_NODE: Final = b"""
if ARGV[4] == '1' and redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
local start = ARGV[1] .. '.'
for _, topic in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local key = ARGV[2] .. topic
  for _, field in ipairs(redis.call('HKEYS', key)) do
    if string.sub(field, 1, #start) == start then redis.call('HDEL', key, field) end
  end
end
redis.call('DEL', KEYS[2])
if ARGV[3] == '1' then
  redis.call('SREM', KEYS[1], ARGV[1])
  redis.call('DEL', KEYS[3])
end
return 0
"""

# KEYS: the topic's hash. ARGV: alive key prefix, own node. Returns the
# entries of the other nodes whose alive key is there.
_READ: Final = b"""
local out = {}
local alive = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local node = string.match(all[i], '^([^.]+)')
  if node ~= ARGV[2] then
    local ok = alive[node]
    if ok == nil then
      ok = redis.call('EXISTS', ARGV[1] .. node) == 1
      alive[node] = ok
    end
    if ok then out[#out + 1] = all[i + 1] end
  end
end
return out
"""


@final
class _RedisPresence:
    """The :class:`~trio_hub.backends.PresenceStore` of a :class:`RedisBackend`."""

    __slots__ = (
        "_announce",
        "_backend",
        "_counts",
        "_flush_queued",
        "_full",
        "_last_heartbeat",
        "_mourned",
        "_node",
        "_outbox_full_logged",
        "_pending",
        "_prefix",
        "_sink",
        "_touched",
        "_ttl",
    )

    def __init__(self, backend: RedisBackend, sink: PresenceSink) -> None:
        self._backend = backend
        self._sink = sink
        self._node = backend._header[1:7].hex()
        self._prefix = f"{backend._prefix}:presence:"
        self._ttl = backend._presence_ttl
        # This node's entries per topic: the topics set needs only the count.
        self._counts: dict[str, int] = {}
        # Dead nodes this node has noticed, with when: to delete their
        # entries later, and not to send their leave events twice.
        self._mourned: dict[str, float] = {}
        self._last_heartbeat: float | None = None
        # Changes not yet sent: (topic, client id) -> the entry, or None to
        # delete it. Bounded by this node's entries; a join and a leave of the
        # same connection before they are sent cost one HDEL.
        self._pending: dict[tuple[str, str], PresenceInfo | None] = {}
        self._touched: set[str] = set()
        # Whether the outbox holds an item that will send _pending.
        self._flush_queued = False
        # Send everything again (after a reconnection), and announce it.
        self._full = False
        self._announce = False
        self._outbox_full_logged = False

    @property
    def node_id(self) -> str:
        """The id of this node (12 hex digits), which starts its clients' presence ids."""
        return self._node

    def _key(self, name: str) -> bytes:
        return (self._prefix + name).encode()

    def _hash(self, topic: str) -> bytes:
        return self._key(f"topic:{topic}")

    def _enqueue(self, commands: _Commands) -> bool:
        backend = self._backend
        if not backend._connected:
            return False  # written again in full once reconnected
        try:
            backend._outbox_send.send_nowait(commands)
        except trio.WouldBlock:
            if not self._outbox_full_logged:
                self._outbox_full_logged = True
                logger.warning(
                    "Redis at %s does not keep up: presence changes wait for room in the outbox",
                    backend._location,
                )
            return False
        self._outbox_full_logged = False
        return True

    def _request_flush(self) -> None:
        # Pending changes stay pending if this fails: the next change or
        # heartbeat asks again, and a reconnection sends everything.
        if not self._flush_queued and self._enqueue(_Commands([], build=self._build)):
            self._flush_queued = True

    def _build(self) -> list[tuple[bytes, ...]]:
        self._flush_queued = False
        topics_key = self._key(f"topics:{self._node}")
        commands: list[tuple[bytes, ...]] = []
        if self._full:
            # After a (re)connection Redis may have lost everything (a
            # restart), or hold entries that left during the outage: clear
            # this node's, write the current ones.
            self._full = False
            self._pending.clear()
            self._touched.clear()
            commands.append(self._clear_command(forget=False))
            backend = self._backend
            seen: set[str] = set()
            for topic, entry in self._sink.local_entries():
                commands.append(self._write_command(topic, entry))
                if topic not in seen:
                    seen.add(topic)
                    commands.append((b"SADD", topics_key, topic.encode()))
                if self._announce:
                    # Our heartbeat expired, so the other nodes sent our
                    # clients' leave events: they are back.
                    message = event_message("join", topic, entry)
                    channel = backend.channel_name(topic).encode()
                    commands.append((b"PUBLISH", channel, backend._header + message.encode()))
            self._announce = False
            return commands
        for (topic, client_id), change in self._pending.items():
            if change is None:
                commands.append((b"HDEL", self._hash(topic), client_id.encode()))
            else:
                commands.append(self._write_command(topic, change))
        for topic in self._touched:
            command = b"SADD" if self._counts.get(topic) else b"SREM"
            commands.append((command, topics_key, topic.encode()))
        self._pending.clear()
        self._touched.clear()
        return commands

    # ------------------------------------------------ PresenceStore

    def add(self, topic: str, entry: PresenceInfo) -> None:
        """See :meth:`PresenceStore.add <trio_hub.backends.PresenceStore.add>`."""
        self._counts[topic] = self._counts.get(topic, 0) + 1
        self._pending[topic, entry.client_id] = entry
        self._touched.add(topic)
        self._request_flush()

    def _write_command(self, topic: str, entry: PresenceInfo) -> tuple[bytes, ...]:
        data = _codec.encode(entry.to_json())
        return (b"HSET", self._hash(topic), entry.client_id.encode(), data)

    def remove(self, topic: str, entry: PresenceInfo) -> None:
        """See :meth:`PresenceStore.remove <trio_hub.backends.PresenceStore.remove>`."""
        count = self._counts.get(topic, 0) - 1
        if count <= 0:
            self._counts.pop(topic, None)
        else:
            self._counts[topic] = count
        self._pending[topic, entry.client_id] = None
        self._touched.add(topic)
        self._request_flush()

    async def entries(self, topic: str) -> list[PresenceInfo]:
        """See :meth:`PresenceStore.entries <trio_hub.backends.PresenceStore.entries>`."""
        backend = self._backend
        publisher = backend._publisher
        if publisher is None or not backend._connected:
            raise BackendUnavailableError(f"Redis at {backend._location} is unavailable")
        try:
            reply = await publisher.create_request(
                b"EVAL", _READ, 1, self._hash(topic), self._prefix + "alive:", self._node
            )
        except _FAILURES as exc:
            raise BackendUnavailableError(
                f"Redis at {backend._location} did not answer: {exc!r}"
            ) from exc
        assert isinstance(reply, list)
        return [entry for entry in map(_parse_entry, reply) if entry is not None]

    async def aclose(self) -> None:
        """See :meth:`PresenceStore.aclose <trio_hub.backends.PresenceStore.aclose>`.

        Deletes this node's entries and heartbeat, waiting up to ``io_timeout``
        for Redis to confirm; the other nodes then see no dead node to mourn.
        """
        done = trio.Event()
        if not self._enqueue(_Commands([self._clear_command(forget=True)], done)):
            return
        with trio.move_on_after(self._backend._io_timeout):
            await done.wait()

    def _clear_command(self, *, forget: bool, node: str | None = None) -> tuple[bytes, ...]:
        dead = node is not None
        node = self._node if node is None else node
        return (
            b"EVAL",
            _CLEAR_NODE,
            b"3",
            self._key("nodes"),
            self._key(f"topics:{node}"),
            self._key(f"alive:{node}"),
            node.encode(),
            self._prefix.encode() + b"topic:",
            b"1" if forget else b"0",
            b"1" if dead else b"0",
        )

    # -------------------------------------------------- the session

    async def run(self, publisher: BaseConnection) -> None:
        """Per connection: write this node's state again, then heartbeat until it breaks."""
        self._resync()
        interval = self._ttl / 3
        while True:
            await self._heartbeat(publisher)
            await trio.sleep(interval)

    def _resync(self) -> None:
        # One outbox item, built when it is sent: changes made after it come
        # after it.
        self._full = True
        self._announce = (
            self._last_heartbeat is not None
            and trio.current_time() - self._last_heartbeat >= self._ttl
        )
        self._counts.clear()
        for topic, _ in self._sink.local_entries():
            self._counts[topic] = self._counts.get(topic, 0) + 1
        self._flush_queued = False
        self._request_flush()

    async def _heartbeat(self, publisher: BaseConnection) -> None:
        ttl_ms = max(1, round(self._ttl * 1000))
        dead = await publisher.create_request(
            b"EVAL",
            _HEARTBEAT,
            2,
            self._key("nodes"),
            self._key(f"alive:{self._node}"),
            self._node,
            ttl_ms,
            self._prefix + "alive:",
        )
        now = trio.current_time()
        self._last_heartbeat = now
        if self._pending or self._full:
            self._request_flush()
        assert isinstance(dead, list)
        dead_nodes = {node.decode() for node in dead if isinstance(node, bytes)}
        # A node that is back (its heartbeat resumed) is no longer mourned.
        for node in list(self._mourned):
            if node not in dead_nodes:
                del self._mourned[node]
        topics = list(self._sink.local_topics())
        for node in sorted(dead_nodes):
            if node == self._node:
                continue
            noticed = self._mourned.get(node)
            if noticed is None:
                self._mourned[node] = now
                if topics:
                    await self._bury(publisher, node, topics)
            elif now - noticed >= self._ttl:
                # Every connected node has had a heartbeat to notice it.
                await publisher.create_request(*self._clear_command(forget=True, node=node))

    async def _bury(self, publisher: BaseConnection, node: str, topics: list[str]) -> None:
        reply = await publisher.create_request(
            b"EVAL",
            _ENTRIES_OF_NODE,
            len(topics),
            *(self._hash(topic) for topic in topics),
            node,
        )
        assert isinstance(reply, list)
        expired: dict[str, list[PresenceInfo]] = {}
        for position in range(0, len(reply) - 1, 2):
            index, data = reply[position], reply[position + 1]
            assert isinstance(index, int)
            entry = _parse_entry(data)
            if entry is not None:
                expired.setdefault(topics[index - 1], []).append(entry)
        if expired:
            logger.info(
                "presence: node %s stopped answering; %d entries expired",
                node,
                sum(map(len, expired.values())),
            )
        for topic, entries in expired.items():
            try:
                self._sink.expired(topic, entries)
            except Exception:
                logger.exception("presence: handing expired entries to the hub failed")


# Digits enough for an integer that orjson would decode as a float.
_LONG_NUMBER: Final = re.compile(rb"\d{19}")


def _parse_entry(data: object) -> PresenceInfo | None:
    if not isinstance(data, bytes):
        return None
    try:
        # orjson alone unless an integer might exceed 64 bits: _codec.decode's
        # check for that costs more than the decoding, once per entry of a read.
        value = orjson.loads(data) if _LONG_NUMBER.search(data) is None else _codec.decode(data)
        return PresenceInfo._from_json(cast("JSONValue", value))
    except (MessageDecodeError, orjson.JSONDecodeError, ValueError):
        logger.warning("presence: dropped an entry in Redis that no trio_hub wrote: %r", data)
        return None
