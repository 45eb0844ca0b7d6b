"""Frozen snapshots of a hub's and a client's counters."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import final

from .backends._base import BackendStatistics

__all__ = ["ClientStatistics", "CompressionStatistics", "HubStatistics"]


@dataclass(frozen=True, slots=True, kw_only=True)
class HubStatistics:
    """A snapshot of a hub's state and counters, from :meth:`Hub.statistics`.

    Every counter counts since the hub opened. For every client,
    ``messages meant for it = delivered + dropped + discarded + still queued``,
    so these totals always add up.

    Attributes:
        clients: Clients registered now.
        clients_per_topic: For each topic with at least one subscriber, how many.
        messages_broadcast: Calls to :meth:`Hub.broadcast`.
        messages_published: Calls to :meth:`Hub.publish`.
        messages_sent: Messages sent to one client with :meth:`Client.send`.
        messages_received: Broadcasts and publications from other nodes,
            delivered to local clients (see :mod:`trio_hub.backends`).
        deliveries: Messages written to a client's transport.
        queued: Messages accepted for a client and not yet written, now.
        queued_bytes: The encoded size of those messages, now.
        unsent_bytes: Bytes that the served connections' streams took from a
            broadcast and their sockets have not taken yet, now (at most one
            flush of 64 KiB plus one frame per connection; see
            :ref:`memory-bound`). Not part of ``queued_bytes``.
        peak_queued_bytes: The most that ``queued_bytes + unsent_bytes`` has
            been: the most memory the hub has held for writing at once.
        intake_paused: Whether intake is paused now: the backlog is over
            ``intake_limit`` (see :ref:`overload`).
        intake_pauses: How many times intake has paused.
        drops: Messages a drop policy discarded because a queue was full.
        evictions: Clients closed for being slow (full queue or write timeout).
        keepalive_timeouts: Clients closed for not answering a ping.
        discarded: Messages meant for a client that left (it disconnected,
            was evicted or removed) and never confirmed written: those still
            queued, and under EVICT the message that found the queue full.
        errors: Clients ended by an exception in a handler or a transport.
        registrations: Clients registered since the hub opened.
        backend: The backend's state and counters.
        history_sizes: For each topic whose history this process keeps (the
            memory history), how many publications it holds now; empty with a
            shared history (Redis), which keeps its own.
        recoveries: Recoveries (:meth:`Client.recover` with a position) that
            replayed everything missed (``recovered=True``).
        recovery_failures: Recoveries that could not (``recovered=False``:
            wrong epoch, trimmed, expired): nothing was replayed.
        history_errors: History requests that failed because the shared
            history was unreachable (:class:`HistoryUnavailableError`).
        history_local_only: Publications on a topic with history that reached
            this node's clients only, without an offset, because the shared
            history was unreachable (the topic's epoch then changes).
        history_gaps: Times this node found that it had missed numbered
            publications from the backend (an offset that skips, or a new
            epoch), and closed the topic's clients with 4003 so that they
            recover.

        presence_entries: This node's presence entries now (one per connection
            and topic); 0 unless the hub tracks presence.
        presence_joins: Entries this node has added (subscriptions begun).
        presence_leaves: Entries this node has removed (subscriptions ended).
        presence_expirations: Other nodes' entries that this node saw expire
            because their node stopped answering (see :doc:`/howto/presence`).
        compression: permessage-deflate's counters (all zero while no client
            negotiated it).

    .. versionchanged:: 0.2
       The ``history_*``, ``recover*``, ``presence_*``, ``compression``,
       ``intake_*``, ``unsent_bytes`` and ``peak_queued_bytes`` fields.
    """

    clients: int
    clients_per_topic: Mapping[str, int]
    messages_broadcast: int
    messages_published: int
    messages_sent: int
    messages_received: int
    deliveries: int
    queued: int
    queued_bytes: int
    unsent_bytes: int
    peak_queued_bytes: int
    intake_paused: bool
    intake_pauses: int
    drops: int
    evictions: int
    keepalive_timeouts: int
    discarded: int
    errors: int
    registrations: int
    backend: BackendStatistics
    history_sizes: Mapping[str, int]
    recoveries: int
    recovery_failures: int
    history_errors: int
    history_local_only: int
    history_gaps: int
    compression: CompressionStatistics
    presence_entries: int = 0
    presence_joins: int = 0
    presence_leaves: int = 0
    presence_expirations: int = 0


@final
@dataclass(frozen=True, slots=True, kw_only=True)
class CompressionStatistics:
    """Counters of permessage-deflate, in :attr:`HubStatistics.compression`.

    Outbound sizes are whole frames (header included), as they go on the wire;
    inbound ones are payloads, compressed and inflated.
    Outbound messages are counted once each, when their compressed frame is
    built (however many clients it then reaches); deliveries are counted per
    client, when a compressed frame is handed to the connection.

    Attributes:
        messages_compressed: Messages whose compressed frame was built.
        messages_uncompressed: Messages sent to compressing clients as plain
            frames: under the size threshold (128 bytes), or not smaller
            compressed (each counted once).
        bytes_before: Plain frame sizes of the compressed messages.
        bytes_after: Their compressed frame sizes.
        deliveries_compressed: Compressed frames handed to connections.
        delivered_bytes_before: What those deliveries would have been as
            plain frames.
        delivered_bytes_after: What they were.
        inbound_messages: Compressed messages received from clients.
        inbound_bytes_before: Their compressed payload sizes.
        inbound_bytes_after: Their decompressed sizes.

    .. versionadded:: 0.2
    """

    messages_compressed: int = 0
    messages_uncompressed: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    deliveries_compressed: int = 0
    delivered_bytes_before: int = 0
    delivered_bytes_after: int = 0
    inbound_messages: int = 0
    inbound_bytes_before: int = 0
    inbound_bytes_after: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientStatistics:
    """A snapshot of one client's counters, from :meth:`Client.statistics`.

    Attributes:
        queued: Messages accepted and not yet written.
        queued_bytes: Their encoded size.
        delivered: Messages written to the transport.
        dropped: Messages a drop policy discarded for this client.
        discarded: Messages still queued when the client left.
        topics: The topics the client is subscribed to.
    """

    queued: int
    queued_bytes: int
    delivered: int
    dropped: int
    discarded: int
    topics: frozenset[str]
