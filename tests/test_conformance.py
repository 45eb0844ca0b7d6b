"""The in-memory transport behaves like the real ones: one scenario, several worlds.

One scripted scenario (``run_scenario``) drives a hub through what its clients
can observe: messages and their order, topics, an application handler's
replies, the error reply to invalid JSON, 1003 for a binary frame, a normal close
from either side, a slow client evicted with 4000 (and counted), and 1001 at
shutdown after the queued messages are flushed. It runs in each world:

* ``memory``: :func:`trio_hub.testing.open_test_hub` and in-memory clients;
* ``trio-websocket``: :func:`trio_websocket.serve_websocket` with
  :meth:`Hub.serve_client`, and real trio-websocket clients;
* ``serve_hub``: trio_hub's own server (:func:`trio_hub.serve_hub`, with its
  fast write path), and real trio-websocket clients;
* ``asgi``: a plain ASGI app (:class:`trio_hub.asgi.HubLifespan` and
  :func:`trio_hub.asgi.asgi_transport`) served by real Hypercorn (Trio worker),
  and real trio-websocket clients.

The real worlds bind 127.0.0.1 on port 0. Each world gives a small adapter for "a
client", and the scenario's transcript must equal one expected transcript in
every world. The only thing allowed to differ is how many messages a client that
stops reading can hold before eviction (its buffers differ); the transcript
records that it holds a non-empty, in-order prefix. One server differs where
the hub cannot help it: Hypercorn reports every close that the peer starts as
1006 to the app (pgjones/hypercorn#127), so there the hub records 1006 for the
client that closed normally (``QUIRKS``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Final, Protocol

import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed, WebSocketConnection

from trio_hub import Client, CloseCode, HandshakeRequest, Hub, Message, open_hub, serve_hub
from trio_hub.testing import (
    HubSettings,
    MemoryClient,
    MemoryClientClosed,
    TestHub,
    open_test_hub,
)

from .asgiws import hub_app, hypercorn_serving
from .realws import open_client, serving

LIMIT: Final = 30  # seconds, for a whole scenario over real sockets

# Big enough that a real socket's buffers fill after a few hundred messages.
BLOB: Final = "x" * 65536


@dataclass(frozen=True)
class Closed:
    """What a client observes last: the close code."""

    code: int


Observed = Message | Closed


class Peer(Protocol):
    """A client in some world, as the scenario drives it."""

    @property
    def server_side(self) -> Client:
        """The hub's client for this connection."""
        ...

    async def send(self, data: Message | str | bytes) -> None:
        """Send a text frame (a Message or any str) or a binary frame (bytes)."""
        ...

    async def receive(self) -> Observed:
        """The next message, or the close once every message before it was read."""
        ...

    async def close(self) -> None:
        """Close from the client's side, normally (1000)."""
        ...


class World(Protocol):
    """A hub and a way to connect clients to it."""

    @property
    def hub(self) -> Hub:
        """The hub under test."""
        ...

    async def connect(self, name: str, topics: Sequence[str] = ()) -> Peer:
        """Connect a client; return once the hub has registered it."""
        ...

    async def settle(self) -> None:
        """Let the hub's tasks run until they wait on something."""
        ...


# ------------------------------------------------------------ memory world


@dataclass
class MemoryPeer:
    client: MemoryClient

    @property
    def server_side(self) -> Client:
        return self.client.server_side

    async def send(self, data: Message | str | bytes) -> None:
        await self.client.send(data)

    async def receive(self) -> Observed:
        try:
            return await self.client.receive(timeout=LIMIT)
        except MemoryClientClosed as closed:
            return Closed(closed.code)

    async def close(self) -> None:
        await self.client.close()


@dataclass
class MemoryWorld:
    test_hub: TestHub

    @property
    def hub(self) -> Hub:
        return self.test_hub.hub

    async def connect(self, name: str, topics: Sequence[str] = ()) -> Peer:
        return MemoryPeer(self.test_hub.connect(topics=topics, identity=name))

    async def settle(self) -> None:
        await trio.testing.wait_all_tasks_blocked()


@asynccontextmanager
async def memory_world(settings: HubSettings) -> AsyncIterator[World]:
    async with open_test_hub(**settings) as test_hub:
        yield MemoryWorld(test_hub)


# ------------------------------------------------------------- real worlds


@dataclass
class WebSocketPeer:
    connection: WebSocketConnection
    client: Client

    @property
    def server_side(self) -> Client:
        return self.client

    async def send(self, data: Message | str | bytes) -> None:
        await self.connection.send_message(data.text if isinstance(data, Message) else data)

    async def receive(self) -> Observed:
        try:
            data = await self.connection.get_message()
        except ConnectionClosed as closed:
            reason = closed.reason
            return Closed(reason.code if reason is not None else CloseCode.ABNORMAL)
        assert isinstance(data, str), f"the hub sent a binary frame: {data!r}"
        return Message.decode(data)

    async def close(self) -> None:
        await self.connection.aclose()


