"""trio_hub.asgi: the ASGI transport under real Hypercorn (Trio worker), and Quart-Trio.

Every server binds 127.0.0.1 on port 0, every client is a real WebSocket client
(trio-websocket), and every test that touches the network has a time limit.
"""

from __future__ import annotations

import importlib.util
import json
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
import trio
import trio.testing
from hypercorn.config import Config
from hypercorn.trio import serve
from hypercorn.utils import LifespanFailureError
from trio_websocket import WebSocketConnection

from trio_hub import Client, CloseCode, Hub, Message, TransportClosed, open_hub, protocol_handler
from trio_hub.asgi import (
    ASGIReceive,
    ASGISend,
    ASGITransport,
    HubLifespan,
    QuartTrioHub,
    asgi_transport,
)
from trio_hub.testing import MemoryTransport, memory_connection

from .asgiws import hub_app, hypercorn_serving, quart_hub_app
from .realws import open_client, read_until_closed
from .test_docs import assert_a_publication_reaches_a_subscriber, read_line

LIMIT: Final = 30  # seconds, for a test over real sockets
EXAMPLE: Final = Path(__file__).resolve().parent.parent / "docs" / "examples" / "quart_trio_app.py"
BLOB: Final = "x" * 65536


async def registered(hub: Hub, name: str) -> Client:
    """Wait (without sleeping) until the client named ``name`` is registered."""
    while not (found := [client for client in hub.clients if client.identity == name]):
        await trio.testing.wait_all_tasks_blocked(cushion=0.001)
    return found[0]


# The two ways in: a plain ASGI app, and a Quart-Trio app. Each yields the hub,
# and a function that opens a real client connection by name.
Connect = Callable[[str], AbstractAsyncContextManager[WebSocketConnection]]


@asynccontextmanager
async def plain_asgi(**settings: Any) -> AsyncIterator[tuple[Hub, Connect]]:
    app = hub_app(**settings)
    async with hypercorn_serving(app) as port:
        yield app.hub, lambda name: open_client(port, f"/?name={name}")


@asynccontextmanager
async def quart_trio(**settings: Any) -> AsyncIterator[tuple[Hub, Connect]]:
    app, hub_of_app = quart_hub_app(**settings)
    async with hypercorn_serving(app) as port:
        yield hub_of_app.hub, lambda name: open_client(port, f"/ws/{name}")


APPS: Final = {"plain ASGI": plain_asgi, "Quart-Trio": quart_trio}


# ------------------------------------------------------------ backpressure


@pytest.mark.parametrize("app_kind", list(APPS))
async def test_a_client_that_stops_reading_is_cut_off_within_write_timeout(
    app_kind: str,
) -> None:
    # A queue far larger than what the test sends: the write timeout, not a
    # full queue, must be what ends the slow client.
    write_timeout = 1.0
    with trio.fail_after(LIMIT):
        async with (
            APPS[app_kind](write_timeout=write_timeout, queue_size=10_000, ping_interval=None) as (
                hub,
                connect,
            ),
            connect("alice") as alice,
            connect("slow") as slow,
        ):
            alice_side = await registered(hub, "alice")
            slow_side = await registered(hub, "slow")
            # "slow" never reads: its socket buffers fill, then Hypercorn's
            # send blocks, and the hub's writer waits for it while messages
            # pile up behind. Stop well before the queue is full, so that only
            # write_timeout can end it.
            sent = 0
            # (On a starved machine one write may already outlast write_timeout.)
            while slow_side.statistics().queued < 32 and not slow_side.closed:
                hub.broadcast(Message("blob", {"n": sent, "blob": BLOB}))
                sent += 1
                # Alice keeps up: she reads everything as it comes.
                assert json.loads(await alice.get_message())["payload"]["n"] == sent - 1
                await trio.testing.wait_all_tasks_blocked(cushion=0.01)
            with trio.fail_after(write_timeout + 10):
                await slow_side.wait_closed()
            assert slow_side.close_code == CloseCode.SLOW_CLIENT
            assert "write_timeout" in slow_side.close_reason
            stats = hub.statistics()
            assert (stats.evictions, stats.clients) == (1, 1)
            # Cut off: the server closed the connection without a close frame
            # (the write in progress could not be taken back), after an
            # in-order prefix of what was sent.
            held, code = await read_until_closed(slow, "n")
            assert code == CloseCode.ABNORMAL
            assert held == list(range(len(held)))
            assert len(held) < sent
            # Nobody else noticed.
            assert hub.broadcast(Message("after", 1)) == 1
            assert json.loads(await alice.get_message()) == {"type": "after", "payload": 1}
            assert not alice_side.closed
            await hub.aclose()
            assert await read_until_closed(alice) == ([], CloseCode.GOING_AWAY)


