"""Test doubles for applications built on trio_hub.

* :class:`RecordingBroadcaster` is a :class:`~trio_hub.BroadcastSender` that
  records what was sent, for unit tests of code that only broadcasts.
* :func:`open_test_hub` opens a real hub and yields a :class:`TestHub`, whose
  :meth:`~TestHub.connect` registers an in-memory :class:`MemoryClient`: the
  browser's end of a connection, driven by the test.
* :func:`memory_connection` makes one in-memory connection by hand: a
  :class:`MemoryTransport` to register with any hub, and its
  :class:`MemoryClient`.

No sockets are involved, so tests run under pytest-trio's ``autojump_clock``, and
keepalive and write timeouts take no real time. The in-memory connection behaves
like a real one where the hub can tell: its buffers are bounded (a client that
stops reading fills them up and is evicted), pings need an answer, and close
codes travel both ways. ``tests/test_conformance.py`` runs one scenario over this
transport and over real trio-websocket connections and checks that both give
the same results.

Payloads in assertions may contain :data:`unittest.mock.ANY` wherever any value
is fine, for example ``await client.expect("error", {"code": "invalid_json",
"detail": ANY})``.

The pytest plugin that comes with trio_hub wraps these in the fixtures ``hub``,
``hub_client``, ``hub_settings`` and ``recording_broadcaster``.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol, TypedDict, Unpack, final
from unittest.mock import ANY

import trio

from ._closecodes import CloseCode
from ._errors import TransportClosed
from ._history import HistoryResult, StreamPosition
from ._hub import Hub, open_hub
from ._message import JSONValue, Message
from ._presence import PresenceInfo

if TYPE_CHECKING:
    from ._client import Client
    from ._config import MessageHandler
    from ._history import HistoryPolicyFunction
    from ._policy import SlowClientPolicy
    from ._presence import PresenceEvents
    from .backends import Backend

__all__ = [
    "HubClientFactory",
    "HubSettings",
    "MemoryClient",
    "MemoryClientClosed",
    "MemoryTransport",
    "RecordingBroadcaster",
    "SentMessage",
    "TestHub",
    "memory_connection",
    "open_test_hub",
]

_DEFAULT_TIMEOUT: Final = 5.0
_DEFAULT_WIRE_CAPACITY: Final = 16


class HubSettings(TypedDict, total=False):
    """The keyword arguments of :func:`~trio_hub.open_hub`, each optional.

    :func:`open_test_hub` takes them, and the ``hub_settings`` fixture returns
    them. Each has the meaning and the default that :func:`~trio_hub.open_hub`
    gives it.
    """

    queue_size: int
    max_queue_bytes: int | None
    on_slow_client: SlowClientPolicy
    ping_interval: float | None
    pong_timeout: float
    write_timeout: float
    drain_timeout: float
    close_timeout: float
    on_message: MessageHandler | None
    intake_limit: int | None
    backend: Backend | None
    history_size: int | None
    history_ttl: float | None
    history: HistoryPolicyFunction | None
    max_history_topics: int
    presence: bool
    presence_events: PresenceEvents


class HubClientFactory(Protocol):
    """The type of the ``hub_client`` fixture: :meth:`TestHub.connect` on ``hub``.

    Annotate the fixture with it in your tests. Outside pytest,
    :meth:`TestHub.connect` is one::

        >>> import trio
        >>> from trio_hub import Hub, Message
        >>> from trio_hub.testing import HubClientFactory, open_test_hub
        >>> async def test_join(hub: Hub, hub_client: HubClientFactory) -> None:
        ...     alice = hub_client(topics=["lobby"])
        ...     hub.publish("lobby", Message("joined", "alice"))
        ...     await alice.expect("joined", "alice")
        >>> async def main() -> None:  # what pytest-trio does with the fixtures
        ...     async with open_test_hub() as test_hub:
        ...         await test_join(test_hub.hub, test_hub.connect)
        >>> trio.run(main)
    """

    def __call__(
        self,
        *,
        topics: Iterable[str] = (),
        identity: object = None,
        info: JSONValue = None,
        on_message: MessageHandler | None = None,
        wire_capacity: int | float = _DEFAULT_WIRE_CAPACITY,
    ) -> MemoryClient:
        """Connect a new in-memory client to ``hub``; see :meth:`TestHub.connect`."""
        ...


# --------------------------------------------------------------- broadcaster


@dataclass(frozen=True, slots=True)
class SentMessage:
    """One call recorded by :class:`RecordingBroadcaster`.

    Attributes:
        topic: The topic for :meth:`~RecordingBroadcaster.publish`, or ``None``
            for :meth:`~RecordingBroadcaster.broadcast`.
        message: The message sent.
    """

    topic: str | None
    message: Message


@final
class RecordingBroadcaster:
    """A :class:`~trio_hub.BroadcastSender` that records instead of sending.

    Pass it wherever your code takes a ``BroadcastSender``, then assert on what
    was sent::

        >>> from trio_hub import Message
        >>> from trio_hub.testing import RecordingBroadcaster
        >>> sender = RecordingBroadcaster()
        >>> sender.broadcast(Message("price", {"eur": 3}))
        0
        >>> sender.assert_broadcast("price", {"eur": 3})

    Args:
        listeners: What :meth:`broadcast` and :meth:`publish` return, as a real
            hub returns its number of recipients.
    """

    __slots__ = ("_listeners", "sent")

    def __init__(self, *, listeners: int = 0) -> None:
        self._listeners = listeners
        self.sent: list[SentMessage] = []
        """Every call, in order."""

    def broadcast(self, message: Message) -> int:
        """Record a broadcast of ``message``.

        Returns:
            The ``listeners`` given to the constructor.

        Raises:
            TypeError: if ``message`` is not a :class:`~trio_hub.Message`, as a
                real hub raises.
        """
        self.sent.append(SentMessage(None, _check_message(message)))
        return self._listeners

    def publish(self, topic: str, message: Message) -> int:
        """Record a publication of ``message`` on ``topic``.

        Returns:
            The ``listeners`` given to the constructor.

        Raises:
            ValueError: if ``topic`` is not a non-empty ``str``, as a real hub raises.
            TypeError: if ``message`` is not a :class:`~trio_hub.Message`.
        """
        if not isinstance(topic, str) or not topic:
            raise ValueError(f"a topic must be a non-empty str, got {topic!r}")
        self.sent.append(SentMessage(topic, _check_message(message)))
        return self._listeners

    @property
    def broadcasts(self) -> list[Message]:
        """The messages broadcast, in order."""
        return [sent.message for sent in self.sent if sent.topic is None]

    def published(self, topic: str) -> list[Message]:
        """The messages published on ``topic``, in order."""
        return [sent.message for sent in self.sent if sent.topic == topic]

    def clear(self) -> None:
        """Forget everything recorded so far."""
        self.sent.clear()

    def assert_broadcast(self, type: str | Message, payload: object = None) -> None:
        """Assert that a message with this type and payload was broadcast.

        Both spellings work: ``assert_broadcast("price", {"eur": 3})`` and
        ``assert_broadcast(Message("price", {"eur": 3}))``.

        Args:
            type: The expected message type, or the expected
                :class:`~trio_hub.Message` itself (then without ``payload``).
            payload: The expected payload; :data:`unittest.mock.ANY` matches
                any value, also inside lists and dicts.

        Raises:
            AssertionError: listing everything that was sent, if none matches.
            TypeError: if ``type`` is neither a ``str`` nor a
                :class:`~trio_hub.Message`, or is a ``Message`` given with a
                ``payload`` too; the message shows the right call.

        .. versionchanged:: 0.2
           Accepts a :class:`~trio_hub.Message`.
        """
        type, payload = _expectation("assert_broadcast", (), type, payload)
        if not any(_matches(message, type, payload) for message in self.broadcasts):
            raise AssertionError(
                f"expected a broadcast of {_format(type, payload)}; {self._describe_sent()}"
            )

    def assert_published(self, topic: str, type: str | Message, payload: object = None) -> None:
        """Assert that a message with this type and payload was published on ``topic``.

        Both spellings work: ``assert_published("news", "headline", "up")`` and
        ``assert_published("news", Message("headline", "up"))``.

        Args:
            topic: The topic it must have been published on.
            type: The expected message type, or the expected
                :class:`~trio_hub.Message` itself (then without ``payload``).
            payload: The expected payload; :data:`unittest.mock.ANY` matches
                any value.

        Raises:
            AssertionError: listing everything that was sent, if none matches.
            TypeError: as for :meth:`assert_broadcast`.

        .. versionchanged:: 0.2
           Accepts a :class:`~trio_hub.Message`.
        """
        type, payload = _expectation("assert_published", (topic,), type, payload)
        if not any(_matches(message, type, payload) for message in self.published(topic)):
            raise AssertionError(
                f"expected {_format(type, payload)} published on {topic!r}; {self._describe_sent()}"
            )

    def assert_sent_exactly(self, *expected: SentMessage | Message) -> None:
        """Assert that exactly these calls were made, in this order.

        Args:
            expected: One :class:`SentMessage` per call; a plain
                :class:`~trio_hub.Message` stands for a broadcast of it.

        Raises:
            AssertionError: showing both sequences, if they differ.
            TypeError: if an item is neither a ``SentMessage`` nor a ``Message``.

        .. versionchanged:: 0.2
           Accepts a :class:`~trio_hub.Message` for a broadcast.
        """
        calls = [_as_sent(item) for item in expected]
        if calls != self.sent:
            wanted = "\n".join(
                f"  {index}. {_describe(sent)}" for index, sent in enumerate(calls, 1)
            )
            raise AssertionError(
                f"expected exactly:\n{wanted or '  nothing'}\n{self._describe_sent()}"
            )

    def assert_nothing_sent(self) -> None:
        """Assert that nothing was broadcast or published.

        Raises:
            AssertionError: listing what was sent, if anything was.
        """
        if self.sent:
            raise AssertionError(f"expected nothing sent; {self._describe_sent()}")

    def _describe_sent(self) -> str:
        if not self.sent:
            return "nothing was sent"
        lines = [f"  {index}. {_describe(sent)}" for index, sent in enumerate(self.sent, 1)]
        return "sent were:\n" + "\n".join(lines)

    def __repr__(self) -> str:
        return f"<RecordingBroadcaster: {len(self.sent)} recorded>"


def _describe(sent: SentMessage) -> str:
    where = "broadcast" if sent.topic is None else f"publish on {sent.topic!r}"
    return f"{where} {sent.message!r}"


def _check_message(message: Message) -> Message:
    if not isinstance(message, Message):
        raise TypeError(f"expected a trio_hub.Message, got {type(message).__name__}")
    return message


def _expectation(
    method: str, leading: tuple[str, ...], type: str | Message, payload: object
) -> tuple[str, object]:
    """The (type, payload) that an ``assert_*`` or ``expect`` call asks for."""
    before = "".join(f"{argument!r}, " for argument in leading)
    if isinstance(type, Message):
        if payload is not None:
            raise TypeError(
                f"{method}() takes a Message alone, or a type and a payload: "
                f"{method}({before}{type!r}) or {method}({before}{type.type!r}, {payload!r})"
            )
        return type.type, type.payload
    if not isinstance(type, str):
        raise TypeError(
            f"{method}() takes a message type (str) and a payload, or a Message: "
            f"{method}({before}'announcement', 'up') or "
            f"{method}({before}Message('announcement', 'up')); got {type!r}"
        )
    return type, payload


def _as_sent(item: SentMessage | Message) -> SentMessage:
    if isinstance(item, SentMessage):
        return item
    if isinstance(item, Message):
        return SentMessage(None, item)
    raise TypeError(
        "assert_sent_exactly() takes SentMessage(topic, message) items, or a Message "
        f"for a broadcast; got {item!r}"
    )


def _matches(message: Message, type: str, payload: object) -> bool:
    # Compare the parts, not Message objects: an expected payload may hold
    # unittest.mock.ANY, which is no JSON and cannot go into a Message.
    return message.type == type and message.payload == payload


def _format(type: str, payload: object) -> str:
    # The same spelling as Message.__repr__, so expected and received line up.
    return f"Message({type!r}, {payload!r})"


def _identities(entries: Iterable[PresenceInfo]) -> list[str | None]:
    """The identities of presence entries, one per entry."""
    return [entry.identity for entry in entries]


def _identity_key(identity: str | None) -> tuple[bool, str]:
    return (identity is not None, identity or "")


def _describe_close(code: int, reason: str) -> str:
    try:
        name = f" {CloseCode(code).name}"
    except ValueError:
        name = ""
    return f"code {code}{name}" + (f", reason {reason!r}" if reason else "")


# --------------------------------------------------------- memory transport


class MemoryClientClosed(Exception):
    """The in-memory connection is closed.

    Raised by :class:`MemoryClient`'s receive methods once every message
    written before the hub's close has been read, as a WebSocket client reads up
    to the close frame. After the client closed the connection itself, unread
    messages are discarded and it is raised at once, as trio-websocket does.

    Attributes:
        code: The close code: the one the hub sent, the one the client sent if
            it closed first, or 1006 if the hub aborted the connection.
        reason: The close reason.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        return f"connection closed ({_describe_close(self.code, self.reason)})"


