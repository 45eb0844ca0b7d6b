"""``python -m trio_hub serve`` as a subprocess, driven by real WebSocket clients.

Each test starts the server on 127.0.0.1, port 0, and finds the port in the
``listening on ws://HOST:PORT/`` line that the server logs to stderr. Every wait
has a time limit, and the server process is killed whatever happens.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final
from unittest.mock import ANY
from urllib.parse import quote

import pytest
import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    open_websocket,
)

LIMIT: Final = 30  # seconds, for any one test
LISTENING: Final = re.compile(r"listening on ws://127\.0\.0\.1:(\d+)/")
# One event per line: every line starts with a timestamp and a level.
LOG_LINE: Final = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) ")


class ServerProcess:
    """A running ``python -m trio_hub serve`` and what it has logged so far."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self.port = 0
        self._new_line = trio.Event()
        self._eof = False

    async def pump_stderr(self) -> None:
        # Read stderr to the end, so that the pipe never fills and blocks the
        # server, and keep every line for the test to inspect.
        assert self.process.stderr is not None
        buffer = b""
        async with self.process.stderr:
            while data := await self.process.stderr.receive_some():
                buffer += data
                *complete, buffer = buffer.split(b"\n")
                for raw in complete:
                    self.lines.append(raw.decode())
                self._wake()
        if buffer:
            self.lines.append(buffer.decode())
        self._eof = True
        self._wake()

    def _wake(self) -> None:
        self._new_line.set()
        self._new_line = trio.Event()

    async def wait_for_line(self, pattern: str | re.Pattern[str]) -> re.Match[str]:
        """Wait until a line matches ``pattern`` (from the start of the output)."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        seen = 0
        while True:
            for line in self.lines[seen:]:
                if match := regex.search(line):
                    return match
            seen = len(self.lines)
            if self._eof:
                raise AssertionError(f"no line matched {regex.pattern!r}; stderr was: {self.lines}")
            await self._new_line.wait()

    async def wait_exit(self) -> int:
        return await self.process.wait()


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "trio_hub", "serve", "--host", "127.0.0.1", *args]


@asynccontextmanager
async def running_server(
    *args: str, env: dict[str, str] | None = None
) -> AsyncIterator[ServerProcess]:
    """Start the server with ``args`` (port 0 unless given); kill it on the way out."""
    if "--port" not in args:
        args = ("--port", "0", *args)
    process = await trio.lowlevel.open_process(
        cli(*args),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    server = ServerProcess(process)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.pump_stderr)
            try:
                with trio.fail_after(15):
                    server.port = int((await server.wait_for_line(LISTENING))[1])
                yield server
            finally:
                with trio.CancelScope(shield=True):
                    if process.returncode is None:
                        process.kill()
                    with trio.move_on_after(10):
                        await process.wait()
    finally:
        if process.returncode is None:  # the wait above timed out
            process.kill()


@asynccontextmanager
async def client(
    port: int, resource: str = "/", headers: list[tuple[bytes, bytes]] | None = None
) -> AsyncIterator[WebSocketConnection]:
    """A real trio-websocket client connection."""
    connection: WebSocketConnection | None = None
    try:
        async with open_websocket(
            "127.0.0.1", port, resource, use_ssl=False, extra_headers=headers, connect_timeout=10
        ) as connection:
            yield connection
    finally:
        # trio-websocket's client leaves its socket open when the server starts
        # the close handshake; close it so that no ResourceWarning escapes.
        if connection is not None:
            await trio.aclose_forcefully(connection._stream)


async def upgrade_status(
    port: int, resource: str = "/", headers: dict[str, str] | None = None
) -> int:
    """Attempt a WebSocket upgrade by hand; return the HTTP status of the answer.

    Used for refusals: trio-websocket's client leaks its socket when the
    server refuses the upgrade.
    """
    lines = [
        f"GET {resource} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
        response = b""
        while b"\r\n" not in response and (data := await stream.receive_some()):
            response += data
    return int(response.split(b" ", 2)[1])


async def request(connection: WebSocketConnection, type: str, payload: Any = None) -> None:
    await connection.send_message(json.dumps({"type": type, "payload": payload}))


async def receive(connection: WebSocketConnection) -> Any:
    return json.loads(await connection.get_message())


async def close_code(connection: WebSocketConnection) -> int | None:
    """Read until the server closes the connection; return the close code."""
    while True:
        try:
            await connection.get_message()
        except ConnectionClosed as closed:
            return None if closed.reason is None else closed.reason.code


async def http_get(port: int, target: str = "/") -> tuple[str, bytes]:
    """A plain HTTP/1.1 GET; returns the status line and the body."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(
            f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()
        )
        response = b""
        while data := await stream.receive_some():
            response += data
    head, _, body = response.partition(b"\r\n\r\n")
    return head.decode().split("\r\n")[0], body


