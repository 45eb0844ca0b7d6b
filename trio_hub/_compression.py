"""permessage-deflate (RFC 7692), compressed once per message.

Three parts, each independent of the connection engine:

* **Negotiation** (:func:`negotiate_deflate`): read the client's
  ``Sec-WebSocket-Extensions`` offers, accept the first acceptable
  ``permessage-deflate`` offer, and build the response. The server always
  answers ``server_no_context_takeover``: every message is compressed on its
  own, so its compressed frame is the same for every client, and is built once
  (like gorilla's ``PreparedMessage``).
* **Outbound** (:func:`deflate_frame`, :meth:`DeflateParameters.frame`): the
  compressed frame of a :class:`~trio_hub.Message`, built at most once and
  cached on the message next to its plain frame. Messages under
  :data:`COMPRESSION_THRESHOLD` bytes, and messages that do not shrink, share
  the plain frame (RSV1 clear) instead.
* **Inbound** (:class:`Inflater`, and :class:`DeflateExtension` for the
  served connection's engine): decompression with a hard bound on the decompressed
  size of each message, so that a compression bomb costs at most
  ``max_message_size`` bytes of memory and the CPU to produce them, then a
  1009 close.

Why one shared compressor is correct: after ``flush(Z_FULL_FLUSH)`` zlib
forgets its LZ77 window (it clears the hash table), so the bytes it emits for
the next message never refer to earlier ones, and are exactly the bytes a fresh
compressor would emit (a test checks this). A fresh ``zlib.compressobj``
allocates ~256 KiB and clears it: 5 to 40 us depending on the allocator's
state (``bench/bench_compression.py``); the shared one costs none of that.
"""

from __future__ import annotations

import dataclasses
import re
import struct
import sys
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, final

from websockets.exceptions import PayloadTooBig as WsPayloadTooBig
from websockets.exceptions import ProtocolError as WsProtocolError
from websockets.extensions.base import Extension as WsExtension
from websockets.frames import CTRL_OPCODES as WS_CTRL_OPCODES
from websockets.frames import Frame as WsFrame
from websockets.frames import Opcode as WsOpcode
from websockets.typing import ExtensionName as WsExtensionName

from ._closecodes import CloseCode
from ._message import Message
from ._statistics import CompressionStatistics
from ._stream import text_frame

__all__ = [
    "COMPRESSION_LEVEL",
    "COMPRESSION_THRESHOLD",
    "CompressionCounters",
    "DeflateExtension",
    "DeflateParameters",
    "InflateError",
    "Inflater",
    "deflate_frame",
    "frame_for",
    "negotiate_deflate",
    "parse_extensions",
]

EXTENSION_NAME: Final = "permessage-deflate"

COMPRESSION_THRESHOLD: Final = 128
"""Messages whose encoded size is under this many bytes are sent uncompressed.

Chosen by measurement (``bench/bench_compression.py``, zlib 1.2.13): JSON
envelopes of 64 bytes shrink by 0-3 bytes, of 100 bytes by 8-12, of 128 bytes
by ~22 (17 %), of 256 bytes by 80-100 (30-38 %). Under 128 bytes the saving is
a few percent of the packet once TCP/IP headers count, and costs 400-1500 us
of compression CPU per KiB saved (60 us at 256 bytes), plus an inflate for
every receiver.
"""

COMPRESSION_LEVEL: Final = 1
"""The zlib level of the shared compressor.

Chosen by measurement (``bench/bench_compression.py``): up to 1 KiB, level 1
output is within 6 % of level 6's; at 4 KiB ~11 % larger and at 16 KiB ~20 %
larger, for a quarter to a third of level 6's CPU (16 KiB of chat JSON: ~90 us
against ~340 us). A broadcast pays it once, however many clients, but it is
paid inside the synchronous ``broadcast()`` call, and one-to-one frames (echo
replies, ``broadcastResult``) pay it in full.
"""