@dataclass
class WebSocketWorld:
    hub: Hub
    port: int
    clients: AsyncExitStack
    # serve_hub takes topics from no URL: the world subscribes server-side.
    subscribe_server_side: bool

    async def connect(self, name: str, topics: Sequence[str] = ()) -> Peer:
        path = "/" + ",".join(topics) + "?name=" + name
        connection = await self.clients.enter_async_context(open_client(self.port, path))
        # trio-websocket's handler (tests/realws.py) identifies a client by its
        # path; serve_hub's authenticate hook here, by its name.
        while not (registered := [c for c in self.hub.clients if c.identity in (name, path)]):
            await trio.testing.wait_all_tasks_blocked(cushion=0.001)
        (client,) = registered
        if self.subscribe_server_side:
            for topic in topics:
                client.subscribe(topic)
        return WebSocketPeer(connection, client)

    async def settle(self) -> None:
        # Real sockets: let loopback and every task catch up.
        await trio.testing.wait_all_tasks_blocked(cushion=0.001)


@asynccontextmanager
async def trio_websocket_world(settings: HubSettings) -> AsyncIterator[World]:
    async with serving(**settings) as (hub, port), AsyncExitStack() as clients:
        yield WebSocketWorld(hub, port, clients, subscribe_server_side=False)


async def identify_by_name(request: HandshakeRequest) -> object:
    return request.query["name"]


@asynccontextmanager
async def serve_hub_world(settings: HubSettings) -> AsyncIterator[World]:
    async with open_hub(**settings) as hub, trio.open_nursery() as nursery:
        server = await nursery.start(
            partial(serve_hub, hub, "127.0.0.1", 0, authenticate=identify_by_name)
        )
        async with AsyncExitStack() as clients:
            yield WebSocketWorld(hub, server.port, clients, subscribe_server_side=True)
        await server.aclose()


@asynccontextmanager
async def asgi_world(settings: HubSettings) -> AsyncIterator[World]:
    app = hub_app(**settings)
    async with hypercorn_serving(app) as port, AsyncExitStack() as clients:
        yield WebSocketWorld(app.hub, port, clients, subscribe_server_side=True)


WORLDS: Final = {
    "memory": memory_world,
    "trio-websocket": trio_websocket_world,
    "serve_hub": serve_hub_world,
    "asgi": asgi_world,
}

# What a world's server makes different, and why (see the module's docstring).
QUIRKS: Final[dict[str, dict[str, object]]] = {
    # Hypercorn passes the app 1006 for the peer's normal close.
    "asgi": {"bob server side": CloseCode.ABNORMAL},
}


# ---------------------------------------------------------------- scenario


async def app(client: Client, message: Message) -> None:
    """A small application: echo, and broadcast with a count (websocket-shootout style)."""
    if message.type == "echo":
        client.send(Message("echo", message.payload))
    elif message.type == "broadcast":
        count = client.hub.broadcast(Message("broadcast", message.payload))
        client.send(Message("broadcastResult", {"payload": message.payload, "listeners": count}))


SETTINGS: Final[HubSettings] = {
    "queue_size": 8,
    "on_message": app,
    # No pings: the scenario is about data and closes, and takes real time.
    "ping_interval": None,
}


def observed(event: Observed) -> object:
    """An observation as plain data, for a transcript that prints readably."""
    if isinstance(event, Closed):
        return ("closed", event.code)
    return (event.type, event.payload)


async def take(peer: Peer, count: int) -> list[object]:
    return [observed(await peer.receive()) for _ in range(count)]


async def take_until_closed(peer: Peer) -> tuple[list[Message], int]:
    messages: list[Message] = []
    while not isinstance(event := await peer.receive(), Closed):
        messages.append(event)
    return messages, event.code


