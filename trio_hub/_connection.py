"""The served connection: one task per client, on websockets' sans-I/O engine.

:func:`~trio_hub.serve_hub` parses the HTTP request head and applies its
policy; :func:`handshake_response` answers the upgrade, and from then on a
:class:`ServerConnection` is the client's :class:`~trio_hub.Transport`. The
client's own task (the one that runs the connection handler) is the only
task the connection needs while it is idle: it reads from the socket, feeds
the bytes to the engine (:class:`websockets.server.ServerProtocol`, which
validates every client frame: masking, reserved bits, opcodes, control frame
sizes, fragmentation, close codes and reasons, the size limit), writes the
engine's answers (pongs, close frames) and returns each complete message.
Message frames go out through :class:`~trio_hub._stream.HubStream`, built
once per message by :func:`~trio_hub._stream.text_frame`, straight from
``broadcast()`` when the socket is idle.

Closing (see :ref:`closing`): whoever starts it, the close frame goes out
after every frame taken before it, the sending side is shut (half-close), and
the connection reads and discards until the peer's close frame or EOF, so
that the peer reads our close code instead of a reset. ``close_timeout``
bounds the wait, as the client's ``_finish`` runs :meth:`ServerConnection.close`
under it.
"""

from __future__ import annotations

import base64
import codecs
import hashlib
import itertools
import logging
import os
import struct
from collections.abc import Mapping, Sequence
from typing import Any, Final, cast, final

import trio
from websockets.exceptions import ProtocolError
from websockets.frames import Close, Frame, Opcode
from websockets.protocol import SEND_EOF, State
from websockets.server import ServerProtocol

from ._closecodes import CloseCode
from ._compression import CompressionCounters, DeflateExtension, DeflateParameters, frame_for
from ._errors import TransportClosed
from ._message import Message
from ._stream import HubStream, text_frame

__all__ = ["ServerConnection", "handshake_response"]

_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# How much one read takes from the socket. The buffer exists only during the
# call (the bytes object shrinks to what was read): an idle connection holds none.
_RECEIVE_SIZE: Final = 65536

# A close reason must fit a control frame: 125 bytes, 2 of them the code.
_MAX_REASON_BYTES: Final = 123

_FIN_PING: Final = 0x89

_ping_payloads: Final = itertools.count(1)

_utf8_decoder: Final = codecs.getincrementaldecoder("utf-8")


