"""``python -m trio_hub serve`` against clients of another WebSocket library.

The server is built on trio-websocket and wsproto; the clients here are the
``websockets`` library's asyncio client (plus a raw socket for what no library
sends, such as invalid UTF-8). Passing these tests means that a client which
knows nothing of trio_hub's own stack interoperates with it.

The tests are plain synchronous pytest tests: each runs its asyncio part under
:func:`asyncio.run`, bounded by :data:`LIMIT`. The server runs as a subprocess
on 127.0.0.1, port 0 (its port comes from the ``listening on`` line of its
stderr), and the ``start_server`` fixture kills it whatever happens.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import resource
import signal
import struct
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final, TypeVar

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Origin

from trio_hub import MAX_TOPICS_PER_CLIENT

from .rawws import OP_CLOSE, OP_TEXT, client_frame
from .test_cli import LISTENING, cli

LIMIT: Final = 30.0  # seconds, for the asyncio part of any one test
STARTUP_TIMEOUT: Final = 15.0  # seconds, for the server to print its port or to exit
REPO_ROOT: Final = Path(__file__).resolve().parent.parent

T = TypeVar("T")


# ------------------------------------------------------------------ the server


class ServerProcess:
    """A running ``python -m trio_hub serve``, with its stderr read by a thread.

    The thread keeps reading until the process exits, so that the pipe never
    fills up and blocks the server's logging.
    """

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            cli("--port", "0", *args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=REPO_ROOT,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._eof = False
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        try:
            self.port = int(self.wait_for_line(LISTENING)[1])
        except BaseException:
            self.kill()
            raise

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            with self._changed:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def wait_for_line(
        self, pattern: str | re.Pattern[str], timeout: float = STARTUP_TIMEOUT
    ) -> re.Match[str]:
        """Wait until a line of stderr matches ``pattern``; fail after ``timeout``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    if match := regex.search(line):
                        return match
                seen = len(self.lines)
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    raise AssertionError(f"no line matched {regex.pattern!r}; stderr: {self.lines}")
                self._changed.wait(remaining)

    def stop(self, signum: int = signal.SIGTERM) -> int:
        """Send ``signum``, wait for the exit and the end of stderr; return the exit status."""
        self.process.send_signal(signum)
        status = self.process.wait(STARTUP_TIMEOUT)
        self._reader.join(STARTUP_TIMEOUT)
        return status

    def assert_clean_log(self) -> None:
        """After :meth:`stop`: nothing went wrong inside the server."""
        assert not self._reader.is_alive()
        for line in self.lines:
            assert "Traceback" not in line, self.lines
            assert " ERROR " not in line, self.lines

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(STARTUP_TIMEOUT)
        self._reader.join(STARTUP_TIMEOUT)
        assert self.process.stderr is not None
        self.process.stderr.close()


StartServer = Callable[..., ServerProcess]