# memLevel 8 (zlib's default): a smaller one saves nothing for a compressor
# that is allocated once, and compresses worse above 4 KiB.
_MEM_LEVEL: Final = 8

# RFC 7692 section 7.2.1: the sender removes this empty stored block's tail.
_TAIL: Final = b"\x00\x00\xff\xff"

_FIN_RSV1_TEXT: Final = 0xC1

_PROTOCOL_ERROR: Final = 1002

_MIN_WINDOW_BITS: Final = 8
_MAX_WINDOW_BITS: Final = 15


# ------------------------------------------------------------------ statistics


@final
class CompressionCounters:
    """The mutable counters behind :class:`CompressionStatistics` (one per hub).

    Deliveries are tallied per message: a broadcast hands one message to its
    clients one after the other, so a delivery usually costs one identity test
    and one increment (:func:`frame_for`), and the byte totals are folded in
    when the next message comes or a snapshot is taken.
    """

    __slots__ = (
        "_tally",
        "_tally_message",
        "bytes_after",
        "bytes_before",
        "delivered_bytes_after",
        "delivered_bytes_before",
        "deliveries_compressed",
        "inbound_bytes_after",
        "inbound_bytes_before",
        "inbound_messages",
        "messages_compressed",
        "messages_uncompressed",
    )

    def __init__(self) -> None:
        self.messages_compressed = 0
        self.messages_uncompressed = 0
        self.bytes_before = 0
        self.bytes_after = 0
        self.deliveries_compressed = 0
        self.delivered_bytes_before = 0
        self.delivered_bytes_after = 0
        self.inbound_messages = 0
        self.inbound_bytes_before = 0
        self.inbound_bytes_after = 0
        # The message being delivered now, and its deliveries not yet folded in.
        self._tally_message: Message | None = None
        self._tally = 0

    def _switch(self, message: Message | None) -> None:
        previous = self._tally_message
        if previous is not None and self._tally:
            count = self._tally
            self.deliveries_compressed += count
            self.delivered_bytes_before += count * previous._deflate_plain_size
            frame = previous._deflate_frame
            assert frame is not None
            self.delivered_bytes_after += count * len(frame)
        self._tally_message = message
        self._tally = 0

    def snapshot(self) -> CompressionStatistics:
        """A frozen copy of the counters."""
        self._switch(None)
        return CompressionStatistics(
            messages_compressed=self.messages_compressed,
            messages_uncompressed=self.messages_uncompressed,
            bytes_before=self.bytes_before,
            bytes_after=self.bytes_after,
            deliveries_compressed=self.deliveries_compressed,
            delivered_bytes_before=self.delivered_bytes_before,
            delivered_bytes_after=self.delivered_bytes_after,
            inbound_messages=self.inbound_messages,
            inbound_bytes_before=self.inbound_bytes_before,
            inbound_bytes_after=self.inbound_bytes_after,
        )


# ----------------------------------------------------------------- negotiation

# RFC 7230 token and quoted-string, as used by RFC 6455 section 9.1.
_TOKEN: Final = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_TOKEN_RE: Final = re.compile(_TOKEN)
_QUOTED_RE: Final = re.compile(r'"((?:[^"\\]|\\.)*)"')
_OWS_RE: Final = re.compile(r"[ \t]*")
_WINDOW_BITS_RE: Final = re.compile(r"[1-9][0-9]?")


class _HeaderSyntaxError(ValueError):
    pass


Extension = tuple[str, list[tuple[str, str | None]]]
"""One offered extension: its name and its ``(parameter, value or None)`` list."""


