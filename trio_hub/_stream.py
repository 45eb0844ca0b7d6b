"""The write side of a served connection: the fast write path and write coalescing.

Every byte that goes to a served client's socket passes through
:class:`HubStream`: the engine's pongs and close frames, the keepalive pings
(through :meth:`HubStream.send_all`) as well as the hub's own message frames.
That one place knows whether a write is in progress, so that
:meth:`HubStream.write_nowait` can write straight from ``broadcast()`` when the
socket is idle, and fall back to the client's queue when it is not. Reading is
the connection's business (:mod:`trio_hub._connection`).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from typing import Final, final

import trio

from ._message import Message
from ._pacing import IntakeGate

__all__ = ["HubStream", "WriteCoalescer", "text_frame"]

_FIN_TEXT: Final = 0x81
_FIN_CLOSE: Final = 0x88

# Frames written from broadcast() wait for the end of the scheduler batch to be
# joined into one send(), unless this many bytes pile up first.
_MAX_COALESCED_BYTES: Final = 64 * 1024


def text_frame(message: Message) -> bytes:
    """The complete server-to-client WebSocket text frame for ``message``.

    Server frames are not masked and trio_hub negotiates no extension, so the
    frame is the same for every client: it is built once per message and cached.
    (An extension that transforms frames, such as permessage-deflate, would build
    its own variant here, once per message and per negotiated setting.)
    """
    frame = message._frame
    if frame is None:
        data = message.encode()
        length = len(data)
        if length < 126:
            header = struct.pack("!BB", _FIN_TEXT, length)
        elif length < 65536:
            header = struct.pack("!BBH", _FIN_TEXT, 126, length)
        else:
            header = struct.pack("!BBQ", _FIN_TEXT, 127, length)
        frame = message._frame = header + data
    return frame


@final
class WriteCoalescer:
    """Joins the frames written to each connection in one scheduler batch into one send().

    Broadcasts often come several at a time (a burst from one publisher, or
    messages from several clients read in the same batch). A frame written
    straight from ``broadcast()`` is appended to its connection's batch, and
    this task, which runs once everything runnable now has run, sends each
    batch with one non-blocking ``send()``: fewer system calls, never merged
    messages. Run :meth:`run` as a task for as long as the connections live.
    """

    __slots__ = ("_dirty", "_wakeup")

    def __init__(self) -> None:
        self._dirty: list[HubStream] = []
        self._wakeup = trio.Event()

    def _mark(self, stream: HubStream) -> None:
        if not self._dirty:
            self._wakeup.set()
        self._dirty.append(stream)

    async def run(self) -> None:
        """Flush the streams with batched frames, each time some are waiting."""
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            dirty, self._dirty = self._dirty, []
            for stream in dirty:
                stream._flush_batch_nowait()


@final
class HubStream:
    """A :class:`trio.SocketStream` wrapper that owns every write to the socket.

    Args:
        inner: The accepted TCP stream.
        nursery: Where to flush, in a short-lived task, what :meth:`write_nowait`
            could not write at once.
        coalescer: If given, frames from :meth:`write_nowait` are joined per
            scheduler batch by this :class:`WriteCoalescer`; otherwise each is
            written at once.
        gate: If given, the hub's :class:`~trio_hub._pacing.IntakeGate`: the
            bytes that :meth:`write_nowait` took and the socket did not (the
            served connection's share of the hub-wide backlog) count there,
            until they are written.
    """

    __slots__ = (
        "_batch",
        "_batch_bytes",
        "_broken",
        "_close_frame_sent",
        "_closed",
        "_coalescer",
        "_eof_sent",
        "_fd",
        "_gate",
        "_held",
        "_inner",
        "_lock",
        "_nursery",
        "_pending",
    )

    def __init__(
        self,
        inner: trio.SocketStream,
        nursery: trio.Nursery | None = None,
        coalescer: WriteCoalescer | None = None,
        gate: IntakeGate | None = None,
    ) -> None:
        self._inner = inner
        self._gate = gate
        # The unsent bytes counted in the gate now (see _account()).
        self._held = 0
        self._nursery = nursery
        self._coalescer = coalescer
        # Frames taken by write_nowait() that wait for the coalescer; they go
        # out before anything else, as one send().
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self._fd = inner.socket.fileno()
        # Held by a write that may block; made when one starts, dropped when
        # the last one ends, so that an idle connection holds no lock.
        self._lock: trio.StrictFIFOLock | None = None
        # Bytes that write_nowait() accepted but the socket did not take: they
        # go out before anything else.
        self._pending = b""
        self._closed = False
        # Set if a write was interrupted mid-frame: nothing may follow it.
        self._broken = False
        # Set once a close frame is on its way: no message frame may follow it.
        self._close_frame_sent = False
        # Set once we half-closed: nothing at all may follow.
        self._eof_sent = False

    @property
    def closing(self) -> bool:
        """Whether a close frame has been written (or the stream is gone)."""
        return self._close_frame_sent or self._closed or self._broken

    # ----------------------------------------------------------- writing

    def write_nowait(self, data: bytes) -> bool:
        """Take ``data`` for writing now if nothing else is being written; never blocks.

        Returns:
            ``True`` if the stream took all of ``data``: it is written, or kept
            (coalesced, or what the socket did not accept) and certain to be
            written before anything else. ``False`` if it took nothing.
        """
        if (
            self._pending
            or self._closed
            or self._broken
            or self._close_frame_sent
            or self._lock is not None
        ):
            return False
        coalescer = self._coalescer
        if coalescer is None:
            return self._write_now(data, taken_if_blocked=False)
        batch = self._batch
        batch.append(data)
        self._batch_bytes += len(data)
        if len(batch) == 1:
            coalescer._mark(self)
        if self._batch_bytes >= _MAX_COALESCED_BYTES:
            self._flush_batch_nowait()
        return True

    def _flush_batch_nowait(self) -> None:
        batch = self._batch
        if not batch:
            return
        data = batch[0] if len(batch) == 1 else b"".join(batch)
        batch.clear()
        self._batch_bytes = 0
        if self._closed or self._broken:
            return  # the connection is gone; its client is leaving
        if self._pending or self._lock is not None:
            # Not expected (a writer takes the batch first), but keep the order.
            self._pending += data
            self._account(len(self._pending))
            self._start_flush()
            return
        self._write_now(data, taken_if_blocked=True)

    def _write_now(self, data: bytes, *, taken_if_blocked: bool) -> bool:
        try:
            written = os.write(self._fd, data)
        except BlockingIOError:
            if not taken_if_blocked:
                return False  # nothing taken: the queued path will wait
            written = 0
        except OSError:
            # Broken: the reader sees the connection end and the client leaves.
            # Data already taken is lost with the connection; data offered now
            # is refused, so the queued path reports the error.
            self._broken = True
            return taken_if_blocked
        if written < len(data):
            self._pending = data[written:]
            self._account(len(self._pending))
            self._start_flush()
        return True

    def _account(self, held: int) -> None:
        # The gate counts what was taken and not written, from the moment the
        # socket refused it until the write that takes it ends (a flush
        # blocked in send() still holds it).
        gate = self._gate
        old = self._held
        if gate is not None and held != old:
            self._held = held
            gate.stream_moved(old, held)

    def _start_flush(self) -> None:
        if self._nursery is not None:
            # A task only while there is a remainder to flush: an idle
            # connection costs no task for this.
            self._nursery.start_soon(self._flush_pending)

    async def send_all(self, data: bytes) -> None:
        """Write a control frame (ping, pong, close) after anything pending.

        After a close frame, message frames are refused (:meth:`write_frames`,
        :meth:`write_nowait`); after :meth:`send_eof`, everything is dropped
        quietly: a pong that the engine queues while we close has nowhere to go.
        """
        if data[:1] == bytes([_FIN_CLOSE]):
            # Before the write: from now on no message frame may be taken.
            self._close_frame_sent = True
        lock = self._take_lock()
        try:
            async with lock:
                if self._eof_sent or self._closed:
                    return
                await self._send_locked(data)
        finally:
            self._drop_lock(lock)

    async def write_frames(self, data: bytes) -> None:
        """Write message frames, unless a close frame has gone out already.

        Raises:
            trio.ClosedResourceError: if the WebSocket is closing.
        """
        lock = self._take_lock()
        try:
            async with lock:
                if self._close_frame_sent or self._eof_sent:
                    raise trio.ClosedResourceError("the WebSocket is closing")
                await self._send_locked(data)
        finally:
            self._drop_lock(lock)

    async def send_eof(self) -> None:
        """Half-close: flush what was taken, then shut the socket's sending side.

        Idempotent. The peer then reads everything written, and EOF after it,
        while we can still read (and discard) what it sends.
        """
        lock = self._take_lock()
        try:
            async with lock:
                if self._eof_sent or self._closed or self._broken:
                    return
                if self._batch or self._pending:
                    await self._send_locked(b"")
                self._eof_sent = True
                try:
                    self._inner.socket.shutdown(socket.SHUT_WR)
                except OSError:
                    self._broken = True
        finally:
            self._drop_lock(lock)

    def _take_lock(self) -> trio.StrictFIFOLock:
        lock = self._lock
        if lock is None:
            lock = self._lock = trio.StrictFIFOLock()
        return lock

    def _drop_lock(self, lock: trio.StrictFIFOLock) -> None:
        # A waiter takes the lock over as it is released: unlocked means
        # nobody holds it or waits for it, so the next write makes a new one.
        if self._lock is lock and not lock.locked():
            self._lock = None

    async def _send_locked(self, data: bytes | bytearray | memoryview) -> None:
        if self._broken:
            raise trio.BrokenResourceError("an earlier write was interrupted mid-frame")
        if self._batch:
            self._pending += b"".join(self._batch)
            self._batch.clear()
            self._batch_bytes = 0
        pending = self._pending
        if pending:
            # What was taken goes first, in the same write.
            self._pending = b""
            data = pending + data
        sent = 0
        view = memoryview(data)
        try:
            while sent < len(view):
                sent += await self._inner.socket.send(view[sent:])
        except BaseException as exc:
            if sent or isinstance(exc, OSError):
                # Cut off part-way, or the socket failed: the stream may end
                # inside a frame, so nothing may follow.
                self._broken = True
            else:
                # Cancelled before the first byte (a ping cancelled as its
                # client leaves): the stream is intact, and the close frame
                # can still follow. What was taken stays first in line.
                self._pending = pending
            if isinstance(exc, OSError):
                if exc.errno in (errno.EBADF, errno.ENOTSOCK):
                    raise trio.ClosedResourceError("the socket was already closed") from None
                raise trio.BrokenResourceError(f"socket connection broken: {exc}") from exc
            raise
        finally:
            view.release()
            self._account(len(self._pending))

    async def _flush_pending(self) -> None:
        # Shielded, like the client it writes for (it may run in a nursery
        # that outer cancellation reaches first): a remainder cut off would
        # end the stream inside a frame. Bounded all the same: closing the
        # socket (the client's close or abort) wakes it with an error.
        try:
            with trio.CancelScope(shield=True):
                lock = self._take_lock()
                try:
                    async with lock:
                        if self._pending and not self._closed:
                            await self._send_locked(b"")
                finally:
                    self._drop_lock(lock)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the reader sees the connection end, and the client leaves

    def _drop_unsent(self) -> None:
        self._closed = True
        self._pending = b""
        self._batch.clear()
        self._batch_bytes = 0
        self._account(0)

    async def abort(self) -> None:
        """Close the socket at once, without any further bytes."""
        self._drop_unsent()
        await trio.aclose_forcefully(self._inner)

    async def aclose(self) -> None:
        """Close the socket; what was not written by now is lost."""
        self._drop_unsent()
        await self._inner.aclose()