async def run_scenario(world: World) -> list[tuple[str, object]]:
    hub = world.hub
    transcript: list[tuple[str, object]] = []

    def note(what: str, value: object) -> None:
        transcript.append((what, value))

    # Delivery, topics and order.
    alice = await world.connect("alice", ["news"])
    bob = await world.connect("bob")
    carol = await world.connect("carol", ["news", "sports"])
    note(
        "listeners",
        [
            hub.broadcast(Message("n", 0)),
            hub.publish("news", Message("n", 1)),
            hub.publish("sports", Message("n", 2)),
            hub.publish("weather", Message("n", 3)),
            hub.broadcast(Message("n", 4)),
        ],
    )
    note("alice", await take(alice, 3))
    note("bob", await take(bob, 2))
    note("carol", await take(carol, 4))

    # The application's handler, and a broadcast from inside it.
    await alice.send(Message("echo", "hi"))
    note("alice echo", await take(alice, 1))
    await bob.send(Message("broadcast", "all"))
    note("bob broadcast", await take(bob, 2))
    note("alice broadcast", await take(alice, 1))
    note("carol broadcast", await take(carol, 1))

    # Invalid input gets an error reply, and the connection stays open.
    await alice.send("{garbage")
    await alice.send(json.dumps({"type": "echo", "paylod": 1}))
    await alice.send(Message("echo", "still here"))
    replies = [await alice.receive() for _ in range(3)]
    note(
        "alice errors",
        [
            (
                reply.type,
                reply.payload["code"] if isinstance(reply.payload, dict) else reply.payload,
            )
            for reply in replies
            if isinstance(reply, Message)
        ],
    )

    # A binary frame ends that client, and only that one, with 1003.
    dave = await world.connect("dave")
    await dave.send(b"\x00\xff")
    note("dave", await take(dave, 1))
    await dave.server_side.wait_closed()
    note("dave server side", dave.server_side.close_code)

    # A normal close from the client's side, then from the hub's.
    await bob.close()
    await bob.server_side.wait_closed()
    note("bob server side", bob.server_side.close_code)
    frank = await world.connect("frank")
    frank.server_side.close()
    note("frank", await take(frank, 1))
    note("clients", len(hub))

    # A client that stops reading is evicted with 4000; nobody else notices.
    eve = await world.connect("eve", ["firehose"])
    sent = 0
    while not eve.server_side.closed and sent < 10_000:
        hub.publish("firehose", Message("blob", {"n": sent, "blob": BLOB}))
        sent += 1
        await world.settle()
    note("eve server side", eve.server_side.close_code)
    hub.broadcast(Message("n", 5))
    note("alice after eviction", await take(alice, 1))
    note("carol after eviction", await take(carol, 1))
    held, code = await take_until_closed(eve)
    numbers = [message.payload["n"] for message in held if isinstance(message.payload, dict)]
    note("eve holds a prefix", 0 < len(numbers) < sent and numbers == list(range(len(numbers))))
    note("eve", ("closed", code))
    stats = hub.statistics()
    note("evictions", stats.evictions)

    # Shutdown: what was accepted is flushed, then 1001.
    for n in range(6, 12):
        hub.broadcast(Message("n", n))
    endings: dict[str, object] = {}

    async def read_to_end(name: str, peer: Peer) -> None:
        messages, code = await take_until_closed(peer)
        endings[name] = ([message.payload for message in messages], code)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_to_end, "alice", alice)
        nursery.start_soon(read_to_end, "carol", carol)
        await hub.aclose()
    note("shutdown", endings)
    stats = hub.statistics()
    note("final", (stats.clients, stats.evictions, stats.errors, stats.keepalive_timeouts))
    return transcript


EXPECTED: Final[list[tuple[str, object]]] = [
    ("listeners", [3, 2, 1, 0, 3]),
    ("alice", [("n", 0), ("n", 1), ("n", 4)]),
    ("bob", [("n", 0), ("n", 4)]),
    ("carol", [("n", 0), ("n", 1), ("n", 2), ("n", 4)]),
    ("alice echo", [("echo", "hi")]),
    (
        "bob broadcast",
        [("broadcast", "all"), ("broadcastResult", {"payload": "all", "listeners": 3})],
    ),
    ("alice broadcast", [("broadcast", "all")]),
    ("carol broadcast", [("broadcast", "all")]),
    (
        "alice errors",
        [("error", "invalid_json"), ("error", "invalid_envelope"), ("echo", "still here")],
    ),
    ("dave", [("closed", CloseCode.UNSUPPORTED_DATA)]),
    ("dave server side", CloseCode.UNSUPPORTED_DATA),
    ("bob server side", CloseCode.NORMAL),
    ("frank", [("closed", CloseCode.NORMAL)]),
    ("clients", 2),
    ("eve server side", CloseCode.SLOW_CLIENT),
    ("alice after eviction", [("n", 5)]),
    ("carol after eviction", [("n", 5)]),
    ("eve holds a prefix", True),
    ("eve", ("closed", CloseCode.SLOW_CLIENT)),
    ("evictions", 1),
    (
        "shutdown",
        {
            "alice": ([6, 7, 8, 9, 10, 11], CloseCode.GOING_AWAY),
            "carol": ([6, 7, 8, 9, 10, 11], CloseCode.GOING_AWAY),
        },
    ),
    ("final", (0, 1, 0, 0)),
]


@pytest.mark.parametrize("world_name", list(WORLDS))
async def test_the_same_scenario_gives_the_same_transcript_in_every_world(
    world_name: str,
) -> None:
    with trio.fail_after(LIMIT):
        async with WORLDS[world_name](SETTINGS) as world:
            transcript = await run_scenario(world)
    quirks = QUIRKS.get(world_name, {})
    assert transcript == [(what, quirks.get(what, value)) for what, value in EXPECTED]