def parse_extensions(header_values: Iterable[str]) -> list[Extension]:
    """Parse ``Sec-WebSocket-Extensions`` header values into offers, in order.

    A header value that breaks the grammar of RFC 6455 section 9.1 is skipped
    whole (its commas cannot be trusted), the others are kept: a malformed
    header never fails the handshake, it only loses its offers.

    Args:
        header_values: Each ``Sec-WebSocket-Extensions`` header of the request,
            in order (the header may be repeated).

    Returns:
        ``(name, [(parameter, value), ...])`` per offer; names and parameter
        names lower-cased, a quoted value unquoted, ``None`` for no value.
    """
    offers: list[Extension] = []
    for value in header_values:
        try:
            offers.extend(_parse_header(value))
        except _HeaderSyntaxError:
            continue
    return offers


def _parse_header(value: str) -> list[Extension]:
    result: list[Extension] = []
    pos = 0
    end = len(value)

    def skip_ows() -> None:
        nonlocal pos
        match = _OWS_RE.match(value, pos)
        assert match is not None
        pos = match.end()

    def token() -> str:
        nonlocal pos
        match = _TOKEN_RE.match(value, pos)
        if match is None:
            raise _HeaderSyntaxError(f"expected a token at {pos} in {value!r}")
        pos = match.end()
        return match.group().lower()

    while True:
        skip_ows()
        if pos < end and value[pos] == ",":  # empty list elements are allowed
            pos += 1
            continue
        if pos == end:
            return result
        name = token()
        params: list[tuple[str, str | None]] = []
        skip_ows()
        while pos < end and value[pos] == ";":
            pos += 1
            skip_ows()
            param = token()
            param_value: str | None = None
            skip_ows()
            if pos < end and value[pos] == "=":
                pos += 1
                skip_ows()
                quoted = _QUOTED_RE.match(value, pos)
                if quoted is not None:
                    pos = quoted.end()
                    param_value = re.sub(r"\\(.)", r"\1", quoted.group(1))
                else:
                    param_value = token()
            params.append((param, param_value))
            skip_ows()
        result.append((name, params))
        if pos == end:
            return result
        if value[pos] != ",":
            raise _HeaderSyntaxError(f"expected ',' or ';' at {pos} in {value!r}")
        pos += 1


def _window_bits(value: str | None) -> int:
    # RFC 7692 section 7.1.2: 8 to 15, no leading zero; a quoted value must be
    # the same after unquoting (parse_extensions already unquoted it).
    if value is None or _WINDOW_BITS_RE.fullmatch(value) is None:
        raise ValueError(value)
    bits = int(value)
    if not _MIN_WINDOW_BITS <= bits <= _MAX_WINDOW_BITS:
        raise ValueError(value)
    return bits


@final
@dataclass(frozen=True, slots=True)
class DeflateParameters:
    """What the server agreed with one client (RFC 7692 section 7.1).

    The server always uses ``server_no_context_takeover``.

    Attributes:
        client_no_context_takeover: The client resets its compressor per
            message: the server's inflater lives for one message only.
        client_max_window_bits: The window the client's compressor may use,
            as answered (``None``: not in the response, so up to 15).
        server_max_window_bits: The window the client asked the server to
            keep to (``None``: not asked, up to 15).
    """

    client_no_context_takeover: bool
    client_max_window_bits: int | None
    server_max_window_bits: int | None

    def response(self) -> str:
        """The ``Sec-WebSocket-Extensions`` response header value."""
        parts = [EXTENSION_NAME, "server_no_context_takeover"]
        if self.client_no_context_takeover:
            parts.append("client_no_context_takeover")
        if self.server_max_window_bits is not None:
            parts.append(f"server_max_window_bits={self.server_max_window_bits}")
        if self.client_max_window_bits is not None:
            parts.append(f"client_max_window_bits={self.client_max_window_bits}")
        return "; ".join(parts)

    @property
    def inflate_window_bits(self) -> int:
        """The ``wbits`` for the inflater of this client's messages.

        zlib cannot make an 8-bit window for raw deflate compression, but a
        larger inflate window reads any smaller window's stream.
        """
        bits = self.client_max_window_bits or _MAX_WINDOW_BITS
        return max(bits, 9)

    @property
    def max_compressed_length(self) -> int:
        """The largest encoded message this client may get compressed (``sys.maxsize``: any).

        A message of n bytes compressed on its own never refers back more
        than n bytes, so its stream fits any window of at least n bytes,
        whatever window the shared compressor has: a client that asked for
        a small window gets the shared frame for messages that fit in it,
        and the plain frame for larger ones.
        """
        bits = self.server_max_window_bits
        return sys.maxsize if bits is None or bits == _MAX_WINDOW_BITS else 1 << bits

    def frame(self, message: Message, counters: CompressionCounters | None = None) -> bytes:
        """The frame to send ``message`` to this client (see :func:`frame_for`)."""
        return frame_for(
            message,
            self.max_compressed_length,
            counters if counters is not None else CompressionCounters(),
        )