@final
class _Link:
    """The state shared by the two ends of one in-memory connection."""

    __slots__ = (
        "auto_pong",
        "closed",
        "code",
        "inbound_receive",
        "inbound_send",
        "outbound_receive",
        "outbound_send",
        "peer_closed",
        "pings",
        "positions",
        "reason",
        "server_side",
        "test_hub",
        "wire_capacity",
    )

    def __init__(self, wire_capacity: int | float, inbound_capacity: int | float) -> None:
        self.outbound_send, self.outbound_receive = trio.open_memory_channel[str](wire_capacity)
        self.inbound_send, self.inbound_receive = trio.open_memory_channel[str | bytes](
            inbound_capacity
        )
        self.auto_pong = True
        self.pings = 0
        self.closed = trio.Event()  # set when either side closes
        self.peer_closed = False
        self.code: int | None = None
        self.reason = ""
        self.server_side: Client | None = None
        self.test_hub: TestHub | None = None
        self.wire_capacity = wire_capacity
        # Topics with history: the position of the last publication received.
        self.positions: dict[str, StreamPosition] = {}


@final
class MemoryTransport:
    """The hub's end of an in-memory connection; a :class:`~trio_hub.Transport`.

    Get one from :func:`memory_connection`. It behaves like a real socket where
    it matters to the hub: a bounded buffer (``wire_capacity`` frames) that a
    client which stops reading fills up, pings that need an answer, and close
    codes in both directions.
    """

    __slots__ = ("_link",)

    def __init__(self, link: _Link) -> None:
        self._link = link

    async def receive(self) -> str | bytes:
        """See :meth:`trio_hub.Transport.receive`."""
        try:
            return await self._link.inbound_receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise self._closed() from None

    async def send_batch(self, messages: Sequence[Message]) -> None:
        """See :meth:`trio_hub.Transport.send_batch`."""
        link = self._link
        for message in messages:
            if link.closed.is_set():
                raise self._closed()
            try:
                await link.outbound_send.send(message.text)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise self._closed() from None

    def send_nowait(self, message: Message) -> bool:
        """See :meth:`trio_hub.Transport.send_nowait`."""
        link = self._link
        if link.closed.is_set():
            return False
        try:
            link.outbound_send.send_nowait(message.text)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    async def ping(self) -> None:
        """See :meth:`trio_hub.Transport.ping`.

        The pong comes at once while :attr:`MemoryClient.auto_pong` is true, even
        if the test is not reading: a browser answers pings in its network layer,
        whatever the page's script is doing. Otherwise it never comes.
        """
        link = self._link
        if link.closed.is_set():
            raise self._closed()
        link.pings += 1
        if link.auto_pong:
            await trio.lowlevel.checkpoint()
            return
        await link.closed.wait()
        raise self._closed()

    async def close(self, code: int, reason: str) -> None:
        """See :meth:`trio_hub.Transport.close`."""
        link = self._link
        await trio.lowlevel.checkpoint()
        if link.closed.is_set():
            return
        link.code = code
        link.reason = reason
        link.closed.set()
        # The client reads what was written before the close, then the close.
        link.outbound_send.close()
        link.inbound_receive.close()

    async def abort(self) -> None:
        """See :meth:`trio_hub.Transport.abort`; the client sees code 1006."""
        await self.close(CloseCode.ABNORMAL, "")

    def _closed(self) -> TransportClosed:
        return TransportClosed(self._link.code, self._link.reason)

    def __repr__(self) -> str:
        return f"<MemoryTransport at {id(self):#x}>"


