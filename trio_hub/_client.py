"""One registered client: its bounded queue, its reader task, and a writer task on demand."""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final, final

import trio

from ._closecodes import CloseCode
from ._errors import HubClosedError, MessageDecodeError, TransportClosed
from ._message import JSONValue, Message
from ._policy import SlowClientPolicy
from ._statistics import ClientStatistics
from ._util import NoPublicConstructor

if TYPE_CHECKING:
    from ._config import MessageHandler
    from ._history import HistoryResult, StreamPosition
    from ._hub import Hub
    from ._transport import Transport

__all__ = ["Client"]

logger: Final = logging.getLogger("trio_hub")

_client_ids: Final = itertools.count(1)

# The most bytes of queued messages that one write takes (one larger message
# always goes alone). write_timeout applies to each such write.
_MAX_BATCH_BYTES: Final = 64 * 1024


@final
class Client(metaclass=NoPublicConstructor):
    """One connection registered with a :class:`Hub`.

    Clients are created by :meth:`Hub.register` and :meth:`Hub.serve_client`;
    there is no public constructor. A client runs in the hub's nursery until it
    leaves, as the Trio form of gorilla's readPump and writePump:

    * a **reader** task passes each inbound message to the ``on_message``
      handler;
    * a **writer** task drains the client's bounded queue into the transport,
      several messages per write, each in its own frame. It runs only while
      something is queued: a client that keeps up is written to straight from
      :meth:`Hub.broadcast`, and costs no task switch;
    * a **ping** every ``ping_interval`` seconds, sent by the hub's one
      keepalive task; a client that does not answer within ``pong_timeout`` is
      closed with 4001.

    Whatever goes wrong with one client ends that client alone: see
    :ref:`isolation`.
    """

    __slots__ = (
        "_aborted",
        "_backlog",
        "_backlog_bytes",
        "_close_code",
        "_close_reason",
        "_config",
        "_delivered",
        "_discarded",
        "_done",
        "_draining",
        "_dropped",
        "_ending",
        "_finished",
        "_handler_scope",
        "_hub",
        "_id",
        "_identity",
        "_info",
        "_nursery",
        "_on_message",
        "_pinging",
        "_queue",
        "_scope",
        "_topics",
        "_transport",
        "_writing",
    )

    def __init__(
        self,
        hub: Hub,
        transport: Transport,
        *,
        identity: object,
        info: JSONValue = None,
        on_message: MessageHandler | None,
    ) -> None:
        config = hub._config
        self._hub = hub
        self._config = config
        self._transport = transport
        self._identity = identity
        self._info = info
        self._on_message = on_message
        self._id = next(_client_ids)
        # Messages accepted and not yet handed to the transport, oldest first.
        # Made on first use: a client that keeps up never needs one.
        self._queue: deque[Message] | None = None
        # Accepted and not yet written: the queue plus the batch being written.
        # This is the bound, so memory per client is queue_size x message size.
        self._backlog = 0
        self._backlog_bytes = 0
        self._delivered = 0
        self._dropped = 0
        self._discarded = 0
        self._topics: set[str] = set()
        self._ending = False
        # Set when a write was cut short: the connection must be aborted, not closed.
        self._aborted = False
        self._close_code: int | None = None
        self._close_reason = ""
        # The client's nursery's scope, shielded so that the hub, not an
        # enclosing cancel scope, decides when a client ends; _end() cancels it.
        # (One scope for both: every scope a connection holds costs memory.)
        self._scope: trio.CancelScope | None = None
        # The scope of an on_message call in progress, if any: shutdown cancels
        # it. None while the client waits for input, which costs no scope.
        self._handler_scope: trio.CancelScope | None = None
        # Made when someone waits: most clients are never waited for.
        self._finished: trio.Event | None = None
        self._done = False
        # The client's own nursery, once its task runs: the writer and pings go there.
        self._nursery: trio.Nursery | None = None
        self._writing = False
        self._draining = False
        self._pinging = False

    # ----------------------------------------------------------------- public

    @property
    def id(self) -> int:
        """A number unique to this client within the process."""
        return self._id

    @property
    def hub(self) -> Hub:
        """The hub this client is (or was) registered with."""
        return self._hub

    @property
    def identity(self) -> object:
        """What the application attached at registration (for example a user id)."""
        return self._identity

    @property
    def info(self) -> JSONValue:
        """The small JSON attached at registration for presence, or ``None``.

        .. versionadded:: 0.2
        """
        return self._info

    @property
    def transport(self) -> Transport:
        """The transport this client talks through."""
        return self._transport

    @property
    def topics(self) -> frozenset[str]:
        """The topics this client is subscribed to now."""
        return frozenset(self._topics)

    @property
    def closed(self) -> bool:
        """Whether the client has left the hub (it may still be closing)."""
        return self._ending

    @property
    def close_code(self) -> int | None:
        """The close code sent or received when the client left, or ``None``.

        ``None`` while the client is registered. 1006 means the connection ended
        without a close frame.
        """
        return self._close_code

    @property
    def close_reason(self) -> str:
        """The close reason that goes with :attr:`close_code`."""
        return self._close_reason

    def subscribe(self, topic: str) -> None:
        """Subscribe to ``topic``; same as :meth:`Hub.subscribe`."""
        self._hub.subscribe(self, topic)

    def unsubscribe(self, topic: str) -> None:
        """Unsubscribe from ``topic``; same as :meth:`Hub.unsubscribe`."""
        self._hub.unsubscribe(self, topic)

    async def recover(
        self,
        topic: str,
        since: StreamPosition | None = None,
        *,
        announce: Callable[[HistoryResult], Message | None] | None = None,
    ) -> HistoryResult:
        """Subscribe to ``topic``, replaying what was missed since ``since``.

        Same as :meth:`Hub.recover`.

        .. versionadded:: 0.2
        """
        return await self._hub.recover(self, topic, since, announce=announce)

    def send(self, message: Message) -> bool:
        """Queue ``message`` for this client alone, in order with broadcasts.

        Like :meth:`Hub.broadcast`, this never waits, and the hub's slow-client
        policy applies when the queue is full.

        Returns:
            ``True`` if the message was accepted (written or queued), ``False``
            if the client has left or the policy dropped it or evicted the client.

        Raises:
            HubClosedError: if the hub is closing.
        """
        hub = self._hub
        if hub._closing:
            raise HubClosedError("the hub is closing: send() is no longer possible")
        hub._messages_sent += 1
        if self._ending:
            return False
        return self._offer(message)

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Remove the client from the hub and start closing its connection.

        The client stops receiving at once. Its queued messages are discarded
        (and counted); use :meth:`Hub.aclose` for a draining shutdown. Calling
        it again, or on a client that has left, does nothing.
        """
        self._end(code, reason)

    async def aclose(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """:meth:`close`, then wait until the connection is closed and every task ended."""
        self._end(code, reason)
        await self.wait_closed()

    async def wait_closed(self) -> None:
        """Wait until the client has left and all its tasks have ended."""
        if self._done:
            await trio.lowlevel.checkpoint()
            return
        if self._finished is None:
            self._finished = trio.Event()
        await self._finished.wait()

    def statistics(self) -> ClientStatistics:
        """Return a frozen snapshot of this client's counters."""
        return ClientStatistics(
            queued=self._backlog,
            queued_bytes=self._backlog_bytes,
            delivered=self._delivered,
            dropped=self._dropped,
            discarded=self._discarded,
            topics=frozenset(self._topics),
        )

    def __repr__(self) -> str:
        state = "open" if not self._ending else f"closed {self._close_code}"
        return f"<trio_hub.Client #{self._id} {state} {self._transport!r}>"

    # ------------------------------------------------------------ the queue

    def _offer(self, message: Message) -> bool:
        # The hot path: called once per message per client, synchronously from
        # broadcast()/publish(). Never awaits.
        if self._backlog == 0:
            try:
                taken = self._transport.send_nowait(message)
            except Exception:
                # A faulty transport must not break the broadcast for others.
                self._hub._errors += 1
                logger.exception("client #%d: transport.send_nowait() raised", self._id)
                self._end(CloseCode.INTERNAL_ERROR, "internal error")
                return False
            if taken:
                # Nothing waits ahead of this message, and the transport took it
                # whole without blocking: no queue, no task switch.
                self._delivered += 1
                self._hub._deliveries += 1
                return True
        size = len(message.encode())
        if self._is_full(size):
            return self._on_full(message, size)
        self._enqueue(message, size)
        return True

    def _is_full(self, size: int) -> bool:
        config = self._config
        return self._backlog >= config.queue_size or (
            config.max_queue_bytes is not None
            and self._backlog > 0
            and self._backlog_bytes + size > config.max_queue_bytes
        )

    def _enqueue(self, message: Message, size: int) -> None:
        if self._queue is None:
            self._queue = deque()
        self._queue.append(message)
        backlog = self._backlog
        self._backlog = backlog + 1
        self._backlog_bytes += size
        self._hub._gate.moved(backlog, backlog + 1, size)
        if not self._writing and self._nursery is not None:
            self._writing = True
            self._nursery.start_soon(self._guard, self._write_loop)

    def _on_full(self, message: Message, size: int) -> bool:
        policy = self._config.on_slow_client
        if policy is SlowClientPolicy.EVICT:
            # The message that found the queue full is never written either.
            self._discarded += 1
            self._hub._discarded += 1
            self._evict("queue full")
            return False
        if policy is SlowClientPolicy.DROP_OLDEST:
            queue = self._queue
            assert queue is not None  # full, so something was queued
            # Only messages that no write has taken yet can be dropped.
            while queue and self._is_full(size):
                oldest = queue.popleft()
                oldest_size = len(oldest.encode())
                self._backlog -= 1
                self._backlog_bytes -= oldest_size
                self._hub._gate.moved(self._backlog + 1, self._backlog, -oldest_size)
                self._count_drop()
            if not self._is_full(size):
                self._enqueue(message, size)
                return True
        self._count_drop()
        return False

    def _count_drop(self) -> None:
        self._dropped += 1
        self._hub._drops += 1

    def _evict(self, why: str) -> None:
        if self._ending:
            return
        self._hub._evictions += 1
        logger.info("client #%d evicted: %s (close code %d)", self._id, why, CloseCode.SLOW_CLIENT)
        self._end(CloseCode.SLOW_CLIENT, f"slow client: {why}")

    # --------------------------------------------------------- the lifecycle

    def _end(self, code: int, reason: str) -> None:
        """Leave the hub now (synchronously) and cancel this client's tasks."""
        if self._ending:
            return
        self._ending = True
        self._close_code = code
        self._close_reason = reason
        self._hub._unregister(self)
        if self._scope is not None:
            self._scope.cancel()

    def _start_drain(self) -> None:
        """Hub shutdown: stop handling input, write what is queued, then leave with 1001."""
        self._draining = True
        if self._handler_scope is not None:
            self._handler_scope.cancel()
        if self._backlog == 0:
            self._end(CloseCode.GOING_AWAY, "hub shutting down")

    async def _run(self) -> None:
        # The hub, not an enclosing cancel scope, decides when a client ends, so
        # that cancelling the scope around open_hub() still drains and closes
        # every client with 1001. Every wait inside is bounded by a timeout or
        # ended by the hub's own shutdown.
        try:
            async with trio.open_nursery() as nursery:
                # Shielded at once: entering a nursery does not checkpoint.
                nursery.cancel_scope.shield = True
                self._scope = nursery.cancel_scope
                if self._ending:  # closed before its task started
                    nursery.cancel_scope.cancel()
                self._nursery = nursery
                if self._queue and not self._writing:
                    # Queued between registration and this task's start.
                    self._writing = True
                    nursery.start_soon(self._guard, self._write_loop)
                # The reader runs in this task (no _guard: one frame fewer for
                # every idle client).
                try:
                    await self._read_loop()
                except TransportClosed as exc:
                    self._left(exc)
                finally:
                    # The nursery takes no new task once its body is done,
                    # while it waits for the writer: a broadcast meanwhile
                    # queues (the rest is discarded and counted on the way out).
                    self._nursery = None
        except Exception:
            self._hub._errors += 1
            logger.exception("client #%d failed; closing it with 1011", self._id)
            self._end(CloseCode.INTERNAL_ERROR, "internal error")
        self._nursery = None
        self._scope = None
        with trio.CancelScope(shield=True):
            await self._finish()

    async def _finish(self) -> None:
        if not self._ending:  # the reader ended by itself: the peer left
            self._end(CloseCode.NORMAL, "")
        if self._backlog:
            self._discarded += self._backlog
            self._hub._discarded += self._backlog
            self._hub._gate.moved(self._backlog, 0, -self._backlog_bytes)
            self._backlog = 0
            self._backlog_bytes = 0
        self._queue = None
        assert self._close_code is not None
        with trio.move_on_after(self._config.close_timeout) as close_scope:
            try:
                if self._aborted:
                    await self._transport.abort()
                else:
                    await self._transport.close(self._close_code, self._close_reason)
            except Exception:  # the peer may be long gone; closing is best effort
                logger.debug("client #%d: error while closing", self._id, exc_info=True)
        if close_scope.cancelled_caught and not self._aborted:
            # The close frame did not get through in time; drop the connection.
            with trio.move_on_after(self._config.close_timeout):
                await self._transport.abort()
        logger.debug("client #%d left (close code %s)", self._id, self._close_code)
        self._hub._client_finished(self)
        self._done = True
        if self._finished is not None:
            self._finished.set()

    async def _guard(self, loop: Callable[[], Awaitable[None]]) -> None:
        try:
            await loop()
        except TransportClosed as exc:
            self._left(exc)

    def _left(self, exc: TransportClosed) -> None:
        # The peer or the network ended the connection: an ordinary way to
        # leave, not an error.
        code = exc.code if exc.code is not None else CloseCode.ABNORMAL
        self._end(code, exc.reason)

    async def _read_loop(self) -> None:
        # No cancel scope around the wait for input: an idle client holds none.
        # Shutdown stops the handling instead: a handler in progress is
        # cancelled, and what arrives during the drain is read and dropped, so
        # that the peer's close (or its pings) are still seen.
        while True:
            data = await self._transport.receive()
            if self._draining:
                continue
            if isinstance(data, bytes | bytearray):
                self._end(CloseCode.UNSUPPORTED_DATA, "binary frames are not supported")
                return
            try:
                message = Message.decode(data)
            except MessageDecodeError as exc:
                logger.debug("client #%d sent an invalid message: %s", self._id, exc)
                self._reply_error(exc.code, str(exc))
                continue
            handler = self._on_message
            if handler is None:
                continue
            gate = self._hub._gate
            try:
                with trio.CancelScope() as self._handler_scope:
                    if gate.closed:
                        # Overload (see _pacing): this message waits, and the
                        # connection is not read meanwhile, so TCP slows the
                        # peer down. Shutdown cancels the wait with the handler.
                        await gate.wait_open()
                    await handler(self, message)
            except Exception:
                self._hub._errors += 1
                logger.exception(
                    "client #%d: the on_message handler raised; closing it with 1011",
                    self._id,
                )
                self._end(CloseCode.INTERNAL_ERROR, "internal error")
                return
            finally:
                self._handler_scope = None

    def _reply_error(self, code: str, detail: str) -> None:
        if not self._hub._closing:
            self.send(Message("error", {"code": code, "detail": detail}))

    async def _write_loop(self) -> None:
        queue = self._queue
        assert queue is not None  # started by _enqueue()
        transport = self._transport
        hub = self._hub
        write_timeout = self._config.write_timeout
        try:
            # A client that has left starts no new write; one already under
            # way finishes (see below).
            while queue and not self._ending:
                # Take what piled up: one write for the lot, each message still
                # its own frame. The batch is capped in bytes so that
                # write_timeout bounds the progress of one write, not a backlog.
                batch = [queue.popleft()]
                batch_bytes = len(batch[0].encode())
                while queue and batch_bytes < _MAX_BATCH_BYTES:
                    message = queue.popleft()
                    batch.append(message)
                    batch_bytes += len(message.encode())
                # A write is never interrupted by the client being closed or
                # evicted: a frame cut in half cannot be taken back, and would
                # turn the close frame after it into garbage. Only write_timeout
                # interrupts it, and then the connection is aborted, not closed.
                with (
                    trio.CancelScope(shield=True),
                    trio.move_on_after(write_timeout) as write_scope,
                ):
                    await transport.send_batch(batch)
                if write_scope.cancelled_caught:
                    self._aborted = True
                    self._evict(f"a write took longer than write_timeout={write_timeout}s")
                    return
                written = len(batch)
                backlog = self._backlog
                self._backlog = backlog - written
                self._backlog_bytes -= batch_bytes
                hub._gate.moved(backlog, backlog - written, -batch_bytes)
                self._delivered += written
                hub._deliveries += written
                # Let the rest of the program run between batches.
                await trio.lowlevel.checkpoint()
        finally:
            self._writing = False
        if self._draining:
            self._end(CloseCode.GOING_AWAY, "hub shutting down")

    async def _ping(self) -> None:
        """One keepalive round: ping, and close with 4001 without a pong in time."""
        self._pinging = True
        try:
            with trio.move_on_after(self._config.pong_timeout) as pong_scope:
                await self._guard(self._transport.ping)
            if pong_scope.cancelled_caught and not self._ending:
                self._hub._keepalive_timeouts += 1
                logger.info(
                    "client #%d did not answer a ping within %ss; closing it with %d",
                    self._id,
                    self._config.pong_timeout,
                    CloseCode.KEEPALIVE_TIMEOUT,
                )
                self._end(CloseCode.KEEPALIVE_TIMEOUT, "keepalive timeout")
        finally:
            self._pinging = False