class _EngineLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The engine's logger: its errors reach ``trio_hub``'s log, its chatter does not.

    The engine logs every frame at DEBUG and every closed connection at INFO;
    trio_hub logs what matters about a client itself.
    """

    def isEnabledFor(self, level: int) -> bool:
        return level >= logging.WARNING and super().isEnabledFor(level)

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if level >= logging.WARNING:
            super().log(level, msg, *args, **kwargs)


_engine_logger: Final = _EngineLogger(logging.getLogger("trio_hub"), {})


def handshake_response(
    headers: Mapping[str, str], deflate: DeflateParameters | None = None
) -> bytes:
    """The ``101 Switching Protocols`` response to a checked upgrade request.

    Args:
        headers: The request headers (lower-case names), already checked by
            the server's policy: version 13 and a ``Sec-WebSocket-Key``.
        deflate: The permessage-deflate parameters agreed with this client,
            if any (:func:`~trio_hub._compression.negotiate_deflate`).

    Returns:
        The complete response head.
    """
    key = headers["sec-websocket-key"].strip().encode("ascii")
    accept = base64.b64encode(hashlib.sha1(key + _GUID).digest()).decode("ascii")
    lines = [
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Accept: {accept}",
    ]
    if deflate is not None:
        lines.append(f"Sec-WebSocket-Extensions: {deflate.response()}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def _sendable(code: int) -> bool:
    # What RFC 6455 lets an endpoint put in a close frame (1005, 1006 and
    # 1015 are only ever reported, never sent).
    return code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014) or (
        3000 <= code <= 4999
    )


def _truncate(reason: str) -> str:
    data = reason.encode("utf-8")
    if len(data) <= _MAX_REASON_BYTES:
        return reason
    # Cut at a character boundary, so that the reason stays valid UTF-8.
    return data[:_MAX_REASON_BYTES].decode("utf-8", errors="ignore")


@final
class ServerConnection:
    """The :class:`~trio_hub.Transport` of a client accepted by :func:`~trio_hub.serve_hub`.

    Args:
        stream: The accepted TCP stream, after our 101 response.
        writer: The :class:`HubStream` that every write goes through.
        max_message_size: The largest inbound message, in bytes; a larger one
            is closed with 1009 as soon as its frame header says so.
        initial: Bytes that arrived after the request head (the client may
            send its first frames without waiting for the response).
        deflate: The permessage-deflate parameters agreed in the handshake:
            the client gets each message's shared compressed frame, and its
            compressed messages are inflated, bounded by ``max_message_size``.
        counters: Where to count compression.
    """

    # Kept small: most connections are idle most of the time, and this is
    # what each of them holds (with the engine, the socket and the Client).
    __slots__ = (
        "_counters",
        "_deflate",
        "_deflate_limit",
        "_fd",
        "_fragments",
        "_frames",
        "_outbox",
        "_pong",
        "_protocol",
        "_socket",
        "_stream",
    )

    def __init__(
        self,
        stream: trio.SocketStream,
        writer: HubStream,
        *,
        max_message_size: int,
        initial: bytes = b"",
        deflate: DeflateParameters | None = None,
        counters: CompressionCounters | None = None,
    ) -> None:
        self._socket = stream.socket
        self._fd = stream.socket.fileno()
        self._stream = writer
        # The handshake is done (by serve_hub): start the engine open.
        self._protocol = ServerProtocol(
            max_size=max_message_size, state=State.OPEN, logger=_engine_logger
        )
        self._deflate = deflate
        self._counters = counters if counters is not None else CompressionCounters()
        self._deflate_limit = 0
        if deflate is not None:
            self._deflate_limit = deflate.max_compressed_length
            self._protocol.extensions = [
                DeflateExtension(deflate, max_message_size, self._counters)
            ]
        # Frames parsed and not yet handled, if more than one message came in
        # one read; None (not an empty list) while idle.
        self._frames: list[Frame] | None = None
        # A fragmented message being assembled: its decoder (text only) and parts.
        self._fragments: tuple[codecs.IncrementalDecoder | None, list[str | bytes]] | None = None
        # The engine's output (pongs, our close frame, the half-close) not yet written.
        self._outbox: list[bytes] = []
        # The payload of the ping waiting for its pong, and who waits.
        self._pong: tuple[bytes, trio.Event] | None = None
        if initial:
            self._feed(initial)

    # ------------------------------------------------------------- reading

    async def receive(self) -> str | bytes:
        """See :meth:`trio_hub.Transport.receive`."""
        while True:
            if self._frames is not None:
                message = self._next_message()
                if message is not None:
                    return message
            if self._protocol.state is not State.OPEN:
                # Our failure (1002, 1007, 1009) or the peer's close frame;
                # the answers are queued in the engine.
                await self._answer()
                raise self._closed_error()
            # os.read() and wait_readable() rather than the socket's recv():
            # the same system calls, two coroutine frames fewer for each
            # waiting (idle) connection.
            try:
                data: bytes | None = os.read(self._fd, _RECEIVE_SIZE)
            except BlockingIOError:
                # Not waited for in here: the exception (and the last data
                # read) would stay alive for as long as the connection idles.
                data = None
            except OSError as exc:
                self._protocol.receive_eof()
                raise TransportClosed(None, f"connection lost: {exc}") from None
            if data is None:
                try:
                    await trio.lowlevel.wait_readable(self._fd)
                except trio.ClosedResourceError:  # closed by abort(), or by close()
                    raise TransportClosed(None, "connection closed") from None
                continue
            if data:
                self._feed(data)
            else:
                self._protocol.receive_eof()
            # A checkpoint for every read, as the socket's recv() has; what
            # was read is in the engine already, so a cancellation loses nothing.
            await trio.lowlevel.cancel_shielded_checkpoint()
            # Pongs go out now, behind the frames already taken.
            await self._answer()

    def _feed(self, data: bytes) -> None:
        protocol = self._protocol
        protocol.receive_data(data)
        # A server-side engine that starts open yields frames only.
        frames = cast("list[Frame]", protocol.events_received())
        if frames:
            if self._frames is None:
                self._frames = frames
            else:
                self._frames.extend(frames)

    def _next_message(self) -> str | bytes | None:
        frames = self._frames
        assert frames is not None
        protocol = self._protocol
        while frames:
            frame = frames.pop(0)
            opcode = frame.opcode
            if opcode is Opcode.TEXT or opcode is Opcode.BINARY or opcode is Opcode.CONT:
                try:
                    message = self._assemble(frame)
                except UnicodeDecodeError as exc:
                    # A close, not the engine's fail(): the frames are intact,
                    # so the engine goes on parsing and finds the peer's reply.
                    protocol.send_close(CloseCode.INVALID_PAYLOAD, f"invalid UTF-8: {exc.reason}")
                    frames.clear()
                    break
                if message is not None:
                    if not frames:
                        self._frames = None
                    return message
            elif opcode is Opcode.PONG:
                pong = self._pong
                if pong is not None and frame.data == pong[0]:
                    self._pong = None
                    pong[1].set()
            # PING: the engine queued the pong. CLOSE: it queued the answer,
            # and the state says the rest.
        self._frames = None
        return None

    def _assemble(self, frame: Frame) -> str | bytes | None:
        # The engine checked the order (no continuation without a start, no
        # new message inside a fragmented one) and the size limit.
        data = cast(bytes, frame.data)  # Frame.parse makes bytes
        if frame.opcode is not Opcode.CONT:
            text = frame.opcode is Opcode.TEXT
            if frame.fin:
                return data.decode() if text else data
            # Invalid UTF-8 fails at the fragment that holds it.
            decoder: codecs.IncrementalDecoder | None = _utf8_decoder() if text else None
            self._fragments = (decoder, [decoder.decode(data) if decoder else data])
            return None
        assert self._fragments is not None
        decoder, parts = self._fragments
        parts.append(decoder.decode(data, final=frame.fin) if decoder else data)
        if not frame.fin:
            return None
        self._fragments = None
        if decoder is not None:
            return "".join(cast("list[str]", parts))
        return b"".join(cast("list[bytes]", parts))

    def _closed_error(self) -> TransportClosed:
        protocol = self._protocol
        if protocol.close_rcvd is not None and protocol.close_rcvd_then_sent:
            close: Close | None = protocol.close_rcvd  # the peer started it
        else:
            close = protocol.close_sent or protocol.close_rcvd
        if close is None or close.code == CloseCode.ABNORMAL:
            return TransportClosed(None, "connection closed without a close frame")
        return TransportClosed(close.code, close.reason)

    async def _answer(self) -> None:
        # The reader's writes (pongs, close answers, the half-close) meet a
        # peer that may be gone: that ends the connection, as a read would.
        try:
            await self._send_engine_output()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise TransportClosed(None, f"connection lost: {exc}") from None

    async def _send_engine_output(self) -> None:
        # What the engine queued stays queued here until written: if the
        # reading task is cancelled on the way (the client was closed while a
        # pong or our close frame waited for a write in progress), close()
        # sends the rest, so a close frame is never lost.
        outbox = self._outbox
        outbox.extend(self._protocol.data_to_send())
        while outbox:
            data = outbox[0]
            if data == SEND_EOF:
                await self._stream.send_eof()
            else:
                await self._stream.send_all(data)
            outbox.pop(0)

    # ------------------------------------------------------------- writing

    async def send_batch(self, messages: Sequence[Message]) -> None:
        """See :meth:`trio_hub.Transport.send_batch`: one write for the batch."""
        if self._stream.closing:
            raise self._closed_error()
        deflate = self._deflate
        if deflate is None:
            data = b"".join([text_frame(message) for message in messages])
        else:
            limit, counters = self._deflate_limit, self._counters
            data = b"".join([frame_for(message, limit, counters) for message in messages])
        try:
            await self._stream.write_frames(data)
        except trio.ClosedResourceError:
            # A close frame went out first (ours or the answer to the
            # peer's): the reading task reports why, with its code.
            raise self._closed_error() from None
        except trio.BrokenResourceError:
            raise TransportClosed(None, "connection lost") from None

    def send_nowait(self, message: Message) -> bool:
        """See :meth:`trio_hub.Transport.send_nowait`."""
        deflate = self._deflate
        if deflate is None:
            return self._stream.write_nowait(text_frame(message))
        return self._stream.write_nowait(frame_for(message, self._deflate_limit, self._counters))

    async def ping(self) -> None:
        """See :meth:`trio_hub.Transport.ping`.

        A connection that is closing answers no ping: this raises
        :class:`~trio_hub.TransportClosed` then, quietly, whatever the moment.
        """
        if self._protocol.state is not State.OPEN or self._stream.closing:
            raise TransportClosed(None, "the connection is closing")
        payload = struct.pack("!Q", next(_ping_payloads))
        waiter = trio.Event()
        self._pong = (payload, waiter)
        try:
            # Built here, not by the engine: the engine's output belongs to the
            # reading task, which sends it in the order it was queued.
            await self._stream.send_all(bytes([_FIN_PING, len(payload)]) + payload)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise TransportClosed(None, "connection lost") from None
        await waiter.wait()

    # ------------------------------------------------------------- closing

    async def close(self, code: int, reason: str) -> None:
        """See :meth:`trio_hub.Transport.close`: the closing handshake.

        Sends the close frame (unless one went out already), half-closes, then
        reads and discards until the peer's close frame or EOF. The caller
        bounds it with ``close_timeout`` (and aborts after it); the socket is
        closed when this returns, whatever happened.
        """
        protocol = self._protocol
        stream = self._stream
        try:
            if protocol.state is State.OPEN:
                if not _sendable(code):
                    code, reason = CloseCode.INTERNAL_ERROR, "invalid close code"
                try:
                    protocol.send_close(code, _truncate(reason))
                except ProtocolError:  # not expected after the checks above
                    protocol.fail(CloseCode.INTERNAL_ERROR)
            await self._send_engine_output()
            await stream.send_eof()
            # Read and discard until the peer answers (or gives up), so that
            # our close frame is never lost to a reset caused by unread input.
            socket = self._socket
            while protocol.close_rcvd is None and protocol.state is not State.CLOSED:
                data = await socket.recv(_RECEIVE_SIZE)
                if not data:
                    break
                protocol.receive_data(data)
                protocol.events_received()
                protocol.data_to_send()  # pongs after our half-close: dropped
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the peer is gone: nothing left to hand over
        finally:
            self._frames = None
            self._fragments = None
            await stream.aclose()

    async def abort(self) -> None:
        """See :meth:`trio_hub.Transport.abort`."""
        self._frames = None
        self._fragments = None
        await self._stream.abort()

    def __repr__(self) -> str:
        try:
            address = self._socket.getpeername()
            remote = f"{address[0]}:{address[1]}"
        except OSError:
            remote = "closed"
        return f"<ServerConnection {remote}>"
