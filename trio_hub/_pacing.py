"""Overload: the intake gate that slows publishers while the hub's backlog is high.

A broadcast never waits (guarantee 3), so when the sockets cannot take what
the hub fans out, deliveries pile up in the clients' queues. Left alone, the
publishers go on at full speed (their own replies go out at once), and the
backlog, the lateness and the memory grow with the load. The gate turns that
into backpressure one step earlier, on the intake: while the hub-wide backlog
is above ``intake_limit`` it is *closed*, and the served clients' next inbound
message waits before it is handled; the connection is not read meanwhile, so
TCP pushes back on the publishers. It opens again once the backlog is at or
below half the limit (the gap keeps it from flapping on every write).
Application publishers wait on the same gate with :meth:`Hub.wait_intake_open`.

What counts: each client's queued deliveries, but at most
``CONTRIBUTION_CAP`` of them per client, plus one for each served connection
whose socket refused part of what its stream took (the unsent remainder that
:class:`~trio_hub._stream.HubStream` holds until its flush is written: on a
served connection, the first sign that a client fell behind). So the gate
closes only when many clients fall behind together (the hub as a whole is
overloaded), never for one client that is slow on its own: that client fills
its own queue and meets the slow-client policy, as before. The bytes count in
full, in ``peak_queued_bytes``: the memory the hub holds for writing.
"""

from __future__ import annotations

from typing import Final, final

import trio

__all__ = ["CONTRIBUTION_CAP", "IntakeGate"]

# The most queued deliveries of one client that count towards the gate. A few:
# enough that a fan-out the sockets do not take at once shows, few enough that
# the gate never waits for a single slow client.
CONTRIBUTION_CAP: Final = 4


@final
class IntakeGate:
    """Tracks the hub-wide backlog and holds intake while it is above the limit.

    Args:
        limit: Counted deliveries above which the gate closes, or ``None``
            for a gate that never closes.
    """

    __slots__ = (
        "_closed",
        "_count",
        "_limit",
        "_open",
        "_pauses",
        "_peak_count",
        "_peak_queued_bytes",
        "_queued_bytes",
        "_resume_at",
        "_unsent_bytes",
    )

    def __init__(self, limit: int | None) -> None:
        self._limit = limit
        self._resume_at = -1 if limit is None else limit // 2
        # Counted deliveries: the sum over clients of min(queued, cap).
        self._count = 0
        self._peak_count = 0
        # Every queued byte, whatever the cap: the memory the queues hold.
        self._queued_bytes = 0
        self._peak_queued_bytes = 0
        # Of those, what the served connections' streams hold unsent.
        self._unsent_bytes = 0
        self._closed = False
        # Set while the gate is open; replaced each time it closes.
        self._open = trio.Event()
        self._open.set()
        self._pauses = 0

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def limit(self) -> int | None:
        return self._limit

    def moved(self, old: int, new: int, size_delta: int) -> None:
        """A client's queue went from ``old`` to ``new`` messages (``size_delta`` bytes)."""
        queued_bytes = self._queued_bytes + size_delta
        self._queued_bytes = queued_bytes
        if queued_bytes > self._peak_queued_bytes:
            self._peak_queued_bytes = queued_bytes
        cap = CONTRIBUTION_CAP
        delta = (new if new < cap else cap) - (old if old < cap else cap)
        if not delta:
            return
        count = self._count + delta
        self._count = count
        if delta > 0:
            if count > self._peak_count:
                self._peak_count = count
            limit = self._limit
            if limit is not None and count > limit and not self._closed:
                self._closed = True
                self._pauses += 1
                self._open = trio.Event()
        elif self._closed and count <= self._resume_at:
            self.reopen()

    def stream_moved(self, old: int, new: int) -> None:
        """A stream's unsent bytes went from ``old`` to ``new``; it counts once while any."""
        self._unsent_bytes += new - old
        self.moved(1 if old else 0, 1 if new else 0, new - old)

    def reopen(self) -> None:
        """Open the gate now (the backlog went down, or the hub is closing)."""
        self._closed = False
        self._open.set()

    def disable(self) -> None:
        """Open the gate for good: the hub is closing, and takes nothing in."""
        self._limit = None
        self.reopen()

    async def wait_open(self) -> None:
        """Return once the gate is open; a checkpoint either way."""
        if self._closed:
            await self._open.wait()
        else:
            await trio.lowlevel.checkpoint()
