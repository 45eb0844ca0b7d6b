"""The WebSocket close codes that trio_hub sends, one reason per code."""

from __future__ import annotations

import enum

__all__ = ["CloseCode"]


class CloseCode(enum.IntEnum):
    """Close codes used by trio_hub.

    The 1xxx codes are the standard ones from RFC 6455. The 4xxx codes are
    private to trio_hub (the range RFC 6455 leaves to applications), so that a
    client can tell "I was too slow" from "I stopped answering pings", from "my
    token expired", and from "reconnect and recover".
    """

    NORMAL = 1000
    """The application removed the client, or the client left normally."""
    GOING_AWAY = 1001
    """The hub is shutting down."""
    PROTOCOL_ERROR = 1002
    """The client broke RFC 6455 (a malformed or forbidden frame)."""
    UNSUPPORTED_DATA = 1003
    """The client sent a binary frame; the hub speaks JSON text frames only."""
    ABNORMAL = 1006
    """Never sent; reported when a connection ended without a close frame."""
    INVALID_PAYLOAD = 1007
    """The client sent a text frame that is not valid UTF-8."""
    POLICY_VIOLATION = 1008
    """The client broke a policy of the server."""
    MESSAGE_TOO_BIG = 1009
    """The client sent a message over the size limit."""
    INTERNAL_ERROR = 1011
    """The application's handler raised, or trio_hub hit a bug, for this client."""
    SLOW_CLIENT = 4000
    """Evicted, because the client's queue was full or a write exceeded ``write_timeout``."""
    KEEPALIVE_TIMEOUT = 4001
    """The client did not answer a ping within ``pong_timeout``."""
    TOKEN_EXPIRED = 4002
    """The client's connection token expired, and no fresh one came in a ``refresh``.

    .. versionadded:: 0.2
    """
    HISTORY_GAP = 4003
    """Publications on a topic with a shared history never reached this node (a
    Redis outage, or Redis lost the history): reconnect, and subscribe with
    ``recover``; the recovery says whether the gap could be filled.

    .. versionadded:: 0.2
    """
