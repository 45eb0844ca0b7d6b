"""The Redis backend against real ``redis-server`` processes (DESIGN guarantee 7).

Each test starts its own server on a free loopback port (tests/redis_server.py)
and kills it afterwards; without ``redis-server`` installed they fail, saying
what to install. Every test has a time limit. The only polling loops wait for
another process (Redis) to reach a state that no event here can report, in
small steps and under that limit.

Several nodes in one process are as separate as nodes in several processes:
each backend has its own connections and node id. The three-process test
checks that too.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import psutil
import pytest
import trio
import trio.testing
from hypothesis import example, given, settings
from hypothesis import strategies as st
from trio_websocket import WebSocketConnection, open_websocket

from trio_hub import Hub, Message, open_hub
from trio_hub.backends import BackendUnavailableError
from trio_hub.backends.redis import RedisBackend
from trio_hub.testing import MemoryClient, memory_connection

from .realws import receive, send
from .redis_server import (
    Cluster,
    RedisServer,
    eventually,
    free_port,
    node_cluster,
    redis_client,
    wait_for_channels,
    wait_for_state,
    wait_for_subscribers,
)

LIMIT = 30  # seconds, for any one test


@asynccontextmanager
async def hub_node(url: str, **backend_settings: Any) -> AsyncIterator[tuple[Hub, RedisBackend]]:
    """A hub on a RedisBackend: one node, in this process."""
    backend = RedisBackend(url, **backend_settings)
    # A large queue: these tests count every message, so nobody may be evicted.
    async with open_hub(backend=backend, queue_size=100_000, ping_interval=None) as hub:
        yield hub, backend


def connect(hub: Hub, *topics: str) -> MemoryClient:
    """Register an in-memory client that always keeps up."""
    transport, client = memory_connection(wire_capacity=math.inf)
    hub.register(transport, topics=topics)
    return client


async def receive_until_fences(client: MemoryClient, fences: int) -> list[Message]:
    """Receive up to and including ``fences`` fence messages; return the others."""
    others: list[Message] = []
    while fences:
        message = await client.receive()
        if message.type == "fence":
            fences -= 1
        else:
            others.append(message)
    return others


def warnings_about_outage(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if record.name == "trio_hub"
        and record.levelno == logging.WARNING
        and "unavailable" in record.getMessage()
    ]


# ----------------------------------------------------------- settings


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="redis://"):
        RedisBackend("http://127.0.0.1:6379")
    with pytest.raises(ValueError, match="prefix"):
        RedisBackend("redis://127.0.0.1", prefix="")
    with pytest.raises(ValueError, match="start_timeout"):
        RedisBackend("redis://127.0.0.1", start_timeout=0)
    with pytest.raises(ValueError, match="outbox_size"):
        RedisBackend("redis://127.0.0.1", outbox_size=0)


def test_channel_names_are_under_the_prefix() -> None:
    backend = RedisBackend("redis://127.0.0.1", prefix="chat")
    assert backend.channel_name(None) == "chat:broadcast"
    assert backend.channel_name("room:1") == "chat:topic:room:1"


# ---------------------------------------------------- healthy delivery


async def test_each_publication_reaches_every_node_once_in_order(
    redis_server: RedisServer,
) -> None:
    url = redis_server.url
    with trio.fail_after(LIMIT):
        async with hub_node(url) as (hub_a, backend_a), hub_node(url) as (hub_b, backend_b):
            clients = {
                ("a", "news"): connect(hub_a, "news"),
                ("a", None): connect(hub_a),
                ("b", "news"): connect(hub_b, "news"),
                ("b", None): connect(hub_b),
            }
            news = backend_a.channel_name("news")
            broadcast = backend_a.channel_name(None)
            await wait_for_subscribers(url, {news: 2, broadcast: 2})
            async with redis_client(url) as redis:
                await redis.config_resetstat()

            # Both nodes publish, interleaved: a broadcast every third call.
            sent: list[tuple[str, int, bool]] = []
            for seq in range(150):
                for name, hub in (("a", hub_a), ("b", hub_b)):
                    message = Message("m", {"node": name, "seq": seq})
                    if seq % 3 == 0:
                        hub.broadcast(message)
                    else:
                        hub.publish("news", message)
                    sent.append((name, seq, seq % 3 == 0))

            for (_node, topic), client in clients.items():
                expected = [(n, s) for n, s, everyone in sent if everyone or topic == "news"]
                received = [await client.receive() for _ in expected]
                payloads = [(m.payload["node"], m.payload["seq"]) for m in received]  # type: ignore[call-overload, index]
                # Each node's publications arrive in the order it made them.
                for name in ("a", "b"):
                    assert [p for p in payloads if p[0] == name] == [
                        p for p in expected if p[0] == name
                    ]
            # Redis carries a publication only after what the same node
            # published before it: once a client holds the other node's fence,
            # it would hold any duplicate (an echo included) of what came first.
            hub_a.broadcast(Message("fence", "a"))
            hub_b.broadcast(Message("fence", "b"))
            for client in clients.values():
                assert await receive_until_fences(client, 2) == []

            # One PUBLISH per publication, whatever the number of clients.
            async with redis_client(url) as redis:
                info = await redis.info("commandstats")
            assert info["cmdstat_publish"]["calls"] == len(sent) + 2  # type: ignore[index, call-overload]
            for backend, received_count in ((backend_a, 151), (backend_b, 151)):
                statistics = backend.statistics()
                assert statistics.state == "connected"
                assert statistics.published == 151
                assert statistics.publish_failures == 0
                assert statistics.received == received_count
                assert statistics.outages == 0
                assert statistics.subscriptions == 2


async def test_unsubscribes_when_the_last_local_subscriber_leaves(
    redis_server: RedisServer,
) -> None:
    url = redis_server.url
    with trio.fail_after(LIMIT):
        async with hub_node(url, prefix="app") as (hub, backend):
            # Only the broadcast channel while no client holds a topic.
            await wait_for_channels(url, {b"app:broadcast"})
            first = hub.register(memory_connection()[0], topics=["t"])
            second = hub.register(memory_connection()[0], topics=["t"])
            await wait_for_channels(url, {b"app:broadcast", b"app:topic:t"})

            await first.aclose()
            # Subscription commands reach Redis in order: once "u" shows, an
            # unsubscribe from "t" sent before it would have taken effect.
            third = hub.register(memory_connection()[0], topics=["u"])
            await wait_for_channels(url, {b"app:broadcast", b"app:topic:t", b"app:topic:u"})
            assert backend.statistics().subscriptions == 3

            await second.aclose()
            await wait_for_channels(url, {b"app:broadcast", b"app:topic:u"})
            hub.unsubscribe(third, "u")
            await wait_for_channels(url, {b"app:broadcast"})
            assert backend.statistics().subscriptions == 1


async def test_prefixes_keep_applications_apart(redis_server: RedisServer) -> None:
    url = redis_server.url
    with trio.fail_after(LIMIT):
        async with (
            hub_node(url, prefix="one") as (one_a, _),
            hub_node(url, prefix="one") as (one_b, _),
            hub_node(url, prefix="two") as (two_a, _),
            hub_node(url, prefix="two") as (two_b, _),
        ):
            listener_one = connect(one_b)
            listener_two = connect(two_b)
            await wait_for_subscribers(url, {"one:broadcast": 2, "two:broadcast": 2})
            one_a.broadcast(Message("hello", "one"))
            await listener_one.expect("hello", "one")
            # Published after "one" reached Redis: if "two" heard "one"'s
            # channel, that message would come first.
            two_a.broadcast(Message("fence", "two"))
            assert await receive_until_fences(listener_two, 1) == []


# --------------------------------------------------------------- faults


async def test_start_fails_fast_when_redis_is_down() -> None:
    # Nothing listens on this port: every attempt is refused at once, and the
    # backend retries until start_timeout has passed, then gives up.
    backend = RedisBackend(f"redis://127.0.0.1:{free_port()}", start_timeout=0.5)
    with trio.fail_after(LIMIT):
        started = trio.current_time()
        with pytest.raises(BackendUnavailableError, match=r"127\.0\.0\.1:\d+ is unreachable"):
            async with open_hub(backend=backend):
                pytest.fail("the hub opened without Redis")
        assert 0.5 <= trio.current_time() - started < 2.0
        assert backend.statistics().state == "disconnected"


async def test_start_fails_in_time_when_redis_hangs() -> None:
    # A peer that accepts and never answers: coredis would wait for its HELLO
    # reply for io_timeout (here far longer); start_timeout bounds the start.
    async def hold(stream: trio.SocketStream) -> None:
        async with stream:
            await trio.sleep_forever()

    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, hold, 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            backend = RedisBackend(f"redis://127.0.0.1:{port}", start_timeout=0.5, io_timeout=60)
            started = trio.current_time()
            with pytest.raises(BackendUnavailableError):
                async with open_hub(backend=backend):
                    pytest.fail("the hub opened without Redis")
            assert trio.current_time() - started < 2.0
            nursery.cancel_scope.cancel()


async def test_local_delivery_goes_on_while_redis_is_down(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    url = redis_server.url
    with trio.fail_after(LIMIT):
        async with hub_node(url) as (hub_a, backend_a), hub_node(url) as (hub_b, backend_b):
            local = connect(hub_a, "news")
            remote = connect(hub_b, "news")
            await wait_for_subscribers(url, {backend_a.channel_name("news"): 2})
            hub_a.publish("news", Message("before"))
            await local.expect("before")
            await remote.expect("before")

            await trio.to_thread.run_sync(redis_server.kill)
            await wait_for_state(backend_a, "disconnected")
            await wait_for_state(backend_b, "disconnected")
            for seq in range(5):
                assert hub_a.publish("news", Message("during", seq)) == 1
                hub_a.broadcast(Message("during", seq))
            for seq in range(5):
                await local.expect("during", seq)
                await local.expect("during", seq)
            statistics = backend_a.statistics()
            assert statistics.state == "disconnected"
            assert statistics.publish_failures == 10
            assert statistics.outages == 1
            assert statistics.subscriptions == 0
            assert hub_a.statistics().backend == statistics

            # Reconnection attempts go on, and the outage is logged once for
            # each node, not once per attempt. (_connect_attempts is private:
            # no public counter says that attempts happened.)
            attempts = backend_a._connect_attempts

            async def retried_a_few_times() -> bool:
                await trio.lowlevel.checkpoint()
                return backend_a._connect_attempts >= attempts + 3

            await eventually(retried_a_few_times)
            assert len(warnings_about_outage(caplog)) == 2
            assert remote.pending == 0


async def test_reconnects_and_resubscribes_when_redis_restarts(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    url = redis_server.url
    caplog.set_level(logging.INFO, logger="trio_hub")
    with trio.fail_after(LIMIT):
        async with (
            hub_node(url, max_reconnect_delay=0.5) as (hub_a, backend_a),
            hub_node(url, max_reconnect_delay=0.5) as (hub_b, backend_b),
        ):
            a_client = connect(hub_a)
            leaving = hub_a.register(memory_connection()[0], topics=["gone"])
            await wait_for_subscribers(url, {backend_a.channel_name(None): 2})

            await trio.to_thread.run_sync(redis_server.kill)
            await wait_for_state(backend_a, "disconnected")
            await wait_for_state(backend_b, "disconnected")
            # Changes while Redis is away are remembered and applied on return.
            b_client = connect(hub_b, "later")
            await leaving.aclose()

            await trio.to_thread.run_sync(redis_server.start)
            await wait_for_state(backend_a, "connected")
            await wait_for_state(backend_b, "connected")
            # "connected" means resubscribed: Redis answered a PING after the
            # SUBSCRIBE on the same connection. No waiting for Redis here.
            hub_a.publish("later", Message("after", "a"))
            hub_b.broadcast(Message("after", "b"))
            await a_client.expect("after", "b")
            # b_client has its own node's broadcast at once, the other by Redis.
            got = {(await b_client.receive()).payload, (await b_client.receive()).payload}
            assert got == {"a", "b"}
            async with redis_client(url) as redis:
                assert await redis.pubsub_channels() == {
                    backend_a.channel_name(None).encode(),
                    backend_b.channel_name("later").encode(),
                }

            for backend in (backend_a, backend_b):
                assert backend.statistics().outages == 1
            assert len(warnings_about_outage(caplog)) == 2
            returns = [r for r in caplog.records if "is back after" in r.getMessage()]
            assert [r.levelno for r in returns] == [logging.INFO, logging.INFO]


async def test_a_hung_redis_is_noticed_by_the_keepalive(redis_server: RedisServer) -> None:
    # A frozen Redis closes nothing: only an unanswered PING reveals it,
    # within keepalive_interval + io_timeout.
    settings = {"keepalive_interval": 0.3, "io_timeout": 0.3, "max_reconnect_delay": 0.2}
    with trio.fail_after(LIMIT):
        async with hub_node(redis_server.url, **settings) as (hub, backend):
            local = connect(hub)
            try:
                redis_server.pause()
                started = trio.current_time()
                await wait_for_state(backend, "disconnected")
                assert trio.current_time() - started < 2.0
                hub.broadcast(Message("during"))
                await local.expect("during")
            finally:
                redis_server.resume()
            await wait_for_state(backend, "connected")
            assert backend.statistics().outages == 1


async def test_a_burst_is_drained_promptly_from_coredis_buffers(
    redis_server: RedisServer,
) -> None:
    burst = 20_000
    padding = "x" * 200  # about 250 bytes a message: 5 MB in all
    url = redis_server.url
    process = psutil.Process()
    with trio.fail_after(LIMIT):
        async with (
            hub_node(url) as (receiving_hub, receiving_backend),
            hub_node(url, outbox_size=burst) as (sending_hub, _),
        ):
            receiver = connect(receiving_hub)
            await wait_for_subscribers(url, {receiving_backend.channel_name(None): 2})
            rss_before = process.memory_info().rss
            received: list[int] = []
            async with trio.open_nursery() as load:
                # A busy event loop: 50 tasks each burn 0.2 ms of CPU per tick,
                # so that every task, the backend's included, runs rarely.
                for _ in range(50):
                    load.start_soon(burn_cpu)
                for seq in range(burst):
                    sending_hub.broadcast(Message("burst", [seq, padding]))
                while len(received) < burst:
                    # The test's own limit bounds the wait, not receive()'s
                    # 5 s default: with 50 burners in this loop and a starved
                    # CPU, the gap between two reads took longer than that.
                    arrived = await receiver.receive(timeout=LIMIT)
                    for message in [arrived, *receiver.drain()]:
                        assert isinstance(message.payload, list)
                        seq = message.payload[0]
                        assert isinstance(seq, int)
                        received.append(seq)
                load.cancel_scope.cancel()
            rss_growth = process.memory_info().rss - rss_before
            assert received == list(range(burst))
            # coredis' buffers never held more than a few socket reads' worth:
            # its queue of parsed messages, and its parser's byte buffer, which
            # would otherwise keep the whole burst (both high-water marks are
            # the backend's private bookkeeping; no public figure shows them).
            assert receiving_backend._inbound_peak < 2_000, receiving_backend._inbound_peak
            assert receiving_backend._parser_peak < 2 * 2**20, receiving_backend._parser_peak
            # Generous: the sending node's outbox alone holds the 5 MB burst.
            assert rss_growth < 64 * 2**20, rss_growth


async def burn_cpu() -> None:
    while True:
        until = time.perf_counter() + 0.0002
        while time.perf_counter() < until:
            pass
        await trio.lowlevel.checkpoint()


# -------------------------------------------- three nodes, three processes


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """One redis-server and three hub nodes in their own processes, for the module."""
    with node_cluster("cluster") as cluster:
        yield cluster


example_numbers = itertools.count()

TOPICS = ("red", "green")
CLIENTS_PER_NODE = 2

operations = st.lists(
    st.tuples(st.integers(0, 2), st.sampled_from([None, *TOPICS])), min_size=1, max_size=30
)
subscriptions = st.lists(
    st.frozensets(st.sampled_from(TOPICS)),
    min_size=3 * CLIENTS_PER_NODE,
    max_size=3 * CLIENTS_PER_NODE,
)


@settings(max_examples=15, deadline=None)
@given(operations=operations, subscriptions=subscriptions)
@example(
    operations=[(0, None), (1, "red"), (2, "green"), (0, "red"), (1, None), (2, None)] * 3,
    subscriptions=[frozenset(), frozenset(TOPICS), frozenset({"red"})] * 2,
)
def test_three_processes_deliver_interleaved_publications_exactly_once_in_order(
    cluster: Cluster,
    operations: list[tuple[int, str | None]],
    subscriptions: list[frozenset[str]],
) -> None:
    trio.run(check_cluster, cluster, operations, subscriptions)


async def check_cluster(
    cluster: Cluster,
    operations: list[tuple[int, str | None]],
    subscriptions: list[frozenset[str]],
) -> None:
    # Fresh topic names for each example: what earlier examples left behind
    # (an unsubscription still on its way) cannot touch this one.
    run = next(example_numbers)
    topic_names = {topic: f"{topic}-{run}" for topic in TOPICS}
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            clients: list[tuple[int, frozenset[str], WebSocketConnection]] = []
            for index, topics in enumerate(subscriptions):
                node = index // CLIENTS_PER_NODE
                connection = await nursery.start(websocket_client, cluster.nodes[node].port)
                for topic in sorted(topics):
                    await send(connection, "subscribe", {"topic": topic_names[topic]})
                    assert await receive(connection) == {
                        "type": "subscribed",
                        "payload": {"topic": topic_names[topic]},
                    }
                clients.append((node, topics, connection))
            # Each node subscribes in Redis when its first client subscribes;
            # wait until Redis has taken all of those into account.
            await wait_for_subscribers(
                cluster.redis_url,
                {f"{cluster.prefix}:broadcast": 3}
                | {
                    f"{cluster.prefix}:topic:{topic_names[topic]}": len(
                        {node for node, topics, _ in clients if topic in topics}
                    )
                    for topic in TOPICS
                },
            )

            # Each node's first client sends that node's share, in order.
            senders = [connection for _, _, connection in clients[::CLIENTS_PER_NODE]]
            sent: list[tuple[int, int, str | None]] = []
            for seq, (node, target) in enumerate(operations):
                data = {"node": node, "seq": seq}
                if target is None:
                    await send(senders[node], "broadcast", data)
                else:
                    await send(
                        senders[node], "publish", {"topic": topic_names[target], "data": data}
                    )
                sent.append((node, seq, target))

            for node, topics, connection in clients:
                expected = [(n, s) for n, s, topic in sent if topic is None or topic in topics]
                received = [as_sent(await receive(connection)) for _ in expected]
                for publisher in range(3):
                    assert [r for r in received if r[0] == publisher] == [
                        e for e in expected if e[0] == publisher
                    ], (node, topics)
            # Fences: once a client holds every node's fence, it holds any
            # duplicate of what was published before (see the in-process test).
            for node, sender in enumerate(senders):
                await send(sender, "broadcast", {"fence": node})
            for _, _, connection in clients:
                fences: set[int] = set()
                while len(fences) < 3:
                    message = await receive(connection)
                    assert message["type"] == "broadcast", message
                    payload = message["payload"]
                    assert isinstance(payload, dict), message
                    assert "fence" in payload, f"a duplicate: {message}"
                    fences.add(payload["fence"])
            nursery.cancel_scope.cancel()


async def websocket_client(
    port: int, *, task_status: trio.TaskStatus[WebSocketConnection] = trio.TASK_STATUS_IGNORED
) -> None:
    """Hold a WebSocket connection to a node until cancelled."""
    connection: WebSocketConnection | None = None
    try:
        async with open_websocket("127.0.0.1", port, "/", use_ssl=False) as connection:
            task_status.started(connection)
            await trio.sleep_forever()
    finally:
        # As in test_websocket.py: trio-websocket's client can leave its socket
        # open when it is cancelled; close it, or a ResourceWarning follows.
        if connection is not None:
            await trio.aclose_forcefully(connection._stream)


def as_sent(message: dict[str, Any]) -> tuple[int, int]:
    """The (node, seq) a received broadcast or publication carries."""
    payload = message["payload"]
    data = payload if message["type"] == "broadcast" else payload["data"]
    return data["node"], data["seq"]
