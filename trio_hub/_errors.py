"""The exception tree of trio_hub.

Errors are few and exact. :class:`HubClosedError` means *you* (or your app) closed
the hub; :class:`TransportClosed` means the peer or the network ended a connection.
"""

from __future__ import annotations

__all__ = [
    "HubClosedError",
    "HubError",
    "InvalidEnvelopeError",
    "InvalidJSONError",
    "MessageDecodeError",
    "MessageEncodeError",
    "MessageError",
    "TransportClosed",
]


class HubError(Exception):
    """Base class of every error that trio_hub raises on purpose."""


class HubClosedError(HubError):
    """The hub is closing or closed, so it takes no new clients.

    Raised by :meth:`Hub.register` and :meth:`Hub.serve_client` once
    :meth:`Hub.aclose` has started. It never deadlocks: the check is synchronous.
    """


class MessageError(HubError, ValueError):
    """Base class of errors about the ``{"type", "payload"}`` envelope."""


class MessageEncodeError(MessageError):
    """A :class:`Message` could not be built because its payload is not JSON.

    The cause is chained in ``__cause__`` where one exists. trio_hub never turns an
    unserializable value into ``null``: NaN, infinities, non-string keys, sets and
    arbitrary objects all raise this error.
    """


class MessageDecodeError(MessageError):
    """Bytes or text could not be decoded into a :class:`Message`.

    Attributes:
        code: A short machine-readable reason, also used in the ``error`` reply
            that the hub sends to a client: ``"invalid_json"`` or
            ``"invalid_envelope"``.
    """

    code: str = "invalid_envelope"


class InvalidJSONError(MessageDecodeError):
    """The input is not valid JSON (or not valid UTF-8)."""

    code = "invalid_json"


class InvalidEnvelopeError(MessageDecodeError):
    """The input is JSON, but not a valid envelope.

    That is: not an object, a missing or non-string or empty ``type``, or fields
    other than ``type`` and ``payload``.
    """

    code = "invalid_envelope"


class TransportClosed(HubError):
    """The peer or the network closed a client's connection.

    Transports raise it from :meth:`Transport.receive`, :meth:`Transport.send_batch`
    and :meth:`Transport.ping` once the connection is gone.

    Attributes:
        code: The WebSocket close code, or ``None`` when the connection ended
            without a close frame (reported as 1006 by WebSocket libraries).
        reason: The close reason sent by the peer, or ``""``.
    """

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        return f"connection closed (code={self.code}, reason={self.reason!r})"