@pytest.mark.parametrize("app_kind", list(APPS))
async def test_a_full_queue_evicts_with_4000_and_the_close_frame_follows_the_data(
    app_kind: str,
) -> None:
    with trio.fail_after(LIMIT):
        async with (
            APPS[app_kind](queue_size=4, ping_interval=None) as (hub, connect),
            connect("slow") as slow,
        ):
            slow_side = await registered(hub, "slow")
            sent = 0
            while not slow_side.closed:
                hub.broadcast(Message("blob", {"n": sent, "blob": BLOB}))
                sent += 1
                await trio.testing.wait_all_tasks_blocked(cushion=0.01)
            held, code = await read_until_closed(slow, "n")
            assert code == CloseCode.SLOW_CLIENT
            assert held == list(range(len(held)))
            assert 0 < len(held) < sent


# ---------------------------------------------------------------- lifetime


async def test_a_plain_asgi_app_keeps_its_lifespan_inside_the_hubs() -> None:
    events: list[str] = []

    async def app(scope: Any, receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] == "lifespan":
            while True:
                event = await receive()
                hub: Hub = scope["state"]["trio_hub"]
                if event["type"] == "lifespan.startup":
                    events.append(f"app startup, hub open: {not hub.closed}")
                    await send({"type": "lifespan.startup.complete"})
                else:
                    events.append(f"app shutdown, hub open: {not hub.closed}")
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        elif scope["type"] == "websocket":
            hub = scope["state"]["trio_hub"]
            await hub.serve_client(await asgi_transport(hub, scope, receive, send))
        else:  # http: a page of its own
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"a page"})

    lifespan = HubLifespan(app, on_message=protocol_handler)
    with trio.fail_after(LIMIT):
        async with hypercorn_serving(lifespan) as port:
            async with httpx.AsyncClient() as http:
                page = await http.get(f"http://127.0.0.1:{port}/")
            assert page.text == "a page"
            async with open_client(port) as alice, open_client(port) as bob:
                await alice.send_message(Message("broadcast", "hi").text)
                for connection in (alice, bob):
                    assert Message.decode(await connection.get_message()) == Message(
                        "broadcast", "hi"
                    )
                assert json.loads(await alice.get_message())["listenerCount"] == 2
            hub = lifespan.hub
        assert hub.closed
    assert events == ["app startup, hub open: True", "app shutdown, hub open: True"]


async def test_an_app_without_lifespan_support_still_gets_its_hub() -> None:
    async def app(scope: Any, receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] == "lifespan":
            raise RuntimeError("no lifespan here")
        hub: Hub = scope["state"]["trio_hub"]
        await hub.serve_client(await asgi_transport(hub, scope, receive, send))

    lifespan = HubLifespan(app, on_message=protocol_handler)
    with trio.fail_after(LIMIT):
        async with hypercorn_serving(lifespan) as port, open_client(port) as alice:
            await alice.send_message(Message("echo", 1).text)
            assert Message.decode(await alice.get_message()) == Message("echo", 1)


async def test_the_shutdown_trigger_drains_every_client_before_hypercorn_stops() -> None:
    app = hub_app()
    stop = trio.Event()
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(
                partial(serve, app, config, shutdown_trigger=app.shutdown_trigger(stop.wait))
            )
            port = int(binds[0].rsplit(":", 1)[1])
            async with open_client(port, "/?name=alice") as alice:
                await registered(app.hub, "alice")
                for n in range(5):
                    app.hub.broadcast(Message("n", n))
                stop.set()
                assert await read_until_closed(alice) == (list(range(5)), CloseCode.GOING_AWAY)
    assert app.hub.closed


@pytest.mark.parametrize("app_kind", ["plain ASGI", "Quart-Trio"])
async def test_without_the_trigger_hypercorns_shutdown_closes_clients_with_1001(
    app_kind: str,
) -> None:
    # Hypercorn cancels its connections graceful_timeout seconds after its
    # shutdown starts; each cancelled endpoint closes its client with 1001,
    # and the hub itself shuts down afterwards, at the lifespan shutdown.
    # Hypercorn reads nothing more by then, so over raw ASGI the close waits
    # close_timeout for the peer's answer in vain (kept short here).
    lifespan: HubLifespan | QuartTrioHub
    if app_kind == "plain ASGI":
        lifespan = hub_app(close_timeout=0.5)
        app: Any = lifespan
        path = "/?name=alice"
    else:
        app, lifespan = quart_hub_app(close_timeout=0.5)
        path = "/ws/alice"
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.graceful_timeout = 0.2
    stop = trio.Event()
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(partial(serve, app, config, shutdown_trigger=stop.wait))
            port = int(binds[0].rsplit(":", 1)[1])
            async with open_client(port, path) as alice:
                await registered(lifespan.hub, "alice")
                stop.set()
                assert await read_until_closed(alice) == ([], CloseCode.GOING_AWAY)
    assert lifespan.hub.closed