@final
class MemoryClient:
    """The browser's end of an in-memory connection.

    Get one from :meth:`TestHub.connect` (or the ``hub_client`` fixture), or
    from :func:`memory_connection`. Receive methods take a ``timeout`` in
    seconds (virtual seconds under ``autojump_clock``). The ``expect*`` methods
    are assertions: they raise :class:`AssertionError` with what was expected
    and what happened instead.

    Example::

        >>> import trio
        >>> from trio_hub import Message
        >>> from trio_hub.testing import open_test_hub
        >>> async def main() -> None:
        ...     async with open_test_hub() as test_hub:
        ...         alice = test_hub.connect(topics=["news"])
        ...         test_hub.hub.publish("news", Message("headline", "hello"))
        ...         await alice.expect("headline", "hello")
        ...         await alice.send(Message("bye"))
        ...     # Leaving the block shut the hub down.
        ...     print(alice.close_code, alice.close_reason)
        >>> trio.run(main)
        1001 hub shutting down
    """

    __slots__ = ("_link",)

    def __init__(self, link: _Link) -> None:
        self._link = link

    @property
    def server_side(self) -> Client:
        """The :class:`~trio_hub.Client` that the hub made for this connection.

        Raises:
            RuntimeError: if this client was made with :func:`memory_connection`
                (then the hub's client is what :meth:`~trio_hub.Hub.register` returned).
        """
        client = self._link.server_side
        if client is None:
            raise RuntimeError(
                "this MemoryClient was not connected by TestHub.connect(); "
                "its hub-side Client is what Hub.register() returned"
            )
        return client

    @property
    def auto_pong(self) -> bool:
        """Whether pings are answered, as a browser does; set ``False`` to stop."""
        return self._link.auto_pong

    @auto_pong.setter
    def auto_pong(self, value: bool) -> None:
        self._link.auto_pong = value

    @property
    def pings(self) -> int:
        """How many pings the hub has sent."""
        return self._link.pings

    @property
    def close_code(self) -> int | None:
        """The close code, once either side has closed; ``None`` before."""
        return self._link.code if self._link.closed.is_set() else None

    @property
    def close_reason(self) -> str:
        """The close reason that goes with :attr:`close_code`."""
        return self._link.reason

    @property
    def pending(self) -> int:
        """Messages written by the hub and not read yet."""
        return self._link.outbound_receive.statistics().current_buffer_used

    async def send(self, message: Message | str | bytes) -> None:
        """Send a message to the hub, as a browser would.

        A :class:`~trio_hub.Message` goes as its JSON text, a ``str`` as a text
        frame (valid JSON or not), ``bytes`` as a binary frame.

        Raises:
            MemoryClientClosed: if the connection is closed.
        """
        data = message.text if isinstance(message, Message) else message
        link = self._link
        if link.closed.is_set():
            raise self._closed()
        try:
            await link.inbound_send.send(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise self._closed() from None

    async def receive_text(self, *, timeout: float = _DEFAULT_TIMEOUT) -> str:
        """Wait for the next text frame from the hub.

        Raises:
            MemoryClientClosed: once the hub has closed the connection and every
                frame written before the close has been read.
            trio.TooSlowError: if nothing arrives within ``timeout`` seconds.
        """
        with trio.move_on_after(timeout):
            try:
                return await self._link.outbound_receive.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                raise self._closed() from None
        raise trio.TooSlowError(f"nothing received within {timeout}s (the connection is open)")

    async def receive(self, *, timeout: float = _DEFAULT_TIMEOUT) -> Message:
        """Wait for the next message from the hub, decoded.

        Raises:
            MemoryClientClosed: as :meth:`receive_text`.
            trio.TooSlowError: as :meth:`receive_text`.
        """
        return self._note(Message.decode(await self.receive_text(timeout=timeout)))

    def receive_nowait(self) -> Message:
        """Return the next message if one is waiting.

        Raises:
            trio.WouldBlock: if none is waiting.
            MemoryClientClosed: if the connection is closed and drained.
        """
        try:
            text = self._link.outbound_receive.receive_nowait()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise self._closed() from None
        return self._note(Message.decode(text))

    def _note(self, message: Message) -> Message:
        # Keep the position of the last publication received on each topic
        # with history; see position().
        positions = self._link.positions
        payload = message.payload
        if positions and isinstance(payload, dict):
            offset = payload.get("offset")
            if isinstance(offset, int) and not isinstance(offset, bool):
                topic = payload.get("topic")
                if not isinstance(topic, str) and len(positions) == 1:
                    topic = next(iter(positions))
                if isinstance(topic, str) and topic in positions:
                    positions[topic] = StreamPosition(offset, positions[topic].epoch)
        return message

    def position(self, topic: str) -> StreamPosition | None:
        """The position of the last publication this client received on ``topic``.

        Known for the topics subscribed with :meth:`TestHub.recover` (which
        gives the epoch), and updated by every message received whose payload
        carries an ``"offset"`` and names the topic in ``"topic"``, as the
        wire protocol's ``message`` frames do (or that comes while the client
        holds one topic with history). ``None`` for other topics.

        .. versionadded:: 0.2
        """
        return self._link.positions.get(topic)

    async def reconnect(self) -> tuple[MemoryClient, dict[str, HistoryResult]]:
        """Close this connection (if open), connect again, and recover every topic.

        The new client recovers each topic that this one subscribed with
        :meth:`TestHub.recover`, from the position of the last publication
        this one *received* (:meth:`position`): messages still unread when it
        closed count as missed, as for a browser whose connection drops.

        Returns:
            The new client, and the result of each topic's recovery.

        Raises:
            RuntimeError: if this client was not connected by :meth:`TestHub.connect`.

        .. versionadded:: 0.2
        """
        test_hub = self._link.test_hub
        if test_hub is None:
            raise RuntimeError("only a client from TestHub.connect() can reconnect")
        await self.close()
        client = test_hub.connect(wire_capacity=self._link.wire_capacity)
        results = {}
        for topic, position in self._link.positions.items():
            results[topic] = await test_hub.recover(client, topic, position)
        return client, results

    def drain(self) -> list[Message]:
        """Return every message waiting now, without blocking."""
        messages: list[Message] = []
        while True:
            try:
                messages.append(self.receive_nowait())
            except (trio.WouldBlock, MemoryClientClosed):
                return messages

    async def receive_until_closed(
        self, *, timeout: float = _DEFAULT_TIMEOUT
    ) -> tuple[list[Message], int]:
        """Read every message up to the close, as a client does at shutdown.

        Args:
            timeout: Seconds to wait for the close, in all.

        Returns:
            ``(messages, close_code)``.

        Raises:
            trio.TooSlowError: if the connection is still open after ``timeout``.
        """
        messages: list[Message] = []
        with trio.fail_after(timeout):
            while True:
                try:
                    messages.append(await self.receive(timeout=math.inf))
                except MemoryClientClosed as closed:
                    return messages, closed.code

    async def expect(
        self,
        type: str | Message,
        payload: object = None,
        *,
        timeout: float = _DEFAULT_TIMEOUT,
    ) -> Message:
        """Receive the next message and assert its type and payload.

        Both spellings work: ``expect("price", {"eur": 3})`` and
        ``expect(Message("price", {"eur": 3}))``.

        Args:
            type: The expected message type, or the expected
                :class:`~trio_hub.Message` itself (then without ``payload``).
            payload: The expected payload; :data:`unittest.mock.ANY` matches any
                value, also inside lists and dicts.
            timeout: Seconds to wait for the message.

        Returns:
            The message received.

        Raises:
            AssertionError: if another message arrives (showing both), nothing
                arrives within ``timeout``, or the connection closes first
                (showing the close code).
            TypeError: as for :meth:`RecordingBroadcaster.assert_broadcast`.

        .. versionchanged:: 0.2
           Accepts a :class:`~trio_hub.Message`.
        """
        type, payload = _expectation("expect", (), type, payload)
        expected = _format(type, payload)
        try:
            got = await self.receive(timeout=timeout)
        except trio.TooSlowError:
            raise AssertionError(
                f"expected {expected} within {timeout}s, but nothing arrived "
                "(the connection is open)"
            ) from None
        except MemoryClientClosed as closed:
            raise AssertionError(
                f"expected {expected}, but the connection closed first "
                f"({_describe_close(closed.code, closed.reason)})"
            ) from None
        if not _matches(got, type, payload):
            unread = f"\n  ({self.pending} more unread)" if self.pending else ""
            raise AssertionError(
                f"received the wrong message\n  expected: {expected}\n  received: {got!r}{unread}"
            )
        return got

    async def expect_join(
        self,
        topic: str,
        *,
        identity: object = ANY,
        info: object = ANY,
        timeout: float = _DEFAULT_TIMEOUT,
    ) -> PresenceInfo:
        """Assert that the next message is a ``join`` on ``topic``.

        Args:
            topic: The topic.
            identity: The identity expected in the entry; any by default.
            info: The info expected in the entry; any by default.
            timeout: Seconds to wait.

        Returns:
            The entry of the connection that joined.

        Raises:
            AssertionError: as :meth:`expect`.

        .. versionadded:: 0.2
        """
        return await self._expect_presence_event("join", topic, identity, info, timeout)

    async def expect_leave(
        self,
        topic: str,
        *,
        identity: object = ANY,
        info: object = ANY,
        timeout: float = _DEFAULT_TIMEOUT,
    ) -> PresenceInfo:
        """Assert that the next message is a ``leave`` on ``topic``; see :meth:`expect_join`.

        .. versionadded:: 0.2
        """
        return await self._expect_presence_event("leave", topic, identity, info, timeout)

    async def _expect_presence_event(
        self, kind: str, topic: str, identity: object, info: object, timeout: float
    ) -> PresenceInfo:
        wanted = {"topic": topic, "client": {"id": ANY, "identity": identity, "info": info}}
        message = await self.expect(kind, wanted, timeout=timeout)
        assert isinstance(message.payload, dict)
        return PresenceInfo._from_json(message.payload["client"])

    async def expect_closed(
        self, code: int | None = None, *, timeout: float = _DEFAULT_TIMEOUT
    ) -> int:
        """Assert that the next thing to arrive is the close, with ``code``.

        Args:
            code: The expected close code, or ``None`` for any.
            timeout: Seconds to wait for the close.

        Returns:
            The close code.

        Raises:
            AssertionError: if a message arrives first, the connection stays
                open for ``timeout`` seconds, or the code differs.
        """
        wanted = "closed" if code is None else f"closed with {_describe_close(code, '')}"
        try:
            got = await self.receive(timeout=timeout)
        except trio.TooSlowError:
            raise AssertionError(
                f"expected the connection {wanted} within {timeout}s, but it is open"
            ) from None
        except MemoryClientClosed as closed:
            if code is not None and closed.code != code:
                raise AssertionError(
                    f"expected the connection {wanted}, but it was closed with "
                    f"{_describe_close(closed.code, closed.reason)}"
                ) from None
            return closed.code
        raise AssertionError(
            f"expected the connection {wanted}, but received {got!r} first"
            + (f" ({self.pending} more unread)" if self.pending else "")
        )

    async def wait_closed(self, *, timeout: float = _DEFAULT_TIMEOUT) -> int:
        """Wait until the connection is closed, and return the close code.

        Unread messages stay readable.

        Raises:
            trio.TooSlowError: if the connection is still open after ``timeout``.
        """
        with trio.fail_after(timeout):
            await self._link.closed.wait()
        code = self._link.code
        assert code is not None
        return code

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close the connection from the browser's side.

        The hub sees ``code`` and ``reason``. Messages not read yet are
        discarded, as trio-websocket discards them when it closes.
        """
        link = self._link
        await trio.lowlevel.checkpoint()
        if link.closed.is_set():
            return
        link.peer_closed = True
        link.code = code
        link.reason = reason
        link.closed.set()
        link.inbound_send.close()
        link.outbound_receive.close()

    def _closed(self) -> MemoryClientClosed:
        code = self._link.code
        return MemoryClientClosed(
            code if code is not None else CloseCode.ABNORMAL, self._link.reason
        )

    def __repr__(self) -> str:
        return f"<MemoryClient pending={self.pending} close_code={self.close_code}>"


def memory_connection(
    *,
    wire_capacity: int | float = _DEFAULT_WIRE_CAPACITY,
    inbound_capacity: int | float = _DEFAULT_WIRE_CAPACITY,
) -> tuple[MemoryTransport, MemoryClient]:
    """Make an in-memory connection: the hub's end and the client's end.

    Most tests want :meth:`TestHub.connect`, which also registers it.

    Args:
        wire_capacity: How many frames the "network" between hub and client
            buffers before the hub's writes block; like a socket's buffers. Use
            ``math.inf`` for a client that is never slow.
        inbound_capacity: The same, from the client to the hub.

    Returns:
        ``(transport, client)``: register ``transport`` with a hub, drive
        ``client`` from the test.

    Raises:
        ValueError: if a capacity is not an ``int`` >= 0 or ``math.inf``.

    Example::

        >>> import trio
        >>> from trio_hub import Message, open_hub
        >>> from trio_hub.testing import memory_connection
        >>> async def main() -> None:
        ...     async with open_hub() as hub:
        ...         transport, client = memory_connection()
        ...         hub.register(transport, topics=["news"])
        ...         hub.publish("news", Message("headline", "hello"))
        ...         print(await client.receive())
        >>> trio.run(main)
        Message('headline', 'hello')
    """
    for name, value in (("wire_capacity", wire_capacity), ("inbound_capacity", inbound_capacity)):
        if value != math.inf and (not isinstance(value, int) or value < 0):
            raise ValueError(f"{name} must be an int >= 0 or math.inf, got {value!r}")
    link = _Link(wire_capacity, inbound_capacity)
    return MemoryTransport(link), MemoryClient(link)


# ------------------------------------------------------------------ test hub


@final
class TestHub:
    """An open hub, and a way to connect in-memory clients to it.

    :func:`open_test_hub` yields one. You can also wrap a hub that your
    application opened itself: ``TestHub(hub)``.

    Args:
        hub: An open hub.
    """

    # A test module that imports this class must not have pytest collect it.
    __test__ = False

    __slots__ = ("_hub",)

    def __init__(self, hub: Hub) -> None:
        self._hub = hub

    @property
    def hub(self) -> Hub:
        """The hub, to pass to the code under test."""
        return self._hub

    def connect(
        self,
        *,
        topics: Iterable[str] = (),
        identity: object = None,
        info: JSONValue = None,
        on_message: MessageHandler | None = None,
        wire_capacity: int | float = _DEFAULT_WIRE_CAPACITY,
    ) -> MemoryClient:
        """Connect a new in-memory client, registered with the hub at once.

        The client's tasks start at the hub's next checkpoint, like those of any
        registered client; until then messages wait in its queue or on its wire.

        Args:
            topics: Topics to subscribe the client to, as for :meth:`~trio_hub.Hub.register`.
            identity: As for :meth:`~trio_hub.Hub.register`.
            info: Presence info, as for :meth:`~trio_hub.Hub.register`.
            on_message: A handler for this client's messages, overriding the
                hub's, as for :meth:`~trio_hub.Hub.register`.
            wire_capacity: Frames the connection buffers before the hub's
                writes block, as for :func:`memory_connection`. A client that
                stops reading is evicted once these and the hub's
                ``queue_size`` are full. ``math.inf`` makes a client that is
                never slow.

        Returns:
            The browser's end; its :attr:`~MemoryClient.server_side` is the
            hub's :class:`~trio_hub.Client`.

        Raises:
            HubClosedError: if the hub is closing.
        """
        transport, peer = memory_connection(wire_capacity=wire_capacity)
        client = self._hub.register(
            transport, topics=topics, identity=identity, info=info, on_message=on_message
        )
        peer._link.server_side = client
        peer._link.test_hub = self
        return peer

    async def recover(
        self, client: MemoryClient, topic: str, since: StreamPosition | None = None
    ) -> HistoryResult:
        """Subscribe ``client`` to ``topic`` with recovery, as :meth:`~trio_hub.Hub.recover`.

        The client then keeps its position on ``topic`` (:meth:`MemoryClient.position`),
        for :meth:`MemoryClient.reconnect`.

        .. versionadded:: 0.2
        """
        result = await self._hub.recover(client.server_side, topic, since)
        # Where the client stands before it reads the replay (if any); each
        # publication it receives moves this on.
        client._link.positions[topic] = (
            since if result.recovered and since is not None else result.position
        )
        return result

    async def assert_present(self, topic: str, *identities: str | None) -> list[PresenceInfo]:
        """Assert who is on ``topic``: exactly these identities, one per connection.

        The order does not matter; an identity with two connections is listed
        twice. Needs a hub opened with ``presence=True`` (or ``presence_events``).

        Example::

            >>> import trio
            >>> from trio_hub.testing import open_test_hub
            >>> async def main() -> None:
            ...     async with open_test_hub(presence_events=True) as test_hub:
            ...         alice = test_hub.connect(identity="alice", topics=["room"])
            ...         test_hub.connect(identity="bob", info={"name": "Bob"}, topics=["room"])
            ...         await alice.expect_join("room", identity="bob", info={"name": "Bob"})
            ...         await test_hub.assert_present("room", "alice", "bob")
            >>> trio.run(main)

        Returns:
            The entries, as :meth:`~trio_hub.Hub.presence` returned them.

        Raises:
            AssertionError: showing who is there, if it differs.
        """
        entries = await self._hub.presence(topic)
        present = sorted(_identities(entries), key=_identity_key)
        expected = sorted(identities, key=_identity_key)
        if present != expected:
            raise AssertionError(
                f"expected on {topic!r}: {expected!r}\n  present: {present!r} ({entries!r})"
            )
        return entries

    def __repr__(self) -> str:
        return f"<TestHub {self._hub!r}>"


@asynccontextmanager
async def open_test_hub(**settings: Unpack[HubSettings]) -> AsyncIterator[TestHub]:
    """Open a real hub for a test, with no sockets; connect clients with :meth:`TestHub.connect`.

    This is :func:`~trio_hub.open_hub` (it takes the same settings, with the same
    defaults) plus in-memory clients. Leaving the block shuts the hub down, so
    every connected client ends with 1001 after its queue is flushed.

    Example (pytest-trio runs such a test for you; here :func:`trio.run` does)::

        >>> import trio
        >>> from trio_hub import Message
        >>> from trio_hub.testing import open_test_hub
        >>> async def test_news_reaches_subscribers() -> None:
        ...     async with open_test_hub(queue_size=8) as test_hub:
        ...         reader = test_hub.connect(topics=["news"])
        ...         test_hub.hub.publish("news", Message("headline", "hello"))
        ...         await reader.expect("headline", "hello")
        >>> trio.run(test_news_reaches_subscribers)

    Args:
        **settings: Any keyword argument of :func:`~trio_hub.open_hub`.

    Yields:
        The :class:`TestHub`.
    """
    async with open_hub(**settings) as hub:
        yield TestHub(hub)
