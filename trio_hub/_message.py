"""The ``{"type", "payload"}`` message envelope."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Final, TypeAlias, final

from . import _codec
from ._errors import InvalidEnvelopeError, MessageEncodeError

if TYPE_CHECKING:
    from typing import Self

__all__ = ["JSONValue", "Message"]

JSONValue: TypeAlias = (
    "bool | int | float | str | Sequence[JSONValue] | Mapping[str, JSONValue] | None"
)
"""Any value that JSON can represent.

Sequences and mappings are accepted read-only (covariantly), so that a
``list[dict[str, int]]`` is a valid payload for the type checker too.
"""

_ENVELOPE_FIELDS: Final = frozenset({"type", "payload"})


@final
class Message:
    """An immutable ``{"type": str, "payload": <JSON>}`` envelope.

    The message is encoded to JSON once, when it is created; every client that it
    reaches gets the same bytes. Creating a message from a payload that JSON cannot
    represent raises :class:`MessageEncodeError` at once, so an error never
    surfaces later in the middle of a broadcast, and nothing is ever turned into
    ``null``.

    Args:
        type: The message type, a non-empty string.
        payload: Any JSON value: ``None``, ``bool``, ``int``, finite ``float``,
            ``str``, or lists, tuples and dicts (with ``str`` keys) of these.

    Raises:
        MessageEncodeError: if ``type`` is not a non-empty ``str``, or if
            ``payload`` holds a value JSON cannot represent (a ``set``, an
            arbitrary object, a non-``str`` key, NaN or an infinity).

    Example::

        >>> from trio_hub import Message
        >>> message = Message("chat", {"text": "hi"})
        >>> message.encode()
        b'{"type":"chat","payload":{"text":"hi"}}'
        >>> Message.decode(message.encode()) == message
        True
    """

    __slots__ = (
        "_data",
        "_deflate_frame",
        "_deflate_plain_size",
        "_frame",
        "_payload",
        "_text",
        "_type",
    )

    _type: str
    _payload: JSONValue
    _data: bytes | None
    _text: str | None
    # The WebSocket frame (header + data) that the fast write path sends. Built
    # at most once per message, however many clients it reaches.
    _frame: bytes | None
    # The frame for clients that negotiated permessage-deflate (see
    # _compression.deflate_frame): compressed, or ``_frame`` itself when the
    # message is too small to gain. Built at most once, like ``_frame``.
    _deflate_frame: bytes | None
    # With a compressed _deflate_frame: the size of the plain frame, for the
    # per-delivery statistics; 0 otherwise.
    _deflate_plain_size: int

    def __init__(self, type: str, payload: JSONValue = None) -> None:
        if not isinstance(type, str) or not type:
            raise MessageEncodeError(f"message type must be a non-empty str, got {type!r}")
        self._type = type
        self._payload = payload
        self._text = None
        self._frame = None
        self._deflate_frame = None
        self._deflate_plain_size = 0
        self._data = _codec.encode({"type": type, "payload": payload})

    @classmethod
    def _trusted(cls, type: str, payload: JSONValue, data: bytes | None) -> Self:
        # For payloads that came out of a JSON decoder (known to be valid JSON) or
        # for pre-encoded bytes built by trio_hub itself: skip validation, and
        # encode lazily if ``data`` is None.
        message = cls.__new__(cls)
        message._type = type
        message._payload = payload
        message._data = data
        message._text = None
        message._frame = None
        message._deflate_frame = None
        message._deflate_plain_size = 0
        return message

    @property
    def type(self) -> str:
        """The message type."""
        return self._type

    @property
    def payload(self) -> JSONValue:
        """The payload, as given (or as decoded)."""
        return self._payload

    def encode(self) -> bytes:
        """Return the message as compact UTF-8 JSON bytes.

        The result is computed once and cached.
        """
        data = self._data
        if data is None:
            data = self._data = _codec.encode({"type": self._type, "payload": self._payload})
        return data

    @property
    def text(self) -> str:
        """The encoded message as ``str``, for text frames (cached)."""
        text = self._text
        if text is None:
            text = self._text = self.encode().decode("utf-8")
        return text

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview | str) -> Message:
        """Decode one envelope from JSON bytes or text.

        Decoding is strict: the input must be one JSON object with a non-empty
        string ``type``, an optional ``payload`` (``null`` when absent), and no
        other field. Unknown fields are rejected rather than ignored, so that a
        misspelt ``"paylod"`` is reported to the sender instead of silently
        becoming a ``null`` payload.

        Args:
            data: UTF-8 JSON bytes, or a ``str``.

        Returns:
            The decoded message.

        Raises:
            InvalidJSONError: if ``data`` is not valid JSON or not valid UTF-8.
            InvalidEnvelopeError: if the JSON is not an object, has a missing,
                empty or non-string ``type``, or has fields other than ``type``
                and ``payload``.
        """
        obj = _codec.decode(data)
        if not isinstance(obj, dict):
            raise InvalidEnvelopeError(f"a message must be a JSON object, got {_json_kind(obj)}")
        extra = obj.keys() - _ENVELOPE_FIELDS
        if extra:
            raise InvalidEnvelopeError(
                f"unknown envelope field(s) {sorted(extra)!r}: "
                "only 'type' and 'payload' are allowed"
            )
        if "type" not in obj:
            raise InvalidEnvelopeError("a message needs a 'type' field")
        message_type = obj["type"]
        if not isinstance(message_type, str):
            raise InvalidEnvelopeError(
                f"the 'type' field must be a string, got {_json_kind(message_type)}"
            )
        if not message_type:
            raise InvalidEnvelopeError("the 'type' field must not be empty")
        # The input may hold whitespace or escapes: re-encode lazily, if ever.
        return cls._trusted(message_type, obj.get("payload"), None)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return self._type == other._type and self._payload == other._payload

    __hash__ = None  # type: ignore[assignment]  # payloads may be unhashable

    def __repr__(self) -> str:
        return f"Message({self._type!r}, {self._payload!r})"


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