async def test_a_closed_hub_refuses_the_handshake() -> None:
    app = hub_app()
    with trio.fail_after(LIMIT):
        async with hypercorn_serving(app) as port:
            await app.hub.aclose()
            # A raw handshake: trio-websocket's client leaks its socket when
            # the handshake is refused.
            upgrade = {
                "Connection": "Upgrade",
                "Upgrade": "websocket",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                "Sec-WebSocket-Version": "13",
            }
            async with httpx.AsyncClient() as http:
                refused = await http.get(f"http://127.0.0.1:{port}/", headers=upgrade)
            assert refused.status_code == 403


async def test_a_hub_that_cannot_open_fails_the_servers_startup() -> None:
    app = hub_app(queue_size=0)
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    failure = pytest.RaisesExc(LifespanFailureError, match="queue_size must be")
    with trio.fail_after(LIMIT), pytest.RaisesGroup(failure, flatten_subgroups=True):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve, app, config)


def test_the_hub_is_unavailable_before_the_app_starts() -> None:
    async def app(scope: Any, receive: ASGIReceive, send: ASGISend) -> None:
        raise AssertionError("never called")

    with pytest.raises(RuntimeError, match="lifespan startup"):
        HubLifespan(app).hub  # noqa: B018


# --------------------------------------------------------------- keepalive


class UnpingableTransport:
    """A memory transport that declares, as ASGITransport does, that it cannot ping."""

    can_ping = False

    def __init__(self, transport: MemoryTransport) -> None:
        self._transport = transport
        self.pings = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    async def ping(self) -> None:
        self.pings += 1
        await trio.sleep_forever()  # a ping would time out: 4001


