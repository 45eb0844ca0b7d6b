"""Throwaway ``redis-server`` processes for the Redis backend's tests.

Each server listens on a free loopback port, keeps nothing on disk
(``--save '' --appendonly no``), and is killed when the test is done. When
``redis-server`` is not installed, the tests that need it fail (never skip) and
say what to install.
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
from pathlib import Path
from typing import IO, Final

import pytest

STARTUP_TIMEOUT: Final = 10.0  # seconds, for a server or a node to be ready

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
    """A hub node (``tests/redis_node.py``) in its own process, serving WebSockets."""

    def __init__(self, redis_url: str, *, prefix: str, history_size: int | None = None) -> None:
        history = [] if history_size is None else [str(history_size)]
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tests.redis_node", redis_url, prefix, *history],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert self._process.stderr is not None
        line = wait_for_line(self._process, self._process.stderr, b"listening on ws://")
        self.url = line.decode().rpartition("listening on ")[2].strip()
        self.port = int(self.url.rstrip("/").rpartition(":")[2])

    def stop(self) -> None:
        """Stop the node (SIGTERM) and wait for it."""
        if self._process.poll() is None:
            self._process.terminate()
        self._process.wait(STARTUP_TIMEOUT)
        assert self._process.stderr is not None
        self._process.stderr.close()