# ------------------------------------------------------------------ protocol


async def test_echo_broadcast_and_topics_end_to_end() -> None:
    with trio.fail_after(LIMIT):
        async with (
            running_server() as server,
            client(server.port) as alice,
            client(server.port) as bob,
        ):
            await request(alice, "echo", {"n": [1, "é"]})
            assert await receive(alice) == {"type": "echo", "payload": {"n": [1, "é"]}}

            await request(alice, "broadcast", "hello")
            assert await receive(alice) == {"type": "broadcast", "payload": "hello"}
            assert await receive(alice) == {
                "type": "broadcastResult",
                "payload": "hello",
                "listenerCount": 2,
            }
            assert await receive(bob) == {"type": "broadcast", "payload": "hello"}

            await request(bob, "subscribe", {"topic": "news"})
            # The server keeps history by default: positions come with it.
            assert await receive(bob) == {
                "type": "subscribed",
                "payload": {"topic": "news", "offset": 0, "epoch": ANY},
            }
            await request(alice, "publish", {"topic": "news", "data": {"id": 1}})
            assert await receive(alice) == {
                "type": "publishResult",
                "payload": {"topic": "news", "listenerCount": 1},
            }
            assert await receive(bob) == {
                "type": "message",
                "payload": {"topic": "news", "data": {"id": 1}, "offset": 1},
            }
            await request(bob, "unsubscribe", {"topic": "news"})
            assert await receive(bob) == {
                "type": "unsubscribed",
                "payload": {"topic": "news"},
            }
            await request(alice, "publish", {"topic": "news", "data": 2})
            assert (await receive(alice))["payload"]["listenerCount"] == 0

            await request(alice, "nope")
            reply = await receive(alice)
            assert reply["type"] == "error"
            assert reply["payload"]["code"] == "unknown_type"
            await alice.send_message("{not json")
            assert (await receive(alice))["payload"]["code"] == "invalid_json"

            # Bob got nothing else meanwhile, and Alice is still connected.
            await request(bob, "echo", "last")
            assert await receive(bob) == {"type": "echo", "payload": "last"}
            await request(alice, "echo", "still here")
            assert await receive(alice) == {"type": "echo", "payload": "still here"}


async def test_get_root_serves_the_browser_page() -> None:
    with trio.fail_after(LIMIT):
        async with running_server() as server:
            status, body = await http_get(server.port)
            assert status == "HTTP/1.1 200 OK"
            assert b'id="feed"' in body
            assert b"<script" in body
            # Self-contained: nothing is fetched from anywhere else.
            assert b"http://" not in body
            assert b"https://" not in body


# ---------------------------------------------------------------------- auth


@pytest.mark.parametrize("source", ["option", "environment"])
async def test_auth_token_refuses_with_401_and_admits_with_header_or_query(source: str) -> None:
    # "+" and "/" must be percent-encoded in a query ("+" would mean a space).
    token = "s3cret/t+ken"
    args, env = (("--auth-token", token), {}) if source == "option" else ((), {})
    if source == "environment":
        env["TRIO_HUB_AUTH_TOKEN"] = token
    with trio.fail_after(LIMIT):
        async with running_server(*args, env=env) as server:
            for resource, headers in [
                ("/", {}),
                ("/?token=wrong", {}),
                ("/?token=s3cret/t+ken", {}),
                ("/", {"Authorization": "Bearer wrong"}),
                ("/", {"Authorization": f"Basic {token}"}),
                ("/", {"Authorization": f"Bearer{token}"}),
            ]:
                assert await upgrade_status(server.port, resource, headers) == 401, (
                    resource,
                    headers,
                )
            await server.wait_for_line(r"rejected \(401\)")

            bearer = [(b"authorization", f"bearer {token}".encode())]
            query = f"/?token={quote(token, safe='')}"
            for resource, extra in [("/", bearer), (query, None)]:
                async with client(server.port, resource, extra) as connection:
                    await request(connection, "echo", "in")
                    assert await receive(connection) == {"type": "echo", "payload": "in"}
    assert all(token not in line for line in server.lines)


