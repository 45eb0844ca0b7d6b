"""Broadcast fan-out load generator: N real WebSocket clients in one process.

Usage (``run.py`` drives it; it can also run alone against any server that speaks the
websocket-shootout ``broadcast`` message)::

    python bench/loadgen.py --port 8765 --clients 1000 --server-pid 1234

It opens ``--clients`` receiver connections with a real HTTP upgrade handshake, then one
sender connection. The sender sends ``broadcast`` messages ``--batch-size`` at a time
(4, as websocket-shootout does): it sends a batch, waits until every receiver has
received all of it and the sender has its ``broadcastResult`` for each, then sends the
next one. The result is one JSON object on stdout.

With ``--extra-port`` (repeatable) the receivers are spread round-robin over
``--port`` and the extra ports, the sender staying on ``--port``: that is how
``scaleout.py`` loads several hub nodes that share broadcasts through Redis. The
``listenerCount`` of each ``broadcastResult`` must then be the sender's node's
own clients only, and ``--other-pid`` (repeatable) adds the CPU that the other
processes (nodes, Redis) spent in the window to the result.

Why no WebSocket library: a Python WebSocket client per connection costs more CPU per
received frame than the servers under test spend per delivery, so with thousands of
clients the load generator, not the server, would set the pace. Here each receiver is
a bare :class:`asyncio.Protocol` that does the handshake itself and afterwards only
walks the unmasked frame headers the server sends (2 bytes plus the extended length),
counts the frames, and checks with one ``bytes.find`` that frame *k* carries message
*k*'s sequence token, so loss, duplication and reordering are still caught. uvloop is
used when installed. The JSON output reports this process's own CPU use next to the
server's, so a run where the load generator was the bottleneck shows it.

What is measured, over a window that follows a warm-up:

* deliveries per second: frames received by all clients (the sender's own copy
  included, since the server writes it too) divided by the window's wall time;
* latency of each message: from just before the sender wrote it to the moment the last
  receiver got it (publish to last client);
* server CPU per delivery, user and kernel, from ``/proc/<pid>/stat`` via psutil;
* server memory per idle connection: RSS growth across connecting the receivers, / N;
* bytes on the wire per delivery: what the receivers read in the window (frame headers
  included), / their deliveries.

With ``--compression`` every client offers permessage-deflate (as Chromium does:
``permessage-deflate; client_max_window_bits``), the run fails if the server does not
accept it, and the receivers inflate compressed frames (one decompressor per connection,
kept across messages unless the server said ``server_no_context_takeover``) before
checking the token; with ``--check one`` only the first receiver does, and the others
count compressed frames without inflating them, so that inflating does not slow the
load generator (order and content are then checked on one connection, loss on all).
``--payload words`` pads the messages with JSON-ish text instead of
``xxx...``, which would compress to nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import hashlib
import json
import os
import random
import re
import resource
import socket
import sys
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, TypedDict, TypeVar, cast

import psutil

_WS_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_OP_CONTINUATION: Final = 0x0
_OP_TEXT: Final = 0x1
_OP_BINARY: Final = 0x2
_OP_CLOSE: Final = 0x8
_OP_PING: Final = 0x9
_OP_PONG: Final = 0xA
_RSV1: Final = 0x40
_DEFLATE_TAIL: Final = b"\x00\x00\xff\xff"
_WORDS: Final = (
    b"hello world the price is up down ok see you soon again later today "
    b"alice bob carol dave news sport weather"
).split()


class LatencyStats(TypedDict):
    """Publish-to-last-client latency over the measured window, in milliseconds."""

    samples: int
    min_ms: float
    median_ms: float
    p99_ms: float
    max_ms: float


class CpuStats(TypedDict):
    """CPU time one process spent during the measured window."""

    user_s: float
    system_s: float
    percent_of_one_core: float


class CoreStats(TypedDict):
    """How busy one CPU core was during the measured window (``/proc/stat``).

    Unlike :class:`CpuStats` this includes softirq time (on loopback, the kernel
    delivers a packet to the receiving socket in softirq on the *sending* core) and
    every other task on the core, so it tells whether the core was saturated.
    """

    cpu: int
    busy_percent: float
    softirq_percent: float


class MemoryStats(TypedDict):
    """Server resident set size around connecting the idle receivers."""

    rss_before_bytes: int
    rss_idle_bytes: int
    rss_after_broadcast_bytes: int
    bytes_per_idle_connection: float


class WindowCosts(TypedDict):
    """What both loops report about the measured window's CPU, memory and placement."""

    server_cpu: CpuStats
    server_us_per_delivery: float
    server_user_us_per_delivery: float
    server_system_us_per_delivery: float
    loadgen_cpu: CpuStats
    cores: list[CoreStats]
    memory: MemoryStats
    errors: int
    event_loop: str
    loadgen_cpus: list[int]
    server_cpus: list[int]


class LoadgenResult(WindowCosts):
    """Everything one load generator run reports (its stdout, as JSON)."""

    clients: int
    listener_count: int
    batch_size: int
    frame_bytes: int
    compression: bool
    wire_bytes_per_delivery: float
    messages: int
    deliveries: int
    window_s: float
    connect_s: float
    deliveries_per_s: float
    latency: LatencyStats
    ports: list[int]
    other_cpu: list[CpuStats]


class LoadgenError(Exception):
    """The server misbehaved (lost, reordered or unexpected frames, closed early)."""


