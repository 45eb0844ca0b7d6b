"""Test doubles for applications built on trio_hub.

* :class:`RecordingBroadcaster` is a :class:`~trio_hub.BroadcastSender` that
  records what was sent, for unit tests of code that only broadcasts.
* :func:`memory_connection` makes an in-memory connection: a
  :class:`MemoryTransport` to register with a real hub, and the
  :class:`MemoryClient` that plays the browser. No sockets are involved, so tests
  run under ``autojump_clock`` and keepalive and write timeouts take no real time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, final

import trio

from ._closecodes import CloseCode
from ._errors import TransportClosed
from ._message import JSONValue, Message

__all__ = [
    "MemoryClient",
    "MemoryClientClosed",
    "MemoryTransport",
    "RecordingBroadcaster",
    "SentMessage",
    "memory_connection",
]

_DEFAULT_TIMEOUT: Final = 5.0


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
        """Record a broadcast of ``message``."""
        self.sent.append(SentMessage(None, _check_message(message)))
        return self._listeners

    def publish(self, topic: str, message: Message) -> int:
        """Record a publication of ``message`` on ``topic``."""
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

    def assert_broadcast(self, type: str, payload: JSONValue = None) -> None:
        """Assert that a message with this type and payload was broadcast.

        Raises:
            AssertionError: listing everything that was sent, if none matches.
        """
        expected = Message(type, payload)
        if expected not in self.broadcasts:
            raise AssertionError(f"expected a broadcast of {expected!r}; {self._describe_sent()}")

    def assert_published(self, topic: str, type: str, payload: JSONValue = None) -> None:
        """Assert that a message with this type and payload was published on ``topic``.

        Raises:
            AssertionError: listing everything that was sent, if none matches.
        """
        expected = Message(type, payload)
        if expected not in self.published(topic):
            raise AssertionError(
                f"expected {expected!r} published on {topic!r}; {self._describe_sent()}"
            )

    def assert_sent_exactly(self, *expected: SentMessage) -> None:
        """Assert that exactly these calls were made, in this order.

        Raises:
            AssertionError: showing both sequences, if they differ.
        """
        if list(expected) != self.sent:
            raise AssertionError(f"expected exactly {list(expected)!r}; {self._describe_sent()}")

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
        lines = [
            f"  {index}. "
            + ("broadcast " if sent.topic is None else f"publish on {sent.topic!r} ")
            + repr(sent.message)
            for index, sent in enumerate(self.sent, 1)
        ]
        return "sent were:\n" + "\n".join(lines)


def _check_message(message: Message) -> Message:
    if not isinstance(message, Message):
        raise TypeError(f"expected a trio_hub.Message, got {type(message).__name__}")
    return message


# --------------------------------------------------------- memory transport


class MemoryClientClosed(Exception):
    """The hub closed the in-memory connection.

    Raised by :class:`MemoryClient`'s receive methods once every message
    written before the close has been read, like a WebSocket client that reads
    up to the close frame.

    Attributes:
        code: The close code the hub sent.
        reason: The close reason.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        return f"connection closed by the hub (code={self.code}, reason={self.reason!r})"


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
        "reason",
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
        """See :meth:`trio_hub.Transport.ping`."""
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

    Get one from :func:`memory_connection`. Receive methods take a ``timeout``
    in seconds (virtual seconds under ``autojump_clock``) and raise
    :class:`trio.TooSlowError` when it passes.
    """

    __slots__ = ("_link",)

    def __init__(self, link: _Link) -> None:
        self._link = link

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
        with trio.fail_after(timeout):
            try:
                return await self._link.outbound_receive.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                raise self._closed() from None

    async def receive(self, *, timeout: float = _DEFAULT_TIMEOUT) -> Message:
        """Wait for the next message from the hub, decoded."""
        return Message.decode(await self.receive_text(timeout=timeout))

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
        return Message.decode(text)

    def drain(self) -> list[Message]:
        """Return every message waiting now, without blocking."""
        messages: list[Message] = []
        while True:
            try:
                messages.append(self.receive_nowait())
            except (trio.WouldBlock, MemoryClientClosed):
                return messages

    async def expect(
        self,
        type: str,
        payload: JSONValue = None,
        *,
        timeout: float = _DEFAULT_TIMEOUT,
    ) -> Message:
        """Receive the next message and assert its type and payload.

        Raises:
            AssertionError: showing what was expected and what arrived.
        """
        expected = Message(type, payload)
        got = await self.receive(timeout=timeout)
        if got != expected:
            raise AssertionError(f"expected {expected!r}, received {got!r}")
        return got

    async def wait_closed(self, *, timeout: float = _DEFAULT_TIMEOUT) -> int:
        """Wait until the connection is closed, and return the close code.

        Unread messages stay readable.
        """
        with trio.fail_after(timeout):
            await self._link.closed.wait()
        code = self._link.code
        assert code is not None
        return code

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close the connection from the browser's side."""
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
    *, wire_capacity: int | float = 16, inbound_capacity: int | float = 16
) -> tuple[MemoryTransport, MemoryClient]:
    """Make an in-memory connection: the hub's end and the client's end.

    Args:
        wire_capacity: How many frames the "network" between hub and client
            buffers before the hub's writes block; like a socket's buffers. Use
            ``math.inf`` for a client that is never slow.
        inbound_capacity: The same, from the client to the hub.

    Returns:
        ``(transport, client)``: register ``transport`` with a hub, drive
        ``client`` from the test.

    Example::

        transport, client = memory_connection()
        hub.register(transport, topics=["news"])
        hub.publish("news", Message("headline", "hello"))
        await client.expect("headline", "hello")
    """
    for name, value in (("wire_capacity", wire_capacity), ("inbound_capacity", inbound_capacity)):
        if value != math.inf and (not isinstance(value, int) or value < 0):
            raise ValueError(f"{name} must be an int >= 0 or math.inf, got {value!r}")
    link = _Link(wire_capacity, inbound_capacity)
    return MemoryTransport(link), MemoryClient(link)
