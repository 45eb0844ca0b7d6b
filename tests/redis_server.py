"""Throwaway ``redis-server`` processes for the Redis backend's tests, and their helpers.

Each server listens on a free loopback port, keeps nothing on disk
(``--save '' --appendonly no``), and is killed when the test is done. When
``redis-server`` is not installed, the tests that need it fail (never skip) and
say what to install.

Also here, for every test that uses Redis: hub nodes in their own processes
(:class:`NodeProcess`, :func:`node_cluster`), and waits for Redis' state
(:func:`wait_for_subscribers` and the others). Those waits poll, in small steps
under the caller's time limit: what they wait for is another process's state,
which no event here can report.
"""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Final

import coredis
import pytest
import trio

if TYPE_CHECKING:
    from trio_hub.backends.redis import RedisBackend

STARTUP_TIMEOUT: Final = 10.0  # seconds, for a server or a node to be ready
POLL: Final = 0.01  # seconds between two looks at Redis' state

REPO_ROOT: Final = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """Return a loopback port that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_line(process: subprocess.Popen[bytes], stream: IO[bytes], needle: bytes) -> bytes:
    """Read ``stream`` until a line contains ``needle``; return that line.

    Bounded by :data:`STARTUP_TIMEOUT`. Fails with the output read so far if
    the process exits or the time runs out first.
    """
    deadline = time.monotonic() + STARTUP_TIMEOUT
    seen: list[bytes] = []
    buffered = b""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if not selector.select(remaining):
                continue
            chunk = os.read(stream.fileno(), 65536)
            if not chunk:
                break
            buffered += chunk
            *lines, buffered = buffered.split(b"\n")
            for line in lines:
                seen.append(line)
                if needle in line:
                    return line
    process.kill()
    process.wait()
    output = b"\n".join([*seen, buffered]).decode(errors="replace")
    pytest.fail(f"{process.args!r} did not print {needle!r} in time; its output:\n{output}")


class RedisServer:
    """A ``redis-server`` on 127.0.0.1 that a test can kill and restart on the same port."""

    def __init__(self) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            pytest.fail(
                "redis-server is not installed, and the Redis backend's tests need it: "
                "apt-get install redis-server (Debian/Ubuntu) or brew install redis (macOS)"
            )
        self.executable = executable
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> RedisServer:
        """Start the server for the ``with`` block; it is killed at the end."""
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.kill()

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server (again, on the same port); return once it accepts connections."""
        assert not self.running
        # fmt: off
        process = subprocess.Popen(
            [
                self.executable,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--logfile", "",
                "--loglevel", "notice",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        # fmt: on
        self._process = process
        assert process.stdout is not None
        wait_for_line(process, process.stdout, b"Ready to accept connections")

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open, nothing answers."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Undo :meth:`pause` (SIGCONT)."""
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        process = self._process
        if process is None:
            return
        self._process = None
        if process.poll() is None:
            process.kill()
        process.wait(STARTUP_TIMEOUT)
        assert process.stdout is not None
        process.stdout.close()


class NodeProcess:
    """A hub node in its own process, serving WebSockets: ``python -m MODULE ARGS...``.

    The module (``tests.redis_node``, ``tests.presence_node``) prints
    ``listening on ws://127.0.0.1:PORT/`` on stderr once it serves.
    """

    def __init__(self, module: str, *args: str) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert self._process.stderr is not None
        line = wait_for_line(self._process, self._process.stderr, b"listening on ws://")
        self.url = line.decode().rpartition("listening on ")[2].strip()
        self.port = int(self.url.rstrip("/").rpartition(":")[2])

    def stop(self) -> int:
        """Stop the node (SIGTERM), wait for it, and return its exit status."""
        if self._process.poll() is None:
            self._process.terminate()
        return self._reap()

    def kill(self) -> None:
        """Kill the node at once (SIGKILL), as a crash would."""
        if self._process.poll() is None:
            self._process.kill()
        self._reap()

    def _reap(self) -> int:
        status = self._process.wait(STARTUP_TIMEOUT)
        assert self._process.stderr is not None
        self._process.stderr.close()
        return status


@dataclass
class Cluster:
    """One redis-server and three ``tests/redis_node.py`` processes on it."""

    redis_url: str
    prefix: str
    nodes: list[NodeProcess]


@contextmanager
def node_cluster(name: str, *node_args: str) -> Iterator[Cluster]:
    """Start a :class:`Cluster` under a fresh prefix ``NAME-...``; stop it on the way out.

    ``node_args`` go to each node after the Redis URL and the prefix (see
    ``tests/redis_node.py``).
    """
    with RedisServer() as server:
        nodes: list[NodeProcess] = []
        try:
            prefix = f"{name}-{uuid.uuid4().hex[:8]}"
            nodes.extend(
                NodeProcess("tests.redis_node", server.url, prefix, *node_args) for _ in range(3)
            )
            yield Cluster(server.url, prefix, nodes)
        finally:
            for node in nodes:
                node.stop()


# ------------------------------------------------------- Redis' state


@asynccontextmanager
async def redis_client(url: str) -> AsyncIterator[coredis.Redis[bytes]]:
    """A plain coredis client, to look at Redis' side."""
    async with coredis.Redis.from_url(url) as client:
        yield client


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    """Poll ``check`` until it holds; the caller's ``fail_after`` bounds it."""
    # Polling, not an event: what changes is another process's state (Redis'),
    # or the backend's view of it, which offers no event to wait on.
    while not await check():  # noqa: ASYNC110
        await trio.sleep(POLL)


async def wait_for_channels(url: str, expected: set[bytes]) -> None:
    """Wait until ``PUBSUB CHANNELS`` is exactly ``expected``."""
    async with redis_client(url) as client:

        async def matches() -> bool:
            return await client.pubsub_channels() == expected

        await eventually(matches)


async def wait_for_subscribers(url: str, expected: dict[str, int]) -> None:
    """Wait until ``PUBSUB NUMSUB`` gives each channel its expected count."""
    async with redis_client(url) as client:

        async def matches() -> bool:
            counts = await client.pubsub_numsub(*expected)
            return {channel.decode(): count for channel, count in counts.items()} == expected

        await eventually(matches)


async def wait_for_state(backend: RedisBackend, state: str) -> None:
    """Wait until the backend reports ``state`` (it follows Redis' process)."""

    async def matches() -> bool:
        await trio.lowlevel.checkpoint()
        return backend.statistics().state == state

    await eventually(matches)