def mask_frame(opcode: int, payload: bytes) -> bytes:
    """Encode one client-to-server frame, masked as RFC 6455 requires.

    Args:
        opcode: The frame's opcode (text, close, pong, ...).
        payload: The unmasked payload.

    Returns:
        The whole frame, FIN set.
    """
    length = len(payload)
    if length < 126:
        header = bytes((0x80 | opcode, 0x80 | length))
    elif length < 1 << 16:
        header = bytes((0x80 | opcode, 0x80 | 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + length.to_bytes(8, "big")
    key = os.urandom(4)
    # XOR as one big integer: far faster in Python than a byte loop.
    repeated = (key * (length // 4 + 1))[:length]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
        length, "big"
    )
    return header + key + masked


def _handshake_request(host: str, port: int, compression: bool = False) -> tuple[bytes, bytes]:
    key = base64.b64encode(os.urandom(16))
    extensions = (
        b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
        if compression
        else b""
    )
    request = (
        b"GET / HTTP/1.1\r\n"
        b"Host: %s:%d\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Key: %s\r\n"
        b"%s"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    ) % (host.encode(), port, key, extensions)
    accept = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest())  # RFC 6455 mandates SHA-1 here
    return request, accept


class _Tracker:
    """What both loops' shared state has: the protocol errors, and a future to fail.

    A connection that the server closes early fails the future the run is waiting on
    (:meth:`waited_on`), so that the run stops at once instead of timing out.
    """

    def __init__(self) -> None:
        self.errors = 0
        self.first_error = ""

    def error(self, detail: str) -> None:
        """Count a protocol violation; keep the first one for the report.

        Args:
            detail: What went wrong.
        """
        self.errors += 1
        if not self.first_error:
            self.first_error = detail

    def waited_on(self) -> asyncio.Future[None] | None:
        """The future the run is waiting on now, if any."""
        raise NotImplementedError

    def fail(self, exc: Exception) -> None:
        """Abort what the run is waiting for.

        Args:
            exc: Why.
        """
        future = self.waited_on()
        if future is not None and not future.done():
            future.set_exception(exc)


class Fanout(_Tracker):
    """Tracks, for each message, how many receivers have it, and when the last one did.

    Receivers only report "my count went from ``start`` to ``stop``"; since each
    receiver's frames are checked to arrive in order, message *j* has reached every
    receiver exactly when ``reached[j]`` hits the number of receivers.
    """

    def __init__(self, receivers: int, tokens: list[bytes]) -> None:
        """Prepare to track ``len(tokens)`` messages.

        Args:
            receivers: Number of receiver connections.
            tokens: The sequence token each message carries, by index.
        """
        super().__init__()
        self.receivers = receivers
        self.tokens = tokens
        self.reached = [0] * len(tokens)
        self.done_ns = [0] * len(tokens)
        self.batch_end = 0
        self.sender_results = 0
        self.sender_copies = 0
        self.received_bytes = 0  # by the receivers
        self.waiter: asyncio.Future[None] | None = None

    def waited_on(self) -> asyncio.Future[None] | None:
        """The batch in progress."""
        return self.waiter

    def delivered(self, start: int, stop: int) -> None:
        """Record that one receiver got messages ``start`` up to ``stop`` (exclusive).

        Args:
            start: The receiver's count before.
            stop: The receiver's count after.
        """
        now = 0
        reached = self.reached
        for index in range(start, min(stop, len(reached))):
            count = reached[index] + 1
            reached[index] = count
            if count == self.receivers:
                if not now:
                    now = time.perf_counter_ns()
                self.done_ns[index] = now
        if stop > len(reached):
            self.error(f"more frames than messages sent ({stop} > {len(reached)})")
        self.check_batch()

    def check_batch(self) -> None:
        """Complete the batch waiter once every receiver and the sender have it all."""
        end = self.batch_end
        if (
            self.waiter is not None
            and not self.waiter.done()
            and end > 0
            and (self.receivers == 0 or self.reached[end - 1] == self.receivers)
            and self.sender_results >= end
            and self.sender_copies >= end
        ):
            self.waiter.set_result(None)


class _Connection(asyncio.Protocol):
    """Shared handshake and frame walking; subclasses decide what to do with frames.

    Args:
        fanout: The run's shared state, which protocol errors are reported to.
        request: The HTTP upgrade request to send.
        accept: The ``Sec-WebSocket-Accept`` value the server must answer.
    """

    def __init__(self, fanout: _Tracker, request: bytes, accept: bytes) -> None:
        self.fanout = fanout
        self.request = request
        self.accept = accept
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.head = bytearray()
        self.buffer = bytearray()
        self.closing = False
        # permessage-deflate, if negotiated: reset the decompressor per message
        # (server_no_context_takeover) or keep it.
        self.deflate = False
        self.deflate_reset = False
        self.decompressor: zlib._Decompress | None = None
        # False: count compressed frames without inflating or checking them
        # (--check one, for every receiver but the first).
        self.check_compressed = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports quack like asyncio.Transport without subclassing it.
        self.transport = cast("asyncio.Transport", transport)
        # Nagle would hold the 2nd..4th frame of a batch behind a delayed ACK (40 ms).
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        failure = LoadgenError(f"server closed a connection early ({exc!r})")
        if not self.opened.done():
            self.opened.set_exception(failure)
        elif not self.closing:
            self.fanout.error(str(failure))
            self.fanout.fail(failure)

    def send(self, frame: bytes) -> None:
        assert self.transport is not None
        self.transport.write(frame)

    def close(self) -> None:
        """Start a clean close: close frame, then drop the TCP connection."""
        self.closing = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(mask_frame(_OP_CLOSE, (1000).to_bytes(2, "big")))
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if not self.opened.done():
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, rest = bytes(self.head[:end]), bytes(self.head[end + 4 :])
            self.head.clear()
            if not head.startswith(b"HTTP/1.1 101") or self.accept not in head:
                self.opened.set_exception(LoadgenError(f"handshake refused: {head[:200]!r}"))
                return
            lowered = head.lower()
            self.deflate = b"permessage-deflate" in lowered
            self.deflate_reset = b"server_no_context_takeover" in lowered
            self.opened.set_result(None)
            if not rest:
                return
            data = rest
        if self.buffer:
            self.buffer += data
            consumed = self.walk(self.buffer)
            del self.buffer[:consumed]
        else:
            # Common case: the read ends on a frame boundary, so no copy at all.
            consumed = self.walk(data)
            if consumed < len(data):
                self.buffer += data[consumed:]

    def walk(self, buf: bytes | bytearray) -> int:
        """Handle every complete frame in ``buf``; return how many bytes they used."""
        pos = 0
        size = len(buf)
        while size - pos >= 2:
            first, second = buf[pos], buf[pos + 1]
            length = second & 0x7F
            start = pos + 2
            if length == 126:
                if size - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                start = pos + 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                start = pos + 10
            if second & 0x80:
                self.fanout.error("server sent a masked frame")
            end = start + length
            if end > size:
                break
            opcode = first & 0x0F
            if opcode == _OP_PING:
                self.send(mask_frame(_OP_PONG, bytes(buf[start:end])))
            elif opcode == _OP_CLOSE:
                if not self.closing:
                    code = int.from_bytes(buf[start : start + 2], "big") if length >= 2 else 1005
                    self.fanout.error(f"server sent close {code}")
            elif opcode in (_OP_TEXT, _OP_BINARY, _OP_CONTINUATION):
                if first & 0x80:  # FIN: a whole message is in
                    if first & _RSV1 and not self.check_compressed:
                        self.message(b"", -1, -1, opcode)
                    elif first & _RSV1:
                        data, data_start, data_end = self.inflate(buf, start, end)
                        self.message(data, data_start, data_end, opcode)
                    else:
                        self.message(buf, start, end, opcode)
            elif opcode != _OP_PONG:
                self.fanout.error(f"unknown opcode {opcode}")
            pos = end
        return pos

    def inflate(self, buf: bytes | bytearray, start: int, end: int) -> tuple[bytes, int, int]:
        """The decompressed payload of a frame with RSV1, as ``(buffer, start, end)``."""
        if not self.deflate:
            self.fanout.error("compressed frame without permessage-deflate")
            return b"", 0, 0
        decompressor = self.decompressor
        if decompressor is None or self.deflate_reset:
            decompressor = self.decompressor = zlib.decompressobj(-15)
        try:
            data = decompressor.decompress(bytes(buf[start:end]) + _DEFLATE_TAIL)
        except zlib.error as exc:
            self.fanout.error(f"invalid compressed frame: {exc}")
            return b"", 0, 0
        return data, 0, len(data)

    def message(self, buf: bytes | bytearray, start: int, end: int, opcode: int) -> None:
        raise NotImplementedError


class Receiver(_Connection):
    """A client that only counts frames and checks their sequence tokens."""

    fanout: Fanout

    def __init__(self, fanout: Fanout, request: bytes, accept: bytes) -> None:
        super().__init__(fanout, request, accept)
        self.count = 0

    def data_received(self, data: bytes) -> None:
        before = self.count
        self.fanout.received_bytes += len(data)
        super().data_received(data)
        if self.count != before:
            self.fanout.delivered(before, self.count)

    def message(self, buf: bytes | bytearray, start: int, end: int, opcode: int) -> None:
        tokens = self.fanout.tokens
        index = self.count
        # Frame k must carry message k's token: catches loss, duplicates and reordering
        # (and any non-broadcast frame) for one bytes.find(), no JSON decoding.
        # (start < 0: a compressed frame this receiver only counts.)
        if opcode != _OP_TEXT or (
            start >= 0 and index < len(tokens) and buf.find(tokens[index], start, end) < 0
        ):
            self.fanout.error(f"receiver frame {index} is not message {index}: {buf[start:end]!r}")
        self.count = index + 1


class Sender(_Connection):
    """The client that publishes; it decodes its (few) frames fully."""

    fanout: Fanout

    def __init__(self, fanout: Fanout, request: bytes, accept: bytes) -> None:
        super().__init__(fanout, request, accept)
        self.listener_counts: set[int] = set()
        self.frame_bytes = 0
        self.replies: list[dict[str, object]] = []

    def message(self, buf: bytes | bytearray, start: int, end: int, opcode: int) -> None:
        try:
            envelope = json.loads(bytes(buf[start:end]))
        except ValueError:
            self.fanout.error(f"sender got non-JSON {buf[start:end]!r}")
            return
        kind = envelope.get("type") if isinstance(envelope, dict) else None
        if kind == "broadcast":
            self.frame_bytes = end - start
            self.fanout.sender_copies += 1
        elif kind == "broadcastResult":
            count = envelope.get("listenerCount")
            if isinstance(count, int):
                self.listener_counts.add(count)
            else:
                self.fanout.error(f"broadcastResult without an int listenerCount: {envelope!r}")
            self.fanout.sender_results += 1
        else:
            self.fanout.error(f"sender got unexpected {envelope!r}")
        self.fanout.check_batch()


def _nearest_rank(sorted_values: list[float], fraction: float) -> float:
    rank = max(1, -(-len(sorted_values) * fraction // 1))  # ceil without floats drifting
    return sorted_values[int(rank) - 1]


def _cpu(before: tuple[float, float], after: tuple[float, float], wall: float) -> CpuStats:
    user, system = after[0] - before[0], after[1] - before[1]
    return {
        "user_s": user,
        "system_s": system,
        "percent_of_one_core": 100.0 * (user + system) / wall if wall else 0.0,
    }


def _core_times() -> list[dict[str, float]]:
    return [times._asdict() for times in psutil.cpu_times(percpu=True)]


def _core(cpu: int, before: dict[str, float], after: dict[str, float]) -> CoreStats:
    # /proc/stat already counts guest time inside user time.
    spent = {
        field: after[field] - before[field]
        for field in after
        if field not in ("guest", "guest_nice")
    }
    total = sum(spent.values()) or 1.0
    idle = spent["idle"] + spent.get("iowait", 0.0)
    return {
        "cpu": cpu,
        "busy_percent": 100.0 * (total - idle) / total,
        "softirq_percent": 100.0 * spent.get("softirq", 0.0) / total,
    }


def _times(process: psutil.Process) -> tuple[float, float]:
    times = process.cpu_times()
    return times.user, times.system


@dataclass(frozen=True, slots=True)
class _CpuSnapshot:
    """CPU times at one instant: the server's, this process's and every core's."""

    server: tuple[float, float]
    me: tuple[float, float]
    cores: list[dict[str, float]]

    @classmethod
    def take(cls, server: psutil.Process, me: psutil.Process) -> _CpuSnapshot:
        return cls(_times(server), _times(me), _core_times())


def _window_costs(
    before: _CpuSnapshot,
    after: _CpuSnapshot,
    *,
    window_s: float,
    deliveries: int,
    rss: tuple[int, int, int],
    options: Options,
    tracker: _Tracker,
) -> WindowCosts:
    """The report's CPU, memory and placement fields, the same for both loops.

    Args:
        before: At the start of the measured window.
        after: At its end.
        window_s: Its wall time.
        deliveries: What the per-delivery costs divide by.
        rss: The server's RSS before connecting the receivers, with them idle, and
            after the window.
        options: The run's options.
        tracker: The run's shared state, for its error count.

    Returns:
        The fields.
    """
    server_cpu = _cpu(before.server, after.server, window_s)
    rss_before, rss_idle, rss_after = rss
    return {
        "server_cpu": server_cpu,
        "server_us_per_delivery": 1e6
        * (server_cpu["user_s"] + server_cpu["system_s"])
        / deliveries,
        "server_user_us_per_delivery": 1e6 * server_cpu["user_s"] / deliveries,
        "server_system_us_per_delivery": 1e6 * server_cpu["system_s"] / deliveries,
        "loadgen_cpu": _cpu(before.me, after.me, window_s),
        "cores": [
            _core(cpu, core_before, core_after)
            for cpu, (core_before, core_after) in enumerate(
                zip(before.cores, after.cores, strict=True)
            )
        ],
        "memory": {
            "rss_before_bytes": rss_before,
            "rss_idle_bytes": rss_idle,
            "rss_after_broadcast_bytes": rss_after,
            "bytes_per_idle_connection": (rss_idle - rss_before) / options.clients,
        },
        "errors": tracker.errors,
        "event_loop": type(asyncio.get_running_loop()).__module__.split(".")[0],
        "loadgen_cpus": sorted(os.sched_getaffinity(0)),
        "server_cpus": sorted(os.sched_getaffinity(options.server_pid)),
    }


async def _settled_rss(process: psutil.Process, limit_s: float = 3.0) -> int:
    """RSS once the server has finished reacting to the connections just made.

    A benchmark, not a test: the server gives no signal that it has finished setting up
    the handlers behind the handshakes, so poll until RSS stops moving (bounded).
    """
    deadline = time.monotonic() + limit_s
    last = process.memory_info().rss
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        rss = process.memory_info().rss
        if rss == last:
            break
        last = rss
    return last


@dataclass(frozen=True, slots=True)
class Options:
    """Parsed command line; see ``--help``."""

    host: str
    port: int
    extra_port: list[int]
    clients: int
    server_pid: int
    other_pid: list[int]
    batch_size: int
    message_bytes: int
    warmup_batches: int
    min_batches: int
    max_batches: int
    seconds: float
    connect_concurrency: int
    timeout: float
    load: str
    senders: int
    in_flight: int
    warmup_seconds: float
    late_ms: float
    compression: bool
    payload: str
    check: str


_C = TypeVar("_C", bound=_Connection)


async def _open(
    loop: asyncio.AbstractEventLoop,
    options: Options,
    factory: type[_C],
    fanout: _Tracker,
    port: int | None = None,
) -> _C:
    port = options.port if port is None else port
    request, accept = _handshake_request(options.host, port, options.compression)
    _, protocol = await loop.create_connection(
        lambda: factory(fanout, request, accept), options.host, port
    )
    await protocol.opened
    if options.compression and not protocol.deflate:
        protocol.close()
        raise LoadgenError("the server did not accept permessage-deflate")
    return protocol


async def _open_receivers(
    loop: asyncio.AbstractEventLoop,
    options: Options,
    factory: type[_C],
    fanout: _Tracker,
    ports: Sequence[int],
    receivers: list[_C],
    check: str = "all",
) -> float:
    """Open ``--clients`` receivers, ``--connect-concurrency`` at a time.

    Args:
        loop: The running loop.
        options: What to run.
        factory: The receivers' class.
        fanout: The run's shared state.
        ports: Receiver *i* connects to ``ports[i % len(ports)]``.
        receivers: Each receiver goes in here once open, so that the caller closes the
            ones that were open when connecting failed.
        check: ``all``, or ``one``: only the first receiver inflates and checks
            compressed frames, so that the load generator is as fast with compression
            as without (the others still count every frame).

    Returns:
        How long connecting took, in seconds.
    """
    started = time.perf_counter()
    gate = asyncio.Semaphore(options.connect_concurrency)

    async def open_receiver(port: int) -> None:
        async with gate:
            receiver = await _open(loop, options, factory, fanout, port)
            receiver.check_compressed = check == "all" or not receivers
            receivers.append(receiver)

    async with asyncio.timeout(options.timeout + options.clients / 50):
        await asyncio.gather(
            *(open_receiver(ports[index % len(ports)]) for index in range(options.clients))
        )
    return time.perf_counter() - started


async def run(options: Options) -> LoadgenResult:
    """Connect, warm up, measure one window, disconnect.

    Args:
        options: What to run.

    Returns:
        The measurements.

    Raises:
        LoadgenError: The server broke the protocol or a batch timed out.
    """
    loop = asyncio.get_running_loop()
    server = psutil.Process(options.server_pid)
    others = [psutil.Process(pid) for pid in options.other_pid]
    me = psutil.Process()
    ports = [options.port, *options.extra_port]
    # Receiver i connects to ports[i % len(ports)]; the sender's node gets the rest.
    local_receivers = len(range(0, options.clients, len(ports)))
    batches = options.warmup_batches + options.max_batches + 1  # +1: the solo probe
    total = batches * options.batch_size
    tokens = [b"s%09de" % index for index in range(total)]
    template = json.dumps(
        {"type": "broadcast", "payload": {"seq": "", "pad": ""}}, separators=(",", ":")
    )
    pad_length = max(0, options.message_bytes - len(template) - len(tokens[0]))
    rng = random.Random(1)

    def pad() -> str:
        if options.payload == "x":
            return "x" * pad_length
        # Different text in every message, from a small vocabulary, as chat or
        # news traffic: what compresses (and what context takeover gains) is real.
        words = b" ".join(rng.choice(_WORDS) for _ in range(pad_length // 3 + 1))
        return words[:pad_length].decode()

    frames = [
        mask_frame(
            _OP_TEXT,
            json.dumps(
                {"type": "broadcast", "payload": {"seq": token.decode(), "pad": pad()}},
                separators=(",", ":"),
            ).encode(),
        )
        for token in tokens
    ]
    send_ns = [0] * total
    fanout = Fanout(0, tokens)
    receivers: list[Receiver] = []

    sender = await _open(loop, options, Sender, fanout)
    sent = 0

    async def batch() -> None:
        nonlocal sent
        fanout.batch_end = sent + options.batch_size
        fanout.waiter = loop.create_future()
        for index in range(sent, fanout.batch_end):
            send_ns[index] = time.perf_counter_ns()
            sender.send(frames[index])
        sent = fanout.batch_end
        try:
            await asyncio.wait_for(fanout.waiter, options.timeout)
        except TimeoutError:
            raise LoadgenError(
                f"batch ending at message {sent} not delivered within {options.timeout} s: "
                f"{fanout.reached[sent - 1]}/{fanout.receivers} receivers, "
                f"{fanout.sender_results}/{sent} results"
            ) from None

    try:
        # One broadcast with only the sender connected: the server's first-message code
        # paths (imports, caches) run before the memory baseline, not inside it.
        await batch()
        rss_before = await _settled_rss(server)
        connect_s = await _open_receivers(
            loop, options, Receiver, fanout, ports, receivers, options.check
        )
        rss_idle = await _settled_rss(server)
        # Receivers joined after the probe: their frame k is message k + batch_size.
        fanout.receivers = options.clients
        fanout.reached[: options.batch_size] = [options.clients] * options.batch_size
        for receiver in receivers:
            receiver.count = options.batch_size

        for _ in range(options.warmup_batches):
            await batch()

        first_measured = sent
        window_start = time.perf_counter()
        received_before = fanout.received_bytes
        cpu_before = _CpuSnapshot.take(server, me)
        others_before = [_times(other) for other in others]
        done = 0
        while done < options.max_batches:
            await batch()
            done += 1
            if (
                done >= options.min_batches
                and time.perf_counter() - window_start >= options.seconds
            ):
                break
        window_s = time.perf_counter() - window_start
        received_in_window = fanout.received_bytes - received_before
        cpu_after = _CpuSnapshot.take(server, me)
        others_after = [_times(other) for other in others]
        rss_after = server.memory_info().rss
    finally:
        for connection in [sender, *receivers]:
            connection.close()

    if fanout.errors:
        raise LoadgenError(f"{fanout.errors} protocol errors, first: {fanout.first_error}")
    messages = sent - first_measured
    listeners = options.clients + 1
    # The solo probe saw 1 listener; every later broadcast must count all of the
    # sender's node's clients (a node counts its own clients only).
    local_listeners = local_receivers + 1
    if sender.listener_counts != {1, local_listeners}:
        raise LoadgenError(
            f"broadcastResult listenerCount was {sorted(sender.listener_counts)}, "
            f"expected 1 (probe) then {local_listeners}"
        )
    deliveries = messages * listeners
    latencies = sorted(
        (fanout.done_ns[index] - send_ns[index]) / 1e6 for index in range(first_measured, sent)
    )
    return {
        "clients": options.clients,
        "listener_count": listeners,
        "batch_size": options.batch_size,
        "frame_bytes": sender.frame_bytes,
        "compression": options.compression,
        "wire_bytes_per_delivery": received_in_window / max(1, messages * options.clients),
        "messages": messages,
        "deliveries": deliveries,
        "window_s": window_s,
        "connect_s": connect_s,
        "deliveries_per_s": deliveries / window_s,
        "latency": {
            "samples": len(latencies),
            "min_ms": latencies[0],
            "median_ms": _nearest_rank(latencies, 0.5),
            "p99_ms": _nearest_rank(latencies, 0.99),
            "max_ms": latencies[-1],
        },
        **_window_costs(
            cpu_before,
            cpu_after,
            window_s=window_s,
            deliveries=deliveries,
            rss=(rss_before, rss_idle, rss_after),
            options=options,
            tracker=fanout,
        ),
        "ports": ports,
        "other_cpu": [
            _cpu(before, after, window_s)
            for before, after in zip(others_before, others_after, strict=True)
        ],
    }


# --- Open loop ------------------------------------------------------------------------
#
# The closed loop above never lets a backlog build: it waits for every receiver before
# the next batch. Real publishers do not wait for subscribers, so the open loop has
# ``--senders`` publishers (4, as websocket-shootout), each sending its next broadcast
# as soon as its own ``broadcastResult`` arrives, whatever the receivers have got. The
# server's intake is then paced only by how fast it answers the senders. With
# ``--in-flight K`` each sender keeps K broadcasts unanswered instead of one: a load
# that outruns what the server can write, whatever it does.

_OPEN_MARK: Final = b"~S"  # then 9 digits: the message id, unique over the run
_OPEN_ID_DIGITS: Final = 9
_LAG_BUCKETS_MS: Final = 120_000  # 1 ms buckets; beyond 2 minutes they share the last
_RESULT_PROBE: Final = b"broadcastResult"
_LISTENER_COUNT = re.compile(rb'"listenerCount"\s*:\s*(\d+)')


class PercentilesMs(TypedDict):
    """A distribution in milliseconds (nearest rank)."""

    samples: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float


class OpenLoopResult(WindowCosts):
    """Everything one open-loop run reports (its stdout, as JSON)."""

    load: str
    clients: int
    senders: int
    in_flight: int
    listener_count: int
    frame_bytes: int
    messages: int
    deliveries: int
    window_s: float
    connect_s: float
    deliveries_per_s: float
    broadcasts_per_s: float
    round_trip: PercentilesMs
    delivery_lag: PercentilesMs
    delivered_after_result_fraction: float
    client_max_lag: PercentilesMs
    sender_copy_lag: PercentilesMs
    late_ms: float
    missing_after_late_ms: int
    expected_after_late_ms: int
    drain_s: float
    rss_peak_bytes: int


def _percentiles(sorted_values: list[float]) -> PercentilesMs:
    if not sorted_values:
        return {"samples": 0, "p50_ms": 0.0, "p95_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
    return {
        "samples": len(sorted_values),
        "p50_ms": _nearest_rank(sorted_values, 0.5),
        "p95_ms": _nearest_rank(sorted_values, 0.95),
        "p99_ms": _nearest_rank(sorted_values, 0.99),
        "max_ms": sorted_values[-1],
    }


class OpenTracker(_Tracker):
    """Shared state of an open-loop run: per message id, when it was sent and answered.

    Message ids are ``k * senders + s`` for sender ``s``'s ``k``-th broadcast, so each
    receiver checks per sender that ids come in steps of ``senders``: loss, duplicates
    and reordering within one sender's stream fail the run (the order *between*
    senders is the server's to choose). Delivery lag is kept as a histogram of 1 ms
    buckets, so recording one delivery is an index and an add.
    """

    def __init__(self, senders: int) -> None:
        """Prepare for ``senders`` publishers.

        Args:
            senders: Number of sender connections.
        """
        super().__init__()
        self.senders = senders
        self.send_ns: list[int] = []
        self.result_ns: list[int] = []
        self.measured = bytearray()  # 1: sent inside the measured window
        # Bucket 0: delivered at or before the sender had its result; bucket i: lag in
        # [i - 1, i) ms after it (ceil), so the percentiles never flatter a server.
        self.lag_hist = [0] * (_LAG_BUCKETS_MS + 2)
        self.lag_max_ns = 0
        self.round_trips_ns: list[int] = []
        self.listener_counts: set[int] = set()
        self.frame_bytes = 0
        self.measuring = False
        self.stopping = False
        self.outstanding = 0
        self.last_result_ns = 0
        self.settled: asyncio.Future[None] | None = None

    def waited_on(self) -> asyncio.Future[None] | None:
        """The run: set once every sender has its last result."""
        return self.settled

    def grow(self, message_id: int) -> None:
        """Make room in the per-message arrays for ``message_id``.

        Args:
            message_id: The id about to be sent.
        """
        while message_id >= len(self.send_ns):
            more = max(65_536, len(self.send_ns))
            self.send_ns.extend([0] * more)
            self.result_ns.extend([0] * more)
            self.measured.extend(bytes(more))


class OpenReceiver(_Connection):
    """Receives broadcasts; timestamps each read once and checks per-sender order."""

    def __init__(self, tracker: OpenTracker, request: bytes, accept: bytes) -> None:
        super().__init__(tracker, request, accept)
        self.tracker = tracker
        self.count = 0
        self.next_ids = list(range(tracker.senders))
        self.now_ns = 0
        self.max_lag_ns = 0

    def data_received(self, data: bytes) -> None:
        # One clock read per read(), not per frame: the frames of one read arrived together.
        self.now_ns = time.perf_counter_ns()
        super().data_received(data)

    def message(self, buf: bytes | bytearray, start: int, end: int, opcode: int) -> None:
        tracker = self.tracker
        mark = buf.find(_OPEN_MARK, start, end)
        if opcode != _OP_TEXT or mark < 0:
            tracker.error(f"receiver got a frame without a message id: {buf[start:end]!r}")
            return
        message_id = int(buf[mark + 2 : mark + 2 + _OPEN_ID_DIGITS])
        sender = message_id % tracker.senders
        if message_id != self.next_ids[sender]:
            tracker.error(
                f"receiver expected message {self.next_ids[sender]} from sender {sender}, "
                f"got {message_id}"
            )
            return
        self.next_ids[sender] = message_id + tracker.senders
        self.count += 1
        if tracker.measured[message_id]:
            result_ns = tracker.result_ns[message_id]
            if result_ns:
                lag_ns = self.now_ns - result_ns
                if lag_ns > 0:
                    if lag_ns > self.max_lag_ns:
                        self.max_lag_ns = lag_ns
                    bucket = -(-lag_ns // 1_000_000)
                    tracker.lag_hist[bucket if bucket <= _LAG_BUCKETS_MS else -1] += 1
                    return
            tracker.lag_hist[0] += 1


class OpenSender(OpenReceiver):
    """A publisher: it also receives every broadcast, and sends again on its result."""

    def __init__(self, tracker: OpenTracker, request: bytes, accept: bytes) -> None:
        super().__init__(tracker, request, accept)
        self.index = 0
        # The ids sent and not yet answered, oldest first: the server answers one
        # connection's broadcasts in the order they were sent.
        self.waiting_for: collections.deque[int] = collections.deque()
        self.next_id = 0
        self.pad = ""

    def start(self, in_flight: int) -> None:
        """Send the first ``in_flight`` broadcasts (``index`` and ``pad`` are set)."""
        self.next_id = self.index
        for _ in range(in_flight):
            self.publish_next()

    def publish_next(self) -> None:
        """Send this sender's next broadcast."""
        message_id = self.next_id
        self.next_id += self.tracker.senders
        self.publish(message_id)

    def publish(self, message_id: int) -> None:
        """Send broadcast ``message_id`` and note when.

        Args:
            message_id: Its id (``k * senders + self.index``).
        """
        tracker = self.tracker
        tracker.grow(message_id)
        text = f'{{"type":"broadcast","payload":{{"seq":"~S{message_id:09d}","pad":"{self.pad}"}}}}'
        frame = mask_frame(_OP_TEXT, text.encode())
        self.waiting_for.append(message_id)
        tracker.outstanding += 1
        if tracker.measuring:
            tracker.measured[message_id] = 1
        tracker.send_ns[message_id] = time.perf_counter_ns()
        self.send(frame)

    def message(self, buf: bytes | bytearray, start: int, end: int, opcode: int) -> None:
        if buf.find(_RESULT_PROBE, start, min(end, start + 40)) < 0:
            self.tracker.frame_bytes = end - start
            super().message(buf, start, end, opcode)
            return
        tracker = self.tracker
        now = time.perf_counter_ns()
        mark = buf.find(_OPEN_MARK, start, end)
        count = _LISTENER_COUNT.search(bytes(buf[start:end]))
        message_id = int(buf[mark + 2 : mark + 2 + _OPEN_ID_DIGITS]) if mark >= 0 else -1
        waiting = self.waiting_for
        if not waiting or message_id != waiting[0] or count is None:
            tracker.error(f"sender {self.index} got an unexpected result {buf[start:end]!r}")
            return
        tracker.listener_counts.add(int(count[1]))
        tracker.result_ns[message_id] = now
        tracker.last_result_ns = now
        tracker.outstanding -= 1
        waiting.popleft()
        if tracker.measured[message_id]:
            tracker.round_trips_ns.append(now - tracker.send_ns[message_id])
        if not tracker.stopping:
            self.publish_next()
        elif (
            tracker.outstanding == 0 and tracker.settled is not None and not tracker.settled.done()
        ):
            tracker.settled.set_result(None)


def _lag_percentiles(hist: list[int], max_ns: int) -> PercentilesMs:
    total = sum(hist)
    if not total:
        return _percentiles([])
    result: dict[str, float] = {}
    for name, fraction in (("p50_ms", 0.5), ("p95_ms", 0.95), ("p99_ms", 0.99)):
        rank = max(1, -(-int(total * fraction * 1000) // 1000))
        seen = 0
        for bucket, count in enumerate(hist):
            seen += count
            if seen >= rank:
                result[name] = float(bucket)
                break
    return {
        "samples": total,
        "p50_ms": result["p50_ms"],
        "p95_ms": result["p95_ms"],
        "p99_ms": result["p99_ms"],
        "max_ms": max_ns / 1e6,
    }


async def run_open(options: Options) -> OpenLoopResult:
    """Connect, run the open loop (warm-up, measured window), drain, disconnect.

    Args:
        options: What to run.

    Returns:
        The measurements.

    Raises:
        LoadgenError: The server broke the protocol or did not answer in time.
    """
    loop = asyncio.get_running_loop()
    server = psutil.Process(options.server_pid)
    me = psutil.Process()
    tracker = OpenTracker(options.senders)
    senders: list[OpenSender] = []
    receivers: list[OpenReceiver] = []
    template = '{"type":"broadcast","payload":{"seq":"~S000000000","pad":""}}'
    pad = "x" * max(0, options.message_bytes - len(template))

    def listeners() -> list[OpenReceiver]:
        return [*senders, *receivers]

    try:
        for index in range(options.senders):
            sender = await _open(loop, options, OpenSender, tracker)
            sender.index, sender.pad = index, pad
            senders.append(sender)
        rss_before = await _settled_rss(server)
        # Every open-loop receiver checks every message id (the default check, all).
        connect_s = await _open_receivers(
            loop, options, OpenReceiver, tracker, [options.port], receivers
        )
        rss_idle = await _settled_rss(server)

        rss_peak = rss_idle

        async def sample_rss() -> None:
            nonlocal rss_peak
            while True:
                rss_peak = max(rss_peak, server.memory_info().rss)
                await asyncio.sleep(0.2)

        sampler = asyncio.ensure_future(sample_rss())
        tracker.settled = loop.create_future()
        for sender in senders:
            sender.start(options.in_flight)
        # The waits below are wall-clock phases of a benchmark, not synchronisation;
        # a protocol error or early close ends them at once through tracker.settled.
        await asyncio.wait({tracker.settled}, timeout=options.warmup_seconds)
        tracker.measuring = True
        delivered_before = sum(listener.count for listener in listeners())
        window_start = time.perf_counter()
        cpu_before = _CpuSnapshot.take(server, me)
        await asyncio.wait({tracker.settled}, timeout=options.seconds)
        tracker.measuring = False
        tracker.stopping = True
        window_s = time.perf_counter() - window_start
        cpu_after = _CpuSnapshot.take(server, me)
        delivered_in_window = sum(listener.count for listener in listeners()) - delivered_before
        rss_after = server.memory_info().rss
        try:
            await asyncio.wait_for(asyncio.shield(tracker.settled), options.timeout)
        except TimeoutError:
            raise LoadgenError(
                f"{tracker.outstanding} broadcastResults missing {options.timeout} s "
                "after the window"
            ) from None
        # Every broadcast is answered: each listener must get them all. Count how many
        # deliveries are still missing --late-ms after the last result...
        total_messages = len(tracker.result_ns) - tracker.result_ns.count(0)
        late_at = tracker.last_result_ns / 1e9 + options.late_ms / 1e3
        await asyncio.sleep(max(0.0, late_at - time.perf_counter()))
        expected = total_messages * len(listeners())
        missing_late = expected - sum(listener.count for listener in listeners())
        # ...then wait (bounded) for the rest: late is not lost, but lost fails the run.
        drain_started = time.perf_counter()
        while sum(listener.count for listener in listeners()) < expected:
            if tracker.errors or time.perf_counter() - drain_started > options.timeout:
                break
            await asyncio.sleep(0.05)
        drain_s = time.perf_counter() - drain_started
        still_missing = expected - sum(listener.count for listener in listeners())
        sampler.cancel()
    finally:
        for connection in listeners():
            connection.close()

    if tracker.errors:
        raise LoadgenError(f"{tracker.errors} protocol errors, first: {tracker.first_error}")
    if still_missing:
        raise LoadgenError(f"{still_missing} deliveries lost ({options.timeout} s after the end)")
    listener_count = options.clients + options.senders
    if tracker.listener_counts != {listener_count}:
        raise LoadgenError(
            f"broadcastResult listenerCount was {sorted(tracker.listener_counts)}, "
            f"expected {listener_count}"
        )
    messages = sum(tracker.measured)
    round_trips = sorted(value / 1e6 for value in tracker.round_trips_ns)
    lag = _lag_percentiles(tracker.lag_hist, max(r.max_lag_ns for r in listeners()))
    after_result = sum(tracker.lag_hist[1:])
    deliveries = max(1, delivered_in_window)
    return {
        "load": "open",
        "clients": options.clients,
        "senders": options.senders,
        "in_flight": options.in_flight,
        "listener_count": listener_count,
        "frame_bytes": tracker.frame_bytes,
        "messages": messages,
        "deliveries": delivered_in_window,
        "window_s": window_s,
        "connect_s": connect_s,
        "deliveries_per_s": delivered_in_window / window_s,
        "broadcasts_per_s": len(round_trips) / window_s,
        "round_trip": _percentiles(round_trips),
        "delivery_lag": lag,
        "delivered_after_result_fraction": after_result / lag["samples"] if lag["samples"] else 0,
        "client_max_lag": _percentiles(sorted(r.max_lag_ns / 1e6 for r in receivers)),
        "sender_copy_lag": _percentiles(sorted(s.max_lag_ns / 1e6 for s in senders)),
        "late_ms": options.late_ms,
        "missing_after_late_ms": missing_late,
        "expected_after_late_ms": expected,
        "drain_s": drain_s,
        "rss_peak_bytes": rss_peak,
        **_window_costs(
            cpu_before,
            cpu_after,
            window_s=window_s,
            deliveries=deliveries,
            rss=(rss_before, rss_idle, rss_after),
            options=options,
            tracker=tracker,
        ),
    }


def raise_open_files_limit() -> None:
    """Lift the soft ``RLIMIT_NOFILE`` to the hard limit: 5,000 clients need the fds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _parse(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="the sender's server")
    parser.add_argument(
        "--extra-port",
        type=int,
        action="append",
        default=[],
        help="another server (repeatable); receivers are spread round-robin over all",
    )
    parser.add_argument("--clients", type=int, required=True, help="receiver connections")
    parser.add_argument("--server-pid", type=int, required=True, help="for CPU and RSS")
    parser.add_argument(
        "--other-pid",
        type=int,
        action="append",
        default=[],
        help="another process whose CPU to report (repeatable)",
    )
    parser.add_argument("--batch-size", type=int, default=4, help="broadcasts in flight")
    parser.add_argument("--message-bytes", type=int, default=250, help="sent JSON size")
    parser.add_argument("--warmup-batches", type=int, default=5)
    parser.add_argument("--min-batches", type=int, default=20, help="measured, at least")
    parser.add_argument("--max-batches", type=int, default=2000, help="measured, at most")
    parser.add_argument("--seconds", type=float, default=5.0, help="measured window target")
    parser.add_argument("--connect-concurrency", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=30.0, help="per batch, seconds")
    parser.add_argument(
        "--load",
        choices=("closed", "open"),
        default="closed",
        help="closed: batches, wait for every receiver (default); open: senders send "
        "again on their own broadcastResult",
    )
    parser.add_argument("--senders", type=int, default=4, help="open loop: publishers")
    parser.add_argument(
        "--in-flight",
        type=int,
        default=1,
        help="open loop: broadcasts each sender keeps unanswered (1: websocket-shootout's; "
        "more: publishers that outrun the server)",
    )
    parser.add_argument(
        "--warmup-seconds", type=float, default=2.0, help="open loop: before the window"
    )
    parser.add_argument(
        "--late-ms",
        type=float,
        default=250.0,
        help="open loop: count deliveries still missing this long after the last result",
    )
    parser.add_argument(
        "--compression", action="store_true", help="offer permessage-deflate, require it"
    )
    parser.add_argument(
        "--payload", choices=["x", "words"], default="x", help="what pads the messages"
    )
    parser.add_argument(
        "--check",
        choices=["all", "one"],
        default="all",
        help="which receivers inflate and check compressed frames (the others count them)",
    )
    args = parser.parse_args(argv)
    if args.in_flight < 1:
        parser.error("--in-flight must be at least 1")
    return Options(**vars(args))


def main(argv: list[str] | None = None) -> int:
    """Run once and print the result as JSON.

    Args:
        argv: Command line arguments, ``sys.argv[1:]`` by default.

    Returns:
        The exit status: 0, or 1 when the server broke the protocol.
    """
    options = _parse(argv)
    raise_open_files_limit()
    try:
        import uvloop  # optional: plain asyncio works too
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        result: LoadgenResult | OpenLoopResult = (
            runner(run_open(options)) if options.load == "open" else runner(run(options))
        )
    except (LoadgenError, OSError) as exc:
        print(f"loadgen: {exc}", file=sys.stderr)
        return 1
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