@pytest.fixture
def start_server() -> Iterator[StartServer]:
    """Start ``python -m trio_hub serve ARGS...``; every server is killed after the test."""
    started: list[ServerProcess] = []

    def start(*args: str) -> ServerProcess:
        # Plain topics, as other clients know them: history (offsets in the
        # frames) is tested in test_history.py and test_cli.py.
        if "--history-size" not in args:
            args = (*args, "--history-size", "0")
        # A server that fails to start has killed itself already.
        server = ServerProcess(*args)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.kill()


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run the asyncio part of a test, within :data:`LIMIT` seconds."""

    async def bounded() -> T:
        async with asyncio.timeout(LIMIT):
            return await coroutine

    return asyncio.run(bounded())


# ------------------------------------------------------------------ the clients


@asynccontextmanager
async def websocket(
    server: ServerProcess, query: str = "", **options: Any
) -> AsyncIterator[ClientConnection]:
    """A ``websockets`` client connection to ``server``."""
    # No proxy from the environment, ever: the server is on loopback.
    async with connect(server.url + query, proxy=None, open_timeout=10, **options) as connection:
        yield connection


async def send(connection: ClientConnection, type: str, payload: Any = None) -> None:
    await connection.send(json.dumps({"type": type, "payload": payload}))


async def receive(connection: ClientConnection) -> Any:
    return json.loads(await connection.recv())


async def close_code(connection: ClientConnection) -> int:
    """Read until the server closes the connection; return the code it sent.

    The code is 1006 (websockets' "abnormal closure") if no close frame came.
    """
    with contextlib.suppress(ConnectionClosed):
        async for _ in connection:
            pass
    await connection.wait_closed()
    assert connection.close_code is not None
    return connection.close_code


async def refused_status(server: ServerProcess, query: str = "", **options: Any) -> int:
    """Attempt to connect; the server must refuse: return the HTTP status."""
    with pytest.raises(InvalidStatus) as refused:
        async with websocket(server, query, **options):
            pass
    return refused.value.response.status_code


async def raw_exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` over plain TCP, end our side, and return everything the server answers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        writer.write_eof()
        return await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def http_status(response: bytes) -> int:
    status_line = response.split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 "), response[:200]
    return int(status_line.split(b" ", 2)[1])


@asynccontextmanager
async def raw_websocket(
    port: int,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A WebSocket connection over a raw socket, for frames no library would send."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), head
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def raw_close_code(reader: asyncio.StreamReader) -> int:
    """Read server frames until the close frame; return its code."""
    while True:
        first, second = await reader.readexactly(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await reader.readexactly(8))
        payload = await reader.readexactly(length)
        if first & 0x0F == OP_CLOSE:
            return int(struct.unpack("!H", payload[:2])[0])


# ------------------------------------------------------------------ bystanders


class Bystanders:
    """Two well-behaved clients, to show that nobody else loses anything.

    ``listener`` is subscribed to the topic ``news``; ``sender`` broadcasts and
    publishes on it. At the end, the listener must have received exactly what
    was sent, in order, and must still be connected.
    """

    def __init__(self, listener: ClientConnection, sender: ClientConnection) -> None:
        self.listener = listener
        self.sender = sender
        self.expected: list[Any] = []

    async def traffic(self, label: str) -> None:
        """Broadcast ``label`` and publish it on ``news``; check the sender's results."""
        await send(self.sender, "broadcast", label)
        await send(self.sender, "publish", {"topic": "news", "data": label})
        assert await receive(self.sender) == {"type": "broadcast", "payload": label}
        result = await receive(self.sender)
        assert result["type"] == "broadcastResult"
        assert result["payload"] == label
        assert await receive(self.sender) == {
            "type": "publishResult",
            "payload": {"topic": "news", "listenerCount": 1},
        }
        self.expected += [
            {"type": "broadcast", "payload": label},
            {"type": "message", "payload": {"topic": "news", "data": label}},
        ]

    async def assert_nothing_lost(self) -> None:
        await send(self.listener, "echo", "fence")
        received = [await receive(self.listener) for _ in range(len(self.expected) + 1)]
        assert received == [*self.expected, {"type": "echo", "payload": "fence"}]


@asynccontextmanager
async def bystanders(server: ServerProcess) -> AsyncIterator[Bystanders]:
    async with websocket(server) as listener, websocket(server) as sender:
        await send(listener, "subscribe", {"topic": "news"})
        assert await receive(listener) == {"type": "subscribed", "payload": {"topic": "news"}}
        # The sender is registered once it has had an answer.
        await send(sender, "echo", None)
        assert await receive(sender) == {"type": "echo", "payload": None}
        yield Bystanders(listener, sender)


def around_bystanders(server: ServerProcess, action: Callable[[], Awaitable[None]]) -> None:
    """Run ``action`` while bystanders exchange traffic before and after it."""

    async def main() -> None:
        async with bystanders(server) as others:
            await others.traffic("before")
            await action()
            await others.traffic("after")
            await others.assert_nothing_lost()

    run(main())


# -------------------------------------------------------------------- protocol


def test_echo_broadcast_and_topics(start_server: StartServer) -> None:
    server = start_server()

    async def main() -> None:
        async with websocket(server) as alice, websocket(server) as bob, websocket(server) as eve:
            await send(alice, "echo", {"n": [1, 2.5, "é", None, True]})
            assert await receive(alice) == {
                "type": "echo",
                "payload": {"n": [1, 2.5, "é", None, True]},
            }
            await send(alice, "echo")  # no payload: null
            assert await receive(alice) == {"type": "echo", "payload": None}
            for connection in (bob, eve):  # registered once answered
                await send(connection, "echo", "hi")
                await receive(connection)

            await send(alice, "broadcast", {"text": "hello"})
            for connection in (alice, bob, eve):
                assert await receive(connection) == {
                    "type": "broadcast",
                    "payload": {"text": "hello"},
                }
            assert await receive(alice) == {
                "type": "broadcastResult",
                "payload": {"text": "hello"},
                "listenerCount": 3,
            }

            await send(bob, "subscribe", {"topic": "news"})
            assert await receive(bob) == {"type": "subscribed", "payload": {"topic": "news"}}
            await send(alice, "publish", {"topic": "news", "data": {"id": 1}})
            assert await receive(bob) == {
                "type": "message",
                "payload": {"topic": "news", "data": {"id": 1}},
            }
            assert await receive(alice) == {
                "type": "publishResult",
                "payload": {"topic": "news", "listenerCount": 1},
            }
            await send(alice, "publish", {"topic": "news"})  # data defaults to null
            assert await receive(bob) == {
                "type": "message",
                "payload": {"topic": "news", "data": None},
            }
            assert (await receive(alice))["payload"]["listenerCount"] == 1

            await send(bob, "unsubscribe", {"topic": "news"})
            assert await receive(bob) == {"type": "unsubscribed", "payload": {"topic": "news"}}
            await send(alice, "publish", {"topic": "news", "data": 2})
            assert await receive(alice) == {
                "type": "publishResult",
                "payload": {"topic": "news", "listenerCount": 0},
            }

            # Nothing else reached Bob or Eve: the next message each gets is its echo.
            for connection in (bob, eve):
                await send(connection, "echo", "fence")
                assert await receive(connection) == {"type": "echo", "payload": "fence"}

    run(main())
    assert server.stop() == 0
    server.assert_clean_log()


# ------------------------------------------------------------------- bad input

# Every case runs against a server with a 1000-byte message limit, while
# bystanders exchange traffic before and after.
BAD_INPUT_ARGS: Final = ("--max-message-size", "1000")


async def expect_error(server: ServerProcess, *frames: str, code: str) -> None:
    """Send ``frames``; the last one's answer is ``error`` ``code``, and the connection stays."""
    async with websocket(server) as offender:
        for frame in frames:
            await offender.send(frame)
        *_, reply = [await receive(offender) for _ in frames]
        assert reply["type"] == "error", reply
        assert reply["payload"]["code"] == code, reply
        assert isinstance(reply["payload"]["detail"], str)
        assert reply["payload"]["detail"]
        # The connection stays open and usable.
        await send(offender, "echo", "still here")
        assert await receive(offender) == {"type": "echo", "payload": "still here"}


async def malformed_json(server: ServerProcess) -> None:
    await expect_error(server, "{not json", code="invalid_json")


async def not_an_envelope(server: ServerProcess) -> None:
    await expect_error(server, '["echo", 1]', code="invalid_envelope")
    await expect_error(server, '{"payload": 1}', code="invalid_envelope")
    await expect_error(server, '{"type": "echo", "extra": 1}', code="invalid_envelope")


async def unknown_type(server: ServerProcess) -> None:
    await expect_error(server, '{"type": "nope", "payload": 1}', code="unknown_type")


async def invalid_payload(server: ServerProcess) -> None:
    for payload in ['"news"', '{"topic": ""}', '{"topic": 1}', '{"topic": "t", "data": 2}']:
        await expect_error(
            server, f'{{"type": "subscribe", "payload": {payload}}}', code="invalid_payload"
        )


async def too_many_topics(server: ServerProcess) -> None:
    subscribes = [
        json.dumps({"type": "subscribe", "payload": {"topic": f"t{index}"}})
        for index in range(MAX_TOPICS_PER_CLIENT + 1)
    ]
    await expect_error(server, *subscribes, code="limit_exceeded")


async def binary_frame(server: ServerProcess) -> None:
    async with websocket(server) as offender:
        await offender.send(b'{"type": "echo"}')
        assert await close_code(offender) == 1003


async def invalid_utf8(server: ServerProcess) -> None:
    async with raw_websocket(server.port) as (reader, writer):
        writer.write(client_frame(OP_TEXT, b'{"type": "echo", "payload": "\xff\xfe"}'))
        assert await raw_close_code(reader) == 1007


async def oversized_message(server: ServerProcess) -> None:
    async with websocket(server, compression=None) as offender:
        await send(offender, "echo", "x" * 900)  # within the limit
        assert (await receive(offender))["payload"] == "x" * 900
        await send(offender, "echo", "x" * 2000)
        assert await close_code(offender) == 1009


async def tcp_garbage(server: ServerProcess) -> None:
    for garbage in [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64),  # a TLS hello
        b"\x00\xff garbage \r\n\r\n",
        b"HELLO\r\n\r\n",
        b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
    ]:
        response = await raw_exchange(server.port, garbage)
        assert http_status(response) == 400, garbage
        assert b"Traceback" not in response


