"""The interface between a hub and the engine that links several hub processes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, final, runtime_checkable

import trio

from .._errors import HubError

__all__ = [
    "Backend",
    "BackendSink",
    "BackendStatistics",
    "BackendUnavailableError",
    "MemoryBackend",
]


class BackendUnavailableError(HubError):
    """The backend could not be reached when the hub opened.

    :func:`~trio_hub.open_hub` raises it, within the backend's start timeout,
    instead of hanging.
    """


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendStatistics:
    """A snapshot of a backend's state, part of :class:`~trio_hub.HubStatistics`.

    Attributes:
        name: The backend's kind, such as ``"memory"`` or ``"redis"``.
        state: ``"connected"``, ``"disconnected"`` (an outage: local delivery
            goes on) or ``"local"`` (no other process involved).
        published: Publications handed to the backend by this node.
        publish_failures: Publications that never reached the backend (during
            an outage, or dropped because its bounded outbox was full).
        received: Publications from other nodes delivered to local clients.
        outages: How many times the connection was lost.
        subscriptions: Backend channels this node is subscribed to now.
    """

    name: str
    state: str
    published: int = 0
    publish_failures: int = 0
    received: int = 0
    outages: int = 0
    subscriptions: int = 0


@runtime_checkable
class BackendSink(Protocol):
    """What a backend calls to deliver other nodes' publications locally (the hub)."""

    def deliver(self, topic: str | None, data: bytes) -> None:
        """Deliver one encoded message from another node to the local clients.

        Args:
            topic: The topic, or ``None`` for a broadcast.
            data: The message as encoded by :meth:`trio_hub.Message.encode`.
        """
        ...


@runtime_checkable
class Backend(Protocol):
    """A channel between hub processes.

    The hub delivers its own publications to its local clients itself, at once,
    and hands each one to the backend exactly once (encoded once). The backend
    carries it to the other nodes, in the order the hub handed it over, and
    calls :meth:`BackendSink.deliver` with what other nodes published. It must
    never echo a node's own publications back to it.

    Every method but :meth:`run` is synchronous and must never block.
    """

    async def run(
        self, sink: BackendSink, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Connect, then carry messages until cancelled.

        Started by the hub with ``nursery.start``: call ``task_status.started()``
        once connected. Raise :class:`BackendUnavailableError` if the first
        connection cannot be made within the backend's start timeout. After
        that, outages must be handled inside (retry, log once, count), never
        raised.
        """
        ...

    def publish(self, topic: str | None, data: bytes) -> None:
        """Send an encoded message to the other nodes (``topic=None``: broadcast)."""
        ...

    def subscribe(self, topic: str) -> None:
        """Start receiving ``topic``: its first local subscriber arrived."""
        ...

    def unsubscribe(self, topic: str) -> None:
        """Stop receiving ``topic``: its last local subscriber left."""
        ...

    def statistics(self) -> BackendStatistics:
        """Return a snapshot of the backend's state and counters."""
        ...


@final
class MemoryBackend:
    """The default backend: a single process, nothing to share, nothing to do."""

    __slots__ = ()

    async def run(
        self, sink: BackendSink, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """See :meth:`Backend.run`; returns once started, holding no task."""
        task_status.started()

    def publish(self, topic: str | None, data: bytes) -> None:
        """See :meth:`Backend.publish`; there is no other node."""

    def subscribe(self, topic: str) -> None:
        """See :meth:`Backend.subscribe`."""

    def unsubscribe(self, topic: str) -> None:
        """See :meth:`Backend.unsubscribe`."""

    def statistics(self) -> BackendStatistics:
        """See :meth:`Backend.statistics`."""
        return BackendStatistics(name="memory", state="local")
