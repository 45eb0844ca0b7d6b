"""Idle connections: memory per connection, scale, and a reconnect storm, side by side.

Usage::

    python bench/memory.py idle  --clients 5000             # KiB per idle connection
    python bench/memory.py scale --clients 18000            # hold 18,000, broadcast once
    python bench/memory.py storm --clients 1000,5000        # N connect at once
    python bench/memory.py idle --baseline-tree /tmp/base   # also trio_hub from another checkout

Every mode starts each server fresh (``run.py``'s servers: ``trio_hub``,
``websockets_asyncio``, ``picows``, and ``trio_hub_base`` with ``--baseline-tree``),
pinned to the first core, and drives it from this process, pinned to the second, with
bare asyncio clients (uvloop if installed) that do a real HTTP upgrade and then only
count frames. The server's memory is its RSS (``psutil``), read once it has stopped
moving for a second.

* ``idle``: a warm-up (50 clients and one broadcast, so that lazy first-use costs
  are paid), the RSS, then N more idle clients (200 handshakes in flight), the
  RSS again: **KiB per idle connection** = growth / N.
* ``scale``: N idle clients spread over several source addresses (127.0.0.2,
  127.0.0.3, ... so that ephemeral ports never run short), the RSS, then one
  broadcast from one more client: **time until the last client has it**.
* ``storm``: N clients start their handshakes at the same moment: **handshakes
  per second** and the time until all are done, then a broadcast whose
  ``listenerCount`` proves that all of them are registered.

The open-file limit is raised to its hard limit (20,000 here); the servers inherit it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import struct
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import psutil
from loadgen import raise_open_files_limit
from run import SERVERS, ServerSpec, baseline_spec, running_server

DEFAULT_SERVERS = "trio_hub,websockets_asyncio,picows"
SOURCES_PER_ADDRESS = 10_000  # clients per 127.0.0.x source address
HANDSHAKE_TIMEOUT_S = 120.0  # plus 10 ms per client


class Receiver(asyncio.Protocol):
    """One client: handshake, then count text frames and remember the last one."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.upgraded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.buffer = bytearray()
        self.frames = 0
        self.last = b""
        self.wanted = 0
        self.reached: asyncio.Future[float] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment] (uvloop's is no asyncio.Transport)
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            (
                "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded.done():
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.buffer.startswith(b"HTTP/1.1 101"):
                self.upgraded.set_exception(ConnectionError(bytes(self.buffer[:60])))
                return
            del self.buffer[: end + 4]
            self.upgraded.set_result(None)
        while len(self.buffer) >= 2:
            length = self.buffer[1] & 0x7F
            start = 2
            if length == 126:
                if len(self.buffer) < 4:
                    return
                (length,) = struct.unpack_from("!H", self.buffer, 2)
                start = 4
            elif length == 127:
                if len(self.buffer) < 10:
                    return
                (length,) = struct.unpack_from("!Q", self.buffer, 2)
                start = 10
            if len(self.buffer) < start + length:
                return
            opcode = self.buffer[0] & 0x0F
            if opcode == 0x9:  # a keepalive ping (trio_hub's default): answer it
                self.send_frame(0xA, bytes(self.buffer[start : start + length]))
            if opcode == 0x1:
                self.frames += 1
                self.last = bytes(self.buffer[start : start + length])
                reached = self.reached
                if reached is not None and self.frames >= self.wanted and not reached.done():
                    reached.set_result(time.perf_counter())
            del self.buffer[: start + length]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.upgraded.done():
            self.upgraded.set_exception(ConnectionError("closed before the upgrade"))

    def expect(self, frames: int) -> asyncio.Future[float]:
        """A future set to the time at which this client holds ``frames`` frames."""
        self.wanted = frames
        self.reached = asyncio.get_running_loop().create_future()
        if self.frames >= frames:
            self.reached.set_result(time.perf_counter())
        return self.reached

    def send_text(self, text: str) -> None:
        """Send one masked text frame (under 126 bytes of payload)."""
        self.send_frame(0x1, text.encode())

    def send_frame(self, opcode: int, payload: bytes) -> None:
        """Send one masked frame (under 126 bytes of payload)."""
        assert len(payload) < 126
        assert self.transport is not None
        mask = os.urandom(4)
        masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
        self.transport.write(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)


async def connect(port: int, count: int, *, in_flight: int | None, spread: bool) -> list[Receiver]:
    """Open ``count`` clients, at most ``in_flight`` handshakes at a time (None: all)."""
    loop = asyncio.get_running_loop()
    limit = asyncio.Semaphore(in_flight or count)
    clients: list[Receiver] = []

    async def one(index: int) -> None:
        source = f"127.0.0.{2 + index // SOURCES_PER_ADDRESS}" if spread else None
        async with limit:
            _, client = await loop.create_connection(
                Receiver,
                "127.0.0.1",
                port,
                local_addr=(source, 0) if source else None,
            )
            await client.upgraded
            clients.append(client)

    try:
        await asyncio.wait_for(
            asyncio.gather(*(one(index) for index in range(count))),
            HANDSHAKE_TIMEOUT_S + count / 100,
        )
    except TimeoutError:
        raise TimeoutError(f"only {len(clients)} of {count} clients connected in time") from None
    return clients


async def settled_rss(pid: int, *, quiet_s: float = 1.0, timeout_s: float = 30.0) -> int:
    """The RSS once it has not moved by more than 64 KiB for ``quiet_s``."""
    process = psutil.Process(pid)
    last = process.memory_info().rss
    quiet_since = time.monotonic()
    deadline = quiet_since + timeout_s
    while time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        rss = process.memory_info().rss
        if abs(rss - last) > 65536:
            quiet_since = time.monotonic()
        last = rss
        if time.monotonic() - quiet_since >= quiet_s:
            break
    return last


async def broadcast_and_wait(sender: Receiver, receivers: list[Receiver], tag: str) -> dict:
    """One broadcast from ``sender``; when every receiver has it, and its listenerCount."""
    waits = [client.expect(client.frames + 1) for client in receivers]
    sender_done = sender.expect(sender.frames + 2)  # the broadcast and broadcastResult
    started = time.perf_counter()
    sender.send_text(json.dumps({"type": "broadcast", "payload": tag}))
    times = await asyncio.wait_for(asyncio.gather(*waits), 60)
    await asyncio.wait_for(sender_done, 60)
    result = json.loads(sender.last)
    assert result["type"] == "broadcastResult", result
    return {
        "last_client_ms": (max(times) - started) * 1000,
        "listener_count": result["listenerCount"],
    }


def close_all(clients: Sequence[Receiver]) -> None:
    for client in clients:
        if client.transport is not None:
            client.transport.abort()


async def measure(spec: ServerSpec, mode: str, count: int, cpu: int | None) -> dict:
    with running_server(spec, cpu) as (pid, port, _tail):
        result: dict[str, object] = {"server": spec.name, "mode": mode, "clients": count}
        warm = await connect(port, 50, in_flight=50, spread=False)
        await broadcast_and_wait(warm[0], warm[1:], "warm-up")
        before = await settled_rss(pid)
        clients: list[Receiver] = []
        try:
            if mode == "storm":
                started = time.perf_counter()
                clients = await connect(port, count, in_flight=None, spread=count > 20_000)
                elapsed = time.perf_counter() - started
                result["all_upgraded_s"] = round(elapsed, 3)
                result["handshakes_per_s"] = round(count / elapsed)
                check = await broadcast_and_wait(warm[0], warm[1:] + clients, "storm")
                # Every connection, the warm-up ones included, is registered.
                result["registered"] = check["listener_count"] == count + 50
                result["registered_s"] = round(time.perf_counter() - started, 3)
            else:
                clients = await connect(port, count, in_flight=200, spread=mode == "scale")
                after = await settled_rss(pid)
                result["rss_before_mib"] = round(before / 2**20, 1)
                result["rss_after_mib"] = round(after / 2**20, 1)
                result["kib_per_idle_connection"] = round((after - before) / count / 1024, 2)
                if mode == "scale":
                    check = await broadcast_and_wait(warm[0], warm[1:] + clients, "scale")
                    result["last_client_ms"] = round(check["last_client_ms"], 1)
                    result["registered"] = check["listener_count"] == count + 50
        finally:
            close_all(clients)
            close_all(warm)
        return result


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("mode", choices=("idle", "scale", "storm"))
    parser.add_argument("--servers", default=DEFAULT_SERVERS)
    parser.add_argument("--clients", default=None, help="comma-separated")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--baseline-tree", type=Path, default=None)
    parser.add_argument("--output", type=Path, default=None, help="write the results as JSON")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    servers = args.servers.split(",")
    if args.baseline_tree is not None:
        SERVERS["trio_hub_base"] = baseline_spec(args.baseline_tree.resolve())
        servers.append("trio_hub_base")
    default = {"idle": "5000", "scale": "18000", "storm": "1000,5000"}[args.mode]
    counts = [int(n) for n in (args.clients or default).split(",")]
    raise_open_files_limit()
    available = sorted(os.sched_getaffinity(0))
    server_cpu = available[0] if len(available) >= 2 else None
    if len(available) >= 2:
        os.sched_setaffinity(0, {available[1]})
    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    results = []
    for count in counts:
        for repeat in range(args.repeats):
            for name in servers:
                spec = SERVERS[name]
                reason = spec.unavailable()
                if reason is not None:
                    print(f"SKIPPED {name}: {reason}", file=sys.stderr)
                    continue
                result = run(measure(spec, args.mode, count, server_cpu))
                result["repeat"] = repeat
                results.append(result)
                print(json.dumps(result), flush=True)
    if args.output is not None:
        args.output.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