async def not_an_upgrade(server: ServerProcess) -> None:
    host = f"Host: 127.0.0.1:{server.port}\r\n"
    for request, status in [
        (f"GET /nowhere HTTP/1.1\r\n{host}Connection: close\r\n\r\n", 404),
        (f"POST / HTTP/1.1\r\n{host}Content-Length: 0\r\n\r\n", 405),
        (
            # An upgrade with a version the server does not speak.
            f"GET / HTTP/1.1\r\n{host}Upgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            426,
        ),
        (
            f"GET / HTTP/1.1\r\n{host}Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            400,
        ),
    ]:
        response = await raw_exchange(server.port, request.encode())
        assert http_status(response) == status, request
        head, _, body = response.partition(b"\r\n\r\n")
        assert f"Content-Length: {len(body)}".encode() in head
        assert body


BAD_INPUTS: Final = [
    malformed_json,
    not_an_envelope,
    unknown_type,
    invalid_payload,
    too_many_topics,
    binary_frame,
    invalid_utf8,
    oversized_message,
    tcp_garbage,
    not_an_upgrade,
]


@pytest.mark.parametrize("bad_input", BAD_INPUTS, ids=lambda case: case.__name__)
def test_bad_input_is_answered_and_nobody_else_loses_anything(
    start_server: StartServer, bad_input: Callable[[ServerProcess], Awaitable[None]]
) -> None:
    server = start_server(*BAD_INPUT_ARGS)
    around_bystanders(server, lambda: bad_input(server))
    assert server.stop() == 0
    server.assert_clean_log()


