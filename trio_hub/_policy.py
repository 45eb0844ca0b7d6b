"""What happens when a client's queue is full."""

from __future__ import annotations

import enum

__all__ = ["SlowClientPolicy"]


class SlowClientPolicy(enum.Enum):
    """The policy that applies when a message meets a full client queue.

    Whichever policy applies, :meth:`Hub.broadcast` never waits, and every drop
    and eviction is counted in :meth:`Hub.statistics`.
    """

    EVICT = "evict"
    """Close the client with code 4000 (:attr:`CloseCode.SLOW_CLIENT`) and
    discard its queue. The client holds a prefix of the messages meant for it.
    The default: a client that cannot keep up is told so, and reconnects."""

    DROP_NEWEST = "drop-newest"
    """Keep the queue and drop the new message. The client holds an ordered
    subsequence, missing the latest messages of each burst."""

    DROP_OLDEST = "drop-oldest"
    """Drop the oldest queued message that has not started being written, and
    queue the new one. The client holds an ordered subsequence that favours fresh
    data (good for tickers and presence). If every queued message is already
    being written, the new message is dropped instead."""