async def test_the_hubs_keepalive_skips_a_transport_that_cannot_ping(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_hub(ping_interval=1.0, pong_timeout=1.0) as hub:
        server_end, _client_end = memory_connection()
        unpingable = UnpingableTransport(server_end)
        client = hub.register(unpingable)
        await trio.sleep(60)
        assert (unpingable.pings, client.closed) == (0, False)
        assert hub.statistics().keepalive_timeouts == 0


# ------------------------------------------------------------- Quart-Trio


async def test_quart_trio_records_a_peer_that_leaves_as_1001() -> None:
    # Quart-Trio cancels the endpoint on websocket.disconnect and keeps the code.
    with trio.fail_after(LIMIT):
        async with quart_trio(ping_interval=None) as (hub, connect):
            async with connect("alice") as alice:
                client = await registered(hub, "alice")
                await alice.aclose()
            await client.wait_closed()
            assert client.close_code == CloseCode.GOING_AWAY


def test_trio_hub_asgi_imports_without_quart_or_hypercorn() -> None:
    code = (
        "import sys\n"
        "for name in ('quart', 'quart_trio', 'hypercorn'):\n"
        "    sys.modules[name] = None\n"
        "import trio_hub.asgi\n"
        "print(sorted(trio_hub.asgi.__all__))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=LIMIT, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "asgi_transport" in result.stdout


# ---------------------------------------------------------------- example


async def test_the_quart_trio_example_serves_the_wire_protocol_and_its_page() -> None:
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            process: trio.Process = await nursery.start(
                partial_run_process,
                [sys.executable, str(EXAMPLE), "--port", "0"],
            )
            assert process.stdout is not None
            buffer = bytearray()
            banner = await read_line(process.stdout, buffer)
            match = re.fullmatch(
                r"Listening on http://127\.0\.0\.1:(\d+)/ \(WebSocket at /ws\); Ctrl\+C stops\.",
                banner,
            )
            assert match is not None, banner
            port = int(match[1])
            async with httpx.AsyncClient() as http:
                page = await http.get(f"http://127.0.0.1:{port}/")
                assert page.status_code == 200
                assert "trio_hub on Quart-Trio" in page.text
            async with open_client(port, "/ws") as alice, open_client(port, "/ws") as bob:
                await assert_a_publication_reaches_a_subscriber(alice, bob)
                await alice.send_message("{not json")
                reply = Message.decode(await alice.get_message())
                assert reply.type == "error"
                async with httpx.AsyncClient() as http:
                    stats = (await http.get(f"http://127.0.0.1:{port}/stats")).json()
                assert stats["clients"] == 2
                await bob.send_message(Message("broadcast", "last").text)
                assert Message.decode(await bob.get_message()) == Message("broadcast", "last")
                process.send_signal(signal.SIGTERM)
                assert await read_until_closed(alice) == (["last"], CloseCode.GOING_AWAY)
                assert await read_until_closed(bob) == (["last"], CloseCode.GOING_AWAY)
            rest = [await read_line(process.stdout, buffer) for _ in range(2)]
            assert rest == [
                "Stopping: flushing every client's queue, then closing it with 1001.",
                "Stopped.",
            ]
            assert await process.wait() == 0


async def partial_run_process(
    command: list[str], *, task_status: trio.TaskStatus[trio.Process]
) -> None:
    await trio.run_process(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        check=False,
        task_status=task_status,
    )


def load_example(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), EXAMPLE.parent / name)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_the_plain_asgi_example_serves_its_page_and_the_wire_protocol() -> None:
    example = load_example("plain_asgi_app.py")
    with trio.fail_after(LIMIT):
        async with hypercorn_serving(example.hub_app) as port:
            async with httpx.AsyncClient() as http:
                page = await http.get(f"http://127.0.0.1:{port}/")
            assert page.text == "trio_hub on plain ASGI\n"
            async with open_client(port) as alice, open_client(port, "/other") as bob:
                await alice.send_message(Message("broadcast", "hi").text)
                for connection in (alice, bob):
                    assert Message.decode(await connection.get_message()) == Message(
                        "broadcast", "hi"
                    )
                assert json.loads(await alice.get_message())["listenerCount"] == 2
                hub: Hub = example.hub_app.hub
                hub.broadcast(Message("bye"))
                await hub.aclose()
                for connection in (alice, bob):
                    assert await read_until_closed(connection) == ([None], CloseCode.GOING_AWAY)


# ------------------------------------------------ the sender, without a server


class BlockingConnection:
    """A fake ASGI connection whose sends block until the test lets them through."""

    reports_disconnect = False

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.closes: list[int] = []
        self.gate = trio.Event()

    async def receive(self) -> str | bytes:
        await trio.sleep_forever()
        raise AssertionError("unreachable")  # pragma: no cover

    async def send(self, text: str) -> None:
        await self.gate.wait()
        self.sent.append(text)

    async def close(self, code: int, reason: str) -> None:
        await trio.lowlevel.checkpoint()
        self.closes.append(code)


async def test_the_sender_takes_one_message_at_once_and_keeps_the_order() -> None:
    connection = BlockingConnection()
    async with trio.open_nursery() as nursery:
        transport = ASGITransport._create(connection, nursery, "fake")
        assert transport.send_nowait(Message("n", 0))
        # Busy now (holding one message): the hub must queue the next ones.
        assert not transport.send_nowait(Message("n", 1))
        nursery.start_soon(transport.send_batch, [Message("n", 1), Message("n", 2)])
        await trio.testing.wait_all_tasks_blocked()
        assert connection.sent == []
        connection.gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert [Message.decode(text).payload for text in connection.sent] == [0, 1, 2]
        assert transport.send_nowait(Message("n", 3))
        await trio.testing.wait_all_tasks_blocked()
        assert len(connection.sent) == 4
        # The sender is shielded: it ends when the transport closes.
        await transport.close(CloseCode.NORMAL, "")
    assert connection.closes == [CloseCode.NORMAL]


async def test_an_aborted_transport_writes_nothing_more_and_its_sender_ends() -> None:
    connection = BlockingConnection()
    async with trio.open_nursery() as nursery:
        transport = ASGITransport._create(connection, nursery, "fake")
        assert transport.send_nowait(Message("n", 0))
        nursery.start_soon(transport.send_batch, [Message("n", 1)])
        await trio.testing.wait_all_tasks_blocked()
        # The write in progress cannot be taken back; what waits behind it is
        # dropped, and the server is told that the app closed.
        await transport.abort()
        assert connection.closes == []  # the pre-cancelled close wrote nothing
        connection.gate.set()
    assert [Message.decode(text).payload for text in connection.sent] == [0]
    with pytest.raises(TransportClosed):
        await transport.send_batch([Message("n", 2)])
    assert not transport.send_nowait(Message("n", 3))