# ---------------------------------------------------------------- handshake


def test_auth_token_refuses_with_401_and_admits_with_the_header_or_query(
    start_server: StartServer,
) -> None:
    token = "s3cret/t+ken"
    server = start_server("--auth-token", token)

    async def main() -> None:
        assert await refused_status(server) == 401
        assert await refused_status(server, "?token=wrong") == 401
        assert (
            await refused_status(server, additional_headers={"Authorization": "Bearer wrong"})
            == 401
        )
        async with websocket(
            server, additional_headers={"Authorization": f"Bearer {token}"}
        ) as by_header:
            await send(by_header, "echo", "header")
            assert await receive(by_header) == {"type": "echo", "payload": "header"}
        async with websocket(server, "?token=s3cret%2Ft%2Bken") as by_query:
            await send(by_query, "echo", "query")
            assert await receive(by_query) == {"type": "echo", "payload": "query"}

    run(main())
    server.wait_for_line(r"rejected \(401\)")
    assert server.stop() == 0
    server.assert_clean_log()
    assert all(token not in line for line in server.lines)


def test_origin_must_match_the_host_or_be_allowed(start_server: StartServer) -> None:
    default = start_server()
    allowing = start_server("--allowed-origin", "http://app.example")

    async def main() -> None:
        for server in (default, allowing):
            own = Origin(f"http://127.0.0.1:{server.port}")
            async with websocket(server, origin=own) as same_host:
                await send(same_host, "echo", 1)
                assert (await receive(same_host))["payload"] == 1
            assert await refused_status(server, origin=Origin("http://evil.example")) == 403
            async with websocket(server) as no_origin:  # not a browser: no Origin header
                await send(no_origin, "echo", 2)
                assert (await receive(no_origin))["payload"] == 2
        assert await refused_status(default, origin=Origin("http://app.example")) == 403
        async with websocket(allowing, origin=Origin("http://app.example")) as allowed:
            await send(allowed, "echo", 3)
            assert (await receive(allowed))["payload"] == 3

    run(main())
    for server in (default, allowing):
        assert server.stop() == 0
        server.assert_clean_log()


def test_past_the_connection_limit_503_and_connected_clients_are_unharmed(
    start_server: StartServer,
) -> None:
    server = start_server("--max-connections", "2")

    async def main() -> None:
        async with bystanders(server) as others:
            await others.traffic("before")
            for _ in range(3):
                assert await refused_status(server) == 503
            await others.traffic("after")
            await others.assert_nothing_lost()

    run(main())
    server.wait_for_line(r"refused, connection limit reached")
    assert server.stop() == 0
    server.assert_clean_log()


def test_a_client_that_never_completes_the_handshake_is_dropped(
    start_server: StartServer,
) -> None:
    server = start_server("--handshake-timeout", "1")

    async def silent_and_partial() -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        silent = await asyncio.open_connection("127.0.0.1", server.port)
        partial = await asyncio.open_connection("127.0.0.1", server.port)
        partial[1].write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
        for reader, writer in (silent, partial):
            # The server closes the connection without a word (EOF, no response).
            assert await reader.read() == b""
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        assert loop.time() - started >= 0.9

    around_bystanders(server, silent_and_partial)
    server.wait_for_line(r"no handshake within 1\.0s; dropped")
    assert server.stop() == 0
    server.assert_clean_log()