def negotiate_deflate(
    header_values: Iterable[str],
    *,
    client_context_takeover: bool = False,
    client_max_window_bits: int = _MAX_WINDOW_BITS,
) -> DeflateParameters | None:
    """Accept the first acceptable ``permessage-deflate`` offer, if any.

    An offer is declined (and the next one tried) if it has a parameter
    RFC 7692 does not define, a parameter twice, a value where none belongs,
    or a missing or invalid window size (8 to 15, no leading zero).

    Args:
        header_values: The request's ``Sec-WebSocket-Extensions`` values.
        client_context_takeover: Let the client keep its compression context
            across messages (better inbound compression, but an inflater of up
            to ~40 KiB kept per connection). By default the server answers
            ``client_no_context_takeover``, so an idle connection keeps none.
        client_max_window_bits: When the client offers
            ``client_max_window_bits``, the window it is asked to keep to
            (9 to 15): a smaller one makes a kept inflater smaller.

    Returns:
        The agreed parameters (their :meth:`~DeflateParameters.response` is
        the response header), or ``None``: compression is off for this client.
    """
    if not 9 <= client_max_window_bits <= _MAX_WINDOW_BITS:
        raise ValueError(f"client_max_window_bits must be 9 to 15, got {client_max_window_bits!r}")
    for name, params in parse_extensions(header_values):
        if name != EXTENSION_NAME:
            continue
        accepted = _accept(
            params,
            client_context_takeover=client_context_takeover,
            client_max_window_bits=client_max_window_bits,
        )
        if accepted is not None:
            return accepted
    return None


def _accept(
    params: list[tuple[str, str | None]],
    *,
    client_context_takeover: bool,
    client_max_window_bits: int,
) -> DeflateParameters | None:
    seen: set[str] = set()
    client_no_context_takeover = not client_context_takeover
    offered_client_bits: int | None = None
    client_bits_offered = False
    server_bits: int | None = None
    for param, value in params:
        if param in seen:
            return None  # section 7: a duplicate parameter declines the offer
        seen.add(param)
        try:
            if param in ("server_no_context_takeover", "client_no_context_takeover"):
                if value is not None:
                    return None
                if param == "client_no_context_takeover":
                    client_no_context_takeover = True
            elif param == "server_max_window_bits":
                server_bits = _window_bits(value)
            elif param == "client_max_window_bits":
                client_bits_offered = True
                if value is not None:
                    offered_client_bits = _window_bits(value)
            else:
                return None  # an unknown parameter declines the offer
        except ValueError:
            return None
    # client_max_window_bits may be answered only if offered (section 7.1.2.2).
    answered_client_bits: int | None = None
    if client_bits_offered:
        answered_client_bits = min(offered_client_bits or _MAX_WINDOW_BITS, client_max_window_bits)
        if answered_client_bits == _MAX_WINDOW_BITS and offered_client_bits is None:
            answered_client_bits = None  # 15 is the default: nothing to say
    return DeflateParameters(
        client_no_context_takeover=client_no_context_takeover,
        client_max_window_bits=answered_client_bits,
        server_max_window_bits=server_bits,
    )


# -------------------------------------------------------------------- outbound