# ------------------------------------------------------------------ options


async def test_limit_options_reach_the_server() -> None:
    with trio.fail_after(LIMIT):
        async with (
            running_server(
                "--max-connections",
                "1",
                "--max-message-size",
                "100",
                "--allowed-origin",
                "http://app.example",
            ) as server,
            client(server.port, headers=[(b"origin", b"http://app.example")]) as first,
        ):
            assert await upgrade_status(server.port) == 503
            await request(first, "echo", "x" * 50)
            assert (await receive(first))["payload"] == "x" * 50
            await request(first, "echo", "x" * 200)
            assert await close_code(first) == 1009


async def test_origin_must_match_the_host_by_default() -> None:
    with trio.fail_after(LIMIT):
        async with running_server() as server:
            assert (
                await upgrade_status(server.port, headers={"Origin": "http://evil.example"}) == 403
            )
            same = f"http://127.0.0.1:{server.port}".encode()
            async with client(server.port, headers=[(b"origin", same)]) as connection:
                await request(connection, "echo", 1)
                assert (await receive(connection))["payload"] == 1


async def stuck_client(port: int) -> trio.SocketStream:
    """A WebSocket client that completes the upgrade and then never reads."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    return stream


async def broadcast_until_listeners_drop(sender: WebSocketConnection, limit: int) -> int:
    """Broadcast 60 kB at a time until only the sender listens; return how many it took."""
    for count in range(1, limit + 1):
        await request(sender, "broadcast", "x" * 60_000)
        assert (await receive(sender))["type"] == "broadcast"
        if (await receive(sender))["listenerCount"] == 1:
            return count
    return limit + 1


async def test_slow_client_policy_and_queue_size_reach_the_hub() -> None:
    # A client that never reads, behind a one-message queue: under the default
    # policy it is evicted with 4000 once the socket buffers and the queue are
    # full; under drop-newest it stays through three times as many broadcasts
    # (the write timeout is long enough not to cut in).
    with trio.fail_after(LIMIT):
        async with (
            running_server("--queue-size", "1", "--write-timeout", "1") as server,
            await stuck_client(server.port),
        ):
            await server.wait_for_line(r"client #1 connected")
            async with client(server.port) as sender:
                needed = await broadcast_until_listeners_drop(sender, 2000)
                assert needed <= 2000
            await server.wait_for_line(r"client #1 evicted: queue full")
            await server.wait_for_line(r"client #1 disconnected: code 4000")

        async with running_server(
            "--queue-size", "1", "--slow-client-policy", "drop-newest", "--write-timeout", "20"
        ) as server:
            async with await stuck_client(server.port):
                await server.wait_for_line(r"client #1 connected")
                async with client(server.port) as sender:
                    assert await broadcast_until_listeners_drop(sender, 3 * needed) > 3 * needed
            assert not any("evicted" in line for line in server.lines)


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (("--port", "70000"), "a port is 0 to 65535"),
        (("--queue-size", "0"), "must be at least 1"),
        (("--ping-interval", "soon"), "not a number"),
        (("--write-timeout", "0"), "must be more than 0"),
        (("--slow-client-policy", "ignore"), "invalid choice"),
        (("--log-level", "loud"), "invalid choice"),
    ],
)
async def test_bad_option_values_exit_2_with_a_message(
    args: tuple[str, ...], complaint: str
) -> None:
    with trio.fail_after(LIMIT):
        result = await trio.run_process(
            cli(*args), capture_stdout=True, capture_stderr=True, check=False
        )
    assert result.returncode == 2
    assert complaint in result.stderr.decode()
    assert b"Traceback" not in result.stderr


async def test_a_port_in_use_exits_1_with_one_clear_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with trio.fail_after(LIMIT):
            result = await trio.run_process(
                cli("--port", str(port)), capture_stdout=True, capture_stderr=True, check=False
            )
    assert result.returncode == 1
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in lines[0]


async def test_help_lists_every_option_with_its_default() -> None:
    with trio.fail_after(LIMIT):
        result = await trio.run_process(
            [sys.executable, "-m", "trio_hub", "serve", "--help"], capture_stdout=True
        )
    # Undo argparse's line wrapping, so that an option and its default can be matched.
    text = " ".join(result.stdout.decode().split())
    expected = {
        "--host": "(default: 127.0.0.1)",
        "--port": "(default: 8000)",
        "--queue-size": "(default: 256)",
        "--slow-client-policy": "(default: evict)",
        "--ping-interval": "(default: 20.0)",
        "--pong-timeout": "(default: 20.0)",
        "--write-timeout": "(default: 10.0)",
        "--drain-timeout": "(default: 5.0)",
        "--max-message-size": "(default: 1048576)",
        "--max-connections": "(default: no limit)",
        "--handshake-timeout": "(default: 10.0)",
        "--allowed-origin": "(default: none",
        "--auth-token": "(default: $TRIO_HUB_AUTH_TOKEN if set, else no authentication)",
        "--log-level": "(default: info)",
    }
    for option, default in expected.items():
        # The option's own help entry (after the usage summary) holds its default.
        entry = text[text.index(option + " ", text.index("options:")) :]
        following = [other for other in expected if other != option and other in entry]
        end = min((entry.index(other) for other in following), default=len(entry))
        assert default in entry[:end], option
    assert "evict,drop-newest,drop-oldest" in text
    assert "debug,info,warning,error" in text


# ------------------------------------------------------------------ shutdown


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_a_signal_closes_every_client_with_1001_and_exits_0(signum: int) -> None:
    with trio.fail_after(LIMIT):
        async with running_server() as server:
            async with client(server.port) as alice, client(server.port) as bob:
                # Both registered: each has had an answer.
                for connection in (alice, bob):
                    await request(connection, "echo", None)
                    await receive(connection)
                await request(alice, "broadcast", "before")
                assert (await receive(alice))["type"] == "broadcast"
                assert (await receive(alice))["type"] == "broadcastResult"
                server.process.send_signal(signum)
                assert await receive(bob) == {"type": "broadcast", "payload": "before"}
                assert await close_code(alice) == 1001
                assert await close_code(bob) == 1001
            assert await server.wait_exit() == 0
            await server.wait_for_line(rf"{signal.Signals(signum).name} received: shutting down")
            await server.wait_for_line(r"shut down cleanly")
    assert not any("Traceback" in line for line in server.lines)


async def test_logs_one_line_per_event() -> None:
    with trio.fail_after(LIMIT):
        async with running_server() as server:
            async with client(server.port) as connection:
                await request(connection, "echo", None)
                await receive(connection)
            await server.wait_for_line(r"client #1 connected from 127\.0\.0\.1:\d+")
            await server.wait_for_line(r"client #1 disconnected: code 1000")
            server.process.send_signal(signal.SIGTERM)
            assert await server.wait_exit() == 0
            await server.wait_for_line(r"shut down cleanly")
    assert len([line for line in server.lines if LISTENING.search(line)]) == 1
    for line in server.lines:
        assert LOG_LINE.match(line), line


async def test_listening_line_is_printed_at_any_log_level() -> None:
    with trio.fail_after(LIMIT):
        async with running_server("--log-level", "warning") as server:
            async with client(server.port) as connection:
                await request(connection, "echo", None)
                await receive(connection)
            server.process.send_signal(signal.SIGTERM)
            assert await server.wait_exit() == 0
            await server.wait_for_line(r"^$|.")  # stderr is read to its end
    assert [line for line in server.lines if line] == [
        f"listening on ws://127.0.0.1:{server.port}/"
    ]


@pytest.mark.parametrize("full_tracebacks", [False, True])
def test_errors_are_logged_on_one_line_unless_debugging(full_tracebacks: bool) -> None:
    from trio_hub.__main__ import _OneLineFormatter

    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        record = logging.LogRecord(
            "trio_hub", logging.ERROR, __file__, 1, "client #%d failed", (3,), sys.exc_info()
        )
    text = _OneLineFormatter(full_tracebacks=full_tracebacks).format(record)
    assert "client #3 failed" in text
    assert "ValueError: boom" in text
    if full_tracebacks:
        assert "Traceback (most recent call last)" in text
    else:
        assert "\n" not in text
        assert "(at test_cli.py:" in text
        assert LOG_LINE.match(text)