# -------------------------------------------------------------------- shutdown


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_closes_every_client_with_1001_and_exits_0(
    start_server: StartServer, signum: signal.Signals
) -> None:
    server = start_server()

    async def main() -> None:
        async with websocket(server) as alice, websocket(server) as bob:
            for connection in (alice, bob):
                await send(connection, "echo", None)
                await receive(connection)
            await send(alice, "broadcast", "before")
            assert (await receive(alice))["type"] == "broadcast"
            assert (await receive(alice))["type"] == "broadcastResult"
            server.process.send_signal(signum)
            # What was promised before the signal is delivered, then 1001.
            assert await receive(bob) == {"type": "broadcast", "payload": "before"}
            assert await close_code(alice) == 1001
            assert await close_code(bob) == 1001

    run(main())
    assert server.process.wait(STARTUP_TIMEOUT) == 0
    server.wait_for_line(rf"{signum.name} received: shutting down")
    server.wait_for_line(r"shut down cleanly")
    server.kill()  # only joins the reader: the process has exited
    server.assert_clean_log()


# ------------------------------------------------------------------------ load

CLIENTS: Final = 200
BROADCASTS: Final = 100


@pytest.fixture
def enough_file_descriptors() -> Iterator[None]:
    """Raise the soft RLIMIT_NOFILE for this process (and the server it starts)."""
    needed = 4 * CLIENTS + 256  # both ends of every connection, and some slack
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        assert hard == resource.RLIM_INFINITY or hard >= needed, (
            f"RLIMIT_NOFILE's hard limit {hard} is below the {needed} this test needs"
        )
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.usefixtures("enough_file_descriptors")
def test_every_client_receives_every_broadcast_in_order(start_server: StartServer) -> None:
    server = start_server()
    payloads = [{"seq": sequence, "pad": "x" * 100} for sequence in range(BROADCASTS)]

    async def registered(stack: contextlib.AsyncExitStack) -> ClientConnection:
        connection = await stack.enter_async_context(websocket(server))
        # Registered with the hub once it has had an answer.
        await send(connection, "echo", "registered")
        assert await receive(connection) == {"type": "echo", "payload": "registered"}
        return connection

    async def receive_all(connection: ClientConnection) -> list[Any]:
        return [await receive(connection) for _ in range(BROADCASTS)]

    async def main() -> tuple[list[Any], list[list[Any]]]:
        async with contextlib.AsyncExitStack() as stack:
            sender, *listeners = await asyncio.gather(
                *(registered(stack) for _ in range(CLIENTS + 1))
            )
            receiving = [asyncio.create_task(receive_all(each)) for each in listeners]
            for payload in payloads:
                await send(sender, "broadcast", payload)
            results = []
            for payload in payloads:
                assert await receive(sender) == {"type": "broadcast", "payload": payload}
                results.append(await receive(sender))
            return results, await asyncio.gather(*receiving)

    started = time.monotonic()
    results, received = run(main())
    elapsed = time.monotonic() - started
    assert [result["listenerCount"] for result in results] == [CLIENTS + 1] * BROADCASTS
    assert len(received) == CLIENTS
    expected = [{"type": "broadcast", "payload": payload} for payload in payloads]
    for messages in received:
        assert messages == expected
    assert server.stop() == 0
    server.assert_clean_log()
    assert not any("evicted" in line for line in server.lines)
    print(f"{CLIENTS} clients x {BROADCASTS} broadcasts: {elapsed:.2f} s")


# ------------------------------------------------------------ compression


def test_compression_is_on_by_default_and_off_with_the_flag(start_server: StartServer) -> None:
    # The websockets client offers permessage-deflate unless told not to.
    big = {"lines": [{"user": f"u{n % 5}", "text": f"line {n}"} for n in range(100)]}
    expected = {"type": "broadcast", "payload": big}

    async def check(server: ServerProcess, negotiated: bool) -> None:
        async with websocket(server) as offering, websocket(server, compression=None) as plain:
            names = [extension.name for extension in offering.protocol.extensions]
            assert names == (["permessage-deflate"] if negotiated else [])
            assert plain.protocol.extensions == []
            for connection in (offering, plain):  # registered once answered
                await send(connection, "echo", "hi")
                await receive(connection)
            await send(offering, "broadcast", big)  # compressed inbound too
            assert await receive(offering) == expected
            assert await receive(plain) == expected

    run(check(start_server(), negotiated=True))
    run(check(start_server("--compression", "off"), negotiated=False))