@final
class _Deflater:
    """A compressor shared by every message, reset between messages.

    Single-threaded use only (Trio runs one task at a time; the calls here
    never yield).
    """

    __slots__ = ("_compressor", "_level", "_mem_level")

    def __init__(self, level: int = COMPRESSION_LEVEL, mem_level: int = _MEM_LEVEL) -> None:
        self._level = level
        self._mem_level = mem_level
        self._compressor = self._new()

    def _new(self) -> zlib._Compress:
        return zlib.compressobj(self._level, zlib.DEFLATED, -_MAX_WINDOW_BITS, self._mem_level)

    def compress(self, data: bytes) -> bytes:
        """``data`` deflated on its own, without the 4-byte tail (RFC 7692 7.2.1)."""
        compressor = self._compressor
        try:
            out = compressor.compress(data) + compressor.flush(zlib.Z_FULL_FLUSH)
        except BaseException:
            # Whatever state it was left in, never let it reach the next message.
            self._compressor = self._new()
            raise
        if not out.endswith(_TAIL):  # pragma: no cover  (zlib always ends a flush so)
            self._compressor = self._new()
            raise AssertionError("zlib full flush did not end with an empty stored block")
        return out[:-4]


_deflater: Final = _Deflater()


def _header(first_byte: int, length: int) -> bytes:
    if length < 126:
        return struct.pack("!BB", first_byte, length)
    if length < 65536:
        return struct.pack("!BBH", first_byte, 126, length)
    return struct.pack("!BBQ", first_byte, 127, length)


def _plain_frame_size(length: int) -> int:
    return length + (2 if length < 126 else 4 if length < 65536 else 10)


def deflate_frame(message: Message, counters: CompressionCounters | None = None) -> bytes:
    """The frame of ``message`` for clients that negotiated permessage-deflate.

    Built once per message and cached on it: the compressed frame (RSV1 set,
    one frame, FIN), or the plain :func:`~trio_hub._stream.text_frame` itself
    when the message is under :data:`COMPRESSION_THRESHOLD` or does not
    shrink.

    Args:
        message: The message.
        counters: Where to count the build, if it happens now.
    """
    frame = message._deflate_frame
    if frame is None:
        frame = _build(message, counters)
    return frame


def frame_for(message: Message, limit: int, counters: CompressionCounters) -> bytes:
    """The frame for one delivery of ``message`` to a compressing client.

    The hot path of a broadcast: after the first call for a message, a few
    attribute reads and the delivery's counters.

    Args:
        message: The message.
        limit: The client's :attr:`DeflateParameters.max_compressed_length`;
            a larger message goes to it as the plain frame.
        counters: Where to count the build (once) and the delivery.
    """
    frame = message._deflate_frame
    if frame is None:
        frame = _build(message, counters)
    before = message._deflate_plain_size
    if before:  # compressed
        if before > limit and len(message.encode()) > limit:
            return text_frame(message)
        if counters._tally_message is not message:
            counters._switch(message)
        counters._tally += 1
    return frame


def _build(message: Message, counters: CompressionCounters | None) -> bytes:
    data = message.encode()
    plain_size = _plain_frame_size(len(data))
    frame: bytes | None = None
    if len(data) >= COMPRESSION_THRESHOLD:
        payload = _deflater.compress(data)
        if _plain_frame_size(len(payload)) < plain_size:
            frame = _header(_FIN_RSV1_TEXT, len(payload)) + payload
    if frame is None:
        frame = text_frame(message)
        if counters is not None:
            counters.messages_uncompressed += 1
    else:
        message._deflate_plain_size = plain_size
        if counters is not None:
            counters.messages_compressed += 1
            counters.bytes_before += plain_size
            counters.bytes_after += len(frame)
    message._deflate_frame = frame
    return frame


# --------------------------------------------------------------------- inbound


class InflateError(Exception):
    """A compressed message from a client could not be accepted.

    Attributes:
        code: The close code: :attr:`CloseCode.MESSAGE_TOO_BIG` (1009) when
            the message decompresses to more than the limit, 1002 (protocol
            error, as the websockets and wsproto engines say) when it is not
            valid deflate data.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@final
class Inflater:
    """Decompresses one client's messages, never past ``max_message_size``.

    Feed each compressed message's payload with :meth:`feed` (in as many
    pieces as it arrives), then call :meth:`finish`. Each call produces at
    most what is left of the message's budget plus one byte: going over
    raises :class:`InflateError` (1009) at once, so a bomb costs at most
    ``max_message_size`` bytes of output and the CPU to make them.

    Args:
        window_bits: The client's window (9 to 15).
        no_context_takeover: The client resets its compressor per message, so
            the inflater is dropped after each message; otherwise it is kept.
        max_message_size: The largest decompressed message.
        counters: Where to count inbound bytes, if anywhere.
    """

    __slots__ = (
        "_counters",
        "_decompressor",
        "_max_message_size",
        "_no_context_takeover",
        "_received",
        "_remaining",
        "_window_bits",
    )

    def __init__(
        self,
        *,
        window_bits: int,
        no_context_takeover: bool,
        max_message_size: int,
        counters: CompressionCounters | None = None,
    ) -> None:
        self._window_bits = window_bits
        self._no_context_takeover = no_context_takeover
        self._max_message_size = max_message_size
        self._counters = counters
        self._decompressor: zlib._Decompress | None = None
        self._remaining = max_message_size
        self._received = 0

    @classmethod
    def for_parameters(
        cls,
        parameters: DeflateParameters,
        max_message_size: int,
        counters: CompressionCounters | None = None,
    ) -> Inflater:
        """The inflater for a client that agreed ``parameters``."""
        return cls(
            window_bits=parameters.inflate_window_bits,
            no_context_takeover=parameters.client_no_context_takeover,
            max_message_size=max_message_size,
            counters=counters,
        )

    @property
    def max_message_size(self) -> int:
        """The largest decompressed message."""
        return self._max_message_size

    @property
    def holds_context(self) -> bool:
        """Whether a decompressor is kept between messages now."""
        return self._decompressor is not None

    def feed(self, data: bytes) -> bytes:
        """Decompress the next piece of the current message.

        Raises:
            InflateError: over the limit (1009) or not deflate data (1002).
        """
        decompressor = self._decompressor
        if decompressor is None:
            decompressor = self._decompressor = zlib.decompressobj(-self._window_bits)
        self._received += len(data)
        return self._inflate(decompressor, data)

    def finish(self) -> bytes:
        """End the current message: the last of its output.

        Raises:
            InflateError: over the limit (1009) or not deflate data (1002).
        """
        decompressor = self._decompressor
        if decompressor is None:
            decompressor = self._decompressor = zlib.decompressobj(-self._window_bits)
        try:
            out = self._inflate(decompressor, _TAIL)
        finally:
            produced = self._max_message_size - self._remaining
            received = self._received
            self._remaining = self._max_message_size
            self._received = 0
            if self._no_context_takeover or decompressor.eof:
                # A final block (BFINAL) ends the stream: the next message
                # starts a new one.
                self._decompressor = None
        counters = self._counters
        if counters is not None:
            counters.inbound_messages += 1
            counters.inbound_bytes_before += received
            counters.inbound_bytes_after += produced
        return out

    def _inflate(self, decompressor: zlib._Decompress, data: bytes) -> bytes:
        if decompressor.eof:
            return b""  # after a final block: nothing more belongs to the message
        try:
            # One byte over the budget is enough to know it is exceeded.
            out = decompressor.decompress(data, self._remaining + 1)
        except zlib.error as exc:
            self._fail()
            raise InflateError(_PROTOCOL_ERROR, f"invalid compressed data: {exc}") from None
        self._remaining -= len(out)
        if self._remaining < 0:
            self._fail()
            raise InflateError(
                CloseCode.MESSAGE_TOO_BIG,
                f"message decompresses to more than {self._max_message_size} bytes",
            )
        return out

    def _fail(self) -> None:
        # The connection is closing; drop the state at once.
        self._decompressor = None
        self._remaining = self._max_message_size
        self._received = 0


@final
class DeflateExtension(WsExtension):
    """permessage-deflate for the served connection's engine (websockets' sans-I/O).

    Inbound, it inflates each compressed message through an :class:`Inflater`
    bounded by the limit the engine passes (what is left of
    ``max_message_size`` for the message): over it, the engine closes with
    1009; invalid deflate data, a compressed continuation frame or a compressed
    control frame close with 1002. Outbound, the hub's message frames never pass
    through the engine (they are :meth:`DeflateParameters.frame`); anything
    else that does is compressed on its own, as ``server_no_context_takeover``
    promises.

    websockets' own :class:`~websockets.extensions.permessage_deflate.PerMessageDeflate`
    bounds its output too (``decompress(data, max_length)``); this one adds
    the hub's statistics, the exact limit, and the shared compressor.

    Args:
        parameters: What the handshake agreed.
        max_message_size: The largest decompressed inbound message.
        counters: Where to count inbound bytes, if anywhere.
    """

    name = WsExtensionName(EXTENSION_NAME)

    def __init__(
        self,
        parameters: DeflateParameters,
        max_message_size: int,
        counters: CompressionCounters | None = None,
    ) -> None:
        self.parameters = parameters
        self._inflater = Inflater.for_parameters(parameters, max_message_size, counters)
        # Whether the continuation frames of the current message are compressed.
        self._inflating = False
        self._fragment_compressor: zlib._Compress | None = None

    def decode(self, frame: WsFrame, *, max_size: int | None = None) -> WsFrame:
        """Inflate a compressed message's frame (see the class)."""
        opcode = frame.opcode
        if opcode in WS_CTRL_OPCODES:
            return frame  # RSV1 stays set, and the engine's check() refuses it
        if opcode is WsOpcode.CONT:
            if not self._inflating:
                return frame
            if frame.rsv1:
                raise WsProtocolError("RSV1 set on a continuation frame")
        elif not frame.rsv1:
            return frame
        self._inflating = not frame.fin
        inflater = self._inflater
        try:
            data = inflater.feed(bytes(frame.data))
            if frame.fin:
                data += inflater.finish()
        except InflateError as exc:
            self._inflating = False
            if exc.code == CloseCode.MESSAGE_TOO_BIG:
                raise WsPayloadTooBig(None, max_size or inflater.max_message_size) from None
            raise WsProtocolError(exc.reason) from None
        return dataclasses.replace(frame, data=data, rsv1=False)

    def encode(self, frame: WsFrame) -> WsFrame:
        """Compress a data frame sent through the engine (not the hub's fast path)."""
        opcode = frame.opcode
        if opcode in WS_CTRL_OPCODES:
            return frame
        if opcode is not WsOpcode.CONT and frame.fin:
            data = _deflater.compress(bytes(frame.data))
            return dataclasses.replace(frame, data=data, rsv1=True)
        # A fragmented message: a compressor of its own for the message's life.
        if opcode is not WsOpcode.CONT:
            self._fragment_compressor = zlib.compressobj(
                COMPRESSION_LEVEL, zlib.DEFLATED, -_MAX_WINDOW_BITS, _MEM_LEVEL
            )
        compressor = self._fragment_compressor
        if compressor is None:
            return frame  # a continuation without a start: the engine refuses it
        data = compressor.compress(bytes(frame.data)) + compressor.flush(zlib.Z_SYNC_FLUSH)
        if frame.fin:
            self._fragment_compressor = None
            data = data[:-4]
        return dataclasses.replace(frame, data=data, rsv1=opcode is not WsOpcode.CONT)

    def __repr__(self) -> str:
        return f"<DeflateExtension {self.parameters.response()!r}>"
