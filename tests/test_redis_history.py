"""History and recovery across nodes, in Redis Streams (DESIGN guarantee 8).

Against real ``redis-server`` processes (tests/redis_server.py); every test has
a time limit. The state machine drives three hub processes that share one
Redis through the ready server's wire protocol, over real WebSockets.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar
from unittest.mock import ANY

import coredis
import pytest
import trio
import trio.testing
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from trio_websocket import WebSocketConnection, connect_websocket

from trio_hub import (
    CloseCode,
    HistoryUnavailableError,
    Message,
    StreamPosition,
    open_hub,
    protocol_handler,
)
from trio_hub.backends.redis import RedisBackend
from trio_hub.testing import MemoryClient, TestHub

from .realws import receive, send
from .redis_server import Cluster, RedisServer, node_cluster, wait_for_state

LIMIT = 30  # seconds, for any one test
T = TypeVar("T")


def item(n: int) -> Message:
    return Message("message", {"topic": "t", "n": n})


def field_of(message: Message, name: str) -> int:
    payload = message.payload
    assert isinstance(payload, dict)
    value = payload[name]
    assert isinstance(value, int)
    return value


def numbers(messages: list[Message]) -> list[int]:
    return [field_of(m, "n") for m in messages]


async def receive_n(client: MemoryClient, count: int) -> list[Message]:
    return [await client.receive() for _ in range(count)]


async def test_recovery_across_nodes_while_publications_keep_coming(
    redis_server: RedisServer,
) -> None:
    url = redis_server.url
    with trio.fail_after(LIMIT):
        async with (
            open_hub(backend=RedisBackend(url), history_size=1000, queue_size=10_000) as node_a,
            open_hub(backend=RedisBackend(url), history_size=1000, queue_size=10_000) as node_b,
            trio.open_nursery() as nursery,
        ):
            a, b = TestHub(node_a), TestHub(node_b)
            watcher = b.connect(wire_capacity=math.inf)
            start = await b.recover(watcher, "t")
            for n in range(1, 51):
                node_b.publish("t", item(n))
            assert numbers(await receive_n(watcher, 50)) == list(range(1, 51))
            done = trio.Event()

            async def keep_publishing() -> None:
                for n in range(51, 301):
                    node_b.publish("t", item(n))
                    await trio.lowlevel.checkpoint()
                done.set()

            nursery.start_soon(keep_publishing)
            # Recover on the other node from the start, in the middle of the stream.
            client = a.connect(wire_capacity=math.inf)
            result = await a.recover(client, "t", start.position)
            assert result.recovered
            await done.wait()
            got = await receive_n(client, 300)
            assert numbers(got) == list(range(1, 301))
            assert [field_of(m, "offset") for m in got] == list(range(1, 301))
            assert numbers(await receive_n(watcher, 250)) == list(range(51, 301))
            node_b.publish("t", item(301))
            # Nothing twice: the next thing either receives is the next publication.
            assert numbers([await client.receive()]) == [301]
            assert node_a.statistics().recoveries == 1


async def test_many_recoveries_from_one_position_at_once(redis_server: RedisServer) -> None:
    """They share reads (one per batch of askers), and each still gets it all exactly once."""
    with trio.fail_after(LIMIT):
        async with (
            open_hub(backend=RedisBackend(redis_server.url), history_size=1000) as node,
            trio.open_nursery() as nursery,
        ):
            test_hub = TestHub(node)
            start = await node.position("t")
            for n in range(1, 21):
                node.publish("t", item(n))
            await node.publish_with_position("t", item(21))
            clients = [test_hub.connect(wire_capacity=math.inf) for _ in range(20)]
            done = trio.Event()

            async def keep_publishing() -> None:
                for n in range(22, 101):
                    node.publish("t", item(n))
                    await trio.lowlevel.checkpoint()
                done.set()

            async def recover(client: MemoryClient) -> None:
                result = await test_hub.recover(client, "t", start)
                assert result.recovered

            nursery.start_soon(keep_publishing)
            async with trio.open_nursery() as recoveries:
                for client in clients:
                    recoveries.start_soon(recover, client)
            await done.wait()
            for client in clients:
                assert numbers(await receive_n(client, 100)) == list(range(1, 101))
            node.publish("t", item(101))
            for client in clients:
                assert numbers([await client.receive()]) == [101]
            assert node.statistics().recoveries == 20


async def test_redis_restart_while_clients_recover(redis_server: RedisServer) -> None:
    """Killed and restarted: every recovery is exact, recovered=False, or an error."""
    url = redis_server.url
    with trio.fail_after(LIMIT):
        backend = RedisBackend(url, io_timeout=1, keepalive_interval=0.2, max_reconnect_delay=0.1)
        async with open_hub(backend=backend, history_size=100) as hub:
            test_hub = TestHub(hub)
            client = test_hub.connect(wire_capacity=math.inf)
            await test_hub.recover(client, "t")
            for n in range(1, 6):
                hub.publish("t", item(n))
            assert numbers(await receive_n(client, 5)) == [1, 2, 3, 4, 5]
            before = client.position("t")
            assert before == StreamPosition(5, before.epoch if before else "")
            await client.close()
            redis_server.kill()
            await wait_for_state(backend, "disconnected")
            # Down: recovery and history fail with a clear error, counted.
            late = test_hub.connect(wire_capacity=math.inf)
            with pytest.raises(HistoryUnavailableError):
                await test_hub.recover(late, "t", before)
            with pytest.raises(HistoryUnavailableError):
                await hub.history("t")
            assert late.server_side.topics == frozenset()
            assert hub.statistics().history_errors == 2
            # Local delivery goes on, unnumbered, for the clients still here.
            live = test_hub.connect(wire_capacity=math.inf)
            hub.subscribe(live.server_side, "t")
            hub.publish("t", item(6))
            assert (await live.receive()).payload == {"topic": "t", "n": 6}
            assert hub.statistics().history_local_only == 1
            redis_server.start()
            await wait_for_state(backend, "connected")
            # The history did not survive: a new epoch says so.
            again = test_hub.connect(wire_capacity=math.inf)
            result = await test_hub.recover(again, "t", before)
            assert not result.recovered
            assert result.publications == ()
            assert before is not None
            assert result.position.epoch != before.epoch
            hub.publish("t", item(7))
            assert (await again.receive()).payload == {"topic": "t", "n": 7, "offset": 1}
            assert hub.statistics().recovery_failures == 1


async def test_unnumbered_delivery_changes_the_epoch(redis_server: RedisServer) -> None:
    """Redis paused, not restarted: positions from before the outage stop passing."""
    url = redis_server.url
    with trio.fail_after(LIMIT):
        backend = RedisBackend(url, io_timeout=0.5, keepalive_interval=0.1, max_reconnect_delay=0.1)
        async with open_hub(backend=backend, history_size=100) as hub:
            start = await hub.position("t")
            await hub.publish_with_position("t", item(1))
            redis_server.pause()
            try:
                await wait_for_state(backend, "disconnected")
                hub.publish("t", item(2))  # reaches local clients only
                with pytest.raises(HistoryUnavailableError):
                    await hub.publish_with_position("t", item(3))
            finally:
                redis_server.resume()
            await wait_for_state(backend, "connected")
            # Offset 1 survived in Redis, but 2 and 3 are in no history.
            result = await hub.history("t", since=start)
            assert not result.recovered
            assert result.position.epoch != start.epoch


# ---------------------------------------------------------- three processes

TOPICS = ("red", "green")
HISTORY_SIZE = 6
MAX_CLIENTS = 3
example_numbers = itertools.count()


@pytest.fixture(scope="module")
def history_cluster() -> Iterator[Cluster]:
    """One redis-server and three hub nodes with history, for the module."""
    with node_cluster("history", str(HISTORY_SIZE)) as cluster:
        yield cluster


class _Loop:
    """A trio loop in a thread (real clock) with a nursery, running what it is given."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    async def _main(self) -> None:
        self._stop = trio.Event()
        self.token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def run(self, function: Callable[..., Awaitable[T]], *args: object) -> T:
        async def bounded() -> T:
            with trio.fail_after(LIMIT):
                return await function(*args)

        return trio.from_thread.run(bounded, trio_token=self.token)

    def close(self) -> None:
        trio.from_thread.run_sync(self._stop.set, trio_token=self.token)
        self._thread.join(10)


@dataclass
class _Client:
    connection: WebSocketConnection | None = None
    feed: dict[str, list[int]] = field(default_factory=lambda: {t: [] for t in TOPICS})
    expected: dict[str, list[int]] = field(default_factory=lambda: {t: [] for t in TOPICS})


class ClusterRecovery(RuleBasedStateMachine):
    """Three nodes, one Redis: what each client holds is exactly what the model says."""

    def __init__(self, cluster: Cluster) -> None:
        super().__init__()
        self.cluster = cluster
        self.loop = _Loop()
        run = next(example_numbers)
        self.names = {topic: f"{topic}-{run}" for topic in TOPICS}
        self.published = dict.fromkeys(TOPICS, 0)
        self.oldest = dict.fromkeys(TOPICS, 1)
        self.epochs: dict[str, str] = {}
        self.clients: list[_Client] = []
        self.serial = 0
        # One publisher connection per node, and an observer that is always
        # subscribed: it tells the model each publication's offset.
        self.publishers = [self.loop.run(self._open, node) for node in range(3)]
        self.observer = self.loop.run(self._open, 0)
        for topic in TOPICS:
            frame = self.loop.run(self._subscribe, self.observer, topic, None)
            self.epochs[topic] = frame["payload"]["epoch"]

    def teardown(self) -> None:
        async def close_all() -> None:
            connections = [*self.publishers, self.observer]
            connections += [c.connection for c in self.clients if c.connection is not None]
            for connection in connections:
                await connection.aclose()

        self.loop.run(close_all)
        self.loop.close()

    async def _open(self, node: int) -> WebSocketConnection:
        port = self.cluster.nodes[node].port
        return await connect_websocket(self.loop.nursery, "127.0.0.1", port, "/", use_ssl=False)

    async def _subscribe(
        self, connection: WebSocketConnection, topic: str, recover: StreamPosition | None
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {"topic": self.names[topic]}
        if recover is not None:
            payload["recover"] = {"offset": recover.offset, "epoch": recover.epoch}
        await send(connection, "subscribe", payload)
        frame = await receive(connection)
        assert frame["type"] == "subscribed", frame
        return frame

    # ------------------------------------------------------------- rules

    @precondition(lambda self: len(self.clients) < MAX_CLIENTS)
    @rule(node=st.integers(0, 2))
    def connect(self, node: int) -> None:
        client = _Client()

        async def connect() -> None:
            connection = await self._open(node)
            for topic in TOPICS:
                frame = await self._subscribe(connection, topic, None)
                assert frame["payload"]["offset"] == self.published[topic]
                assert frame["payload"]["epoch"] == self.epochs[topic]
            client.connection = connection

        self.loop.run(connect)
        self.clients.append(client)

    @rule(topic=st.sampled_from(TOPICS), node=st.integers(0, 2))
    def publish(self, topic: str, node: int) -> None:
        self.serial += 1
        data = self.serial

        async def publish() -> None:
            publisher = self.publishers[node]
            await send(publisher, "publish", {"topic": self.names[topic], "data": data})
            assert (await receive(publisher))["type"] == "publishResult"
            frame = await receive(self.observer)
            assert frame["payload"]["data"] == data
            offset = frame["payload"]["offset"]
            # One total order per topic, whichever node published.
            assert offset == self.published[topic] + 1

        self.loop.run(publish)
        self.published[topic] += 1
        self.oldest[topic] = max(self.oldest[topic], self.published[topic] - HISTORY_SIZE + 1)
        for client in self.clients:
            if client.connection is not None:
                client.expected[topic].append(self.published[topic])

    @rule(data=st.data())
    def disconnect(self, data: st.DataObject) -> None:
        connected = [c for c in self.clients if c.connection is not None]
        if connected:
            client = data.draw(st.sampled_from(connected))
            assert client.connection is not None
            self.loop.run(client.connection.aclose)
            client.connection = None

    @rule(
        data=st.data(),
        node=st.integers(0, 2),
        kind=st.sampled_from(["last", "stale", "wrong epoch"]),
        back=st.integers(1, 8),
    )
    def reconnect(self, data: st.DataObject, node: int, kind: str, back: int) -> None:
        gone = [c for c in self.clients if c.connection is None]
        if not gone:
            return
        client = data.draw(st.sampled_from(gone))

        async def reconnect() -> None:
            connection = await self._open(node)
            for topic in TOPICS:
                last = client.feed[topic][-1] if client.feed[topic] else 0
                epoch = self.epochs[topic]
                if kind == "stale":
                    position = StreamPosition(max(last - back, 0), epoch)
                elif kind == "wrong epoch":
                    position = StreamPosition(last, epoch + "!")
                else:
                    position = StreamPosition(last, epoch)
                top = self.published[topic]
                recoverable = position.epoch == epoch and (
                    position.offset == top or self.oldest[topic] <= position.offset + 1
                )
                frame = await self._subscribe(connection, topic, position)
                assert frame["payload"] == {
                    "topic": self.names[topic],
                    "offset": top,
                    "epoch": epoch,
                    "recovered": recoverable,
                }, (position, self.oldest)
                replay = list(range(position.offset + 1, top + 1)) if recoverable else []
                for offset in replay:
                    message = await receive(connection)
                    assert message["payload"]["offset"] == offset
                    client.feed[topic].append(offset)
                client.expected[topic].extend(replay)
            client.connection = connection

        self.loop.run(reconnect)

    @rule(topic=st.sampled_from(TOPICS), keep=st.integers(0, HISTORY_SIZE))
    def trim(self, topic: str, keep: int) -> None:
        async def trim() -> None:
            async with coredis.Redis.from_url(self.cluster.redis_url) as redis:
                key = f"{self.cluster.prefix}:history:{self.names[topic]}:stream"
                await redis.xtrim(key, trim_strategy=coredis.PureToken.MAXLEN, threshold=keep)

        self.loop.run(trim)
        self.oldest[topic] = max(self.oldest[topic], self.published[topic] - keep + 1)

    # -------------------------------------------------------- invariants

    @invariant()
    def every_client_holds_exactly_what_it_should(self) -> None:
        async def catch_up() -> None:
            for client in self.clients:
                if client.connection is None:
                    continue
                while sum(map(len, client.feed.values())) < sum(map(len, client.expected.values())):
                    frame = await receive(client.connection)
                    assert frame["type"] == "message", frame
                    topic = frame["payload"]["topic"].partition("-")[0]
                    client.feed[topic].append(frame["payload"]["offset"])

        self.loop.run(catch_up)
        for client in self.clients:
            assert client.feed == client.expected


def test_three_processes_recover_exactly(history_cluster: Cluster) -> None:
    run_state_machine_as_test(
        partial(ClusterRecovery, history_cluster),  # type: ignore[arg-type]
        settings=settings(max_examples=12, stateful_step_count=15, deadline=None),
    )


async def test_the_wire_protocol_says_history_unavailable(redis_server: RedisServer) -> None:
    with trio.fail_after(LIMIT):
        backend = RedisBackend(
            redis_server.url, io_timeout=1, keepalive_interval=0.2, max_reconnect_delay=0.1
        )
        async with open_hub(backend=backend, history_size=10, on_message=protocol_handler) as hub:
            test_hub = TestHub(hub)
            redis_server.kill()
            await wait_for_state(backend, "disconnected")
            client = test_hub.connect()
            await client.send(Message("subscribe", {"topic": "news"}))
            await client.expect("error", {"code": "history_unavailable", "detail": ANY})
            assert client.server_side.topics == frozenset()
            redis_server.start()
            await wait_for_state(backend, "connected")
            await client.send(Message("subscribe", {"topic": "news"}))
            await client.expect("subscribed", {"topic": "news", "offset": 0, "epoch": ANY})


class _Lossy:
    """Stands between a backend and its hub, and loses one numbered publication."""

    def __init__(self, hub: Any, lose: int) -> None:
        self.hub = hub
        self.lose = lose

    def deliver(self, topic: str | None, data: bytes) -> None:
        self.hub.deliver(topic, data)

    def deliver_publication(self, topic: str, offset: int, epoch: str, data: bytes) -> None:
        if offset != self.lose:
            self.hub.deliver_publication(topic, offset, epoch, data)


async def test_a_node_that_missed_publications_sends_its_clients_back_to_recover(
    redis_server: RedisServer,
) -> None:
    url = redis_server.url
    with trio.fail_after(LIMIT):
        backend_a = RedisBackend(url)
        async with (
            open_hub(backend=backend_a, history_size=100) as node_a,
            open_hub(backend=RedisBackend(url), history_size=100) as node_b,
        ):
            test_hub = TestHub(node_a)
            client = test_hub.connect(wire_capacity=math.inf)
            await test_hub.recover(client, "t")
            for n in range(1, 4):
                await node_b.publish_with_position("t", item(n))
            assert numbers(await receive_n(client, 3)) == [1, 2, 3]
            # Node A's pub/sub stream loses offset 4 (as a broken connection would).
            backend_a._sink = _Lossy(node_a, lose=4)
            await node_b.publish_with_position("t", item(4))
            await node_b.publish_with_position("t", item(5))
            # Node A notices at 5 and sends its client back: nothing silent.
            await client.expect_closed(CloseCode.HISTORY_GAP)
            assert node_a.statistics().history_gaps == 1
            client, results = await client.reconnect()
            assert results["t"].recovered
            assert numbers(await receive_n(client, 2)) == [4, 5]
            await node_b.publish_with_position("t", item(6))
            assert numbers([await client.receive()]) == [6]


async def test_redis_history_expires_after_the_ttl(redis_server: RedisServer) -> None:
    """Redis' own clock decides (TIME in the scripts): so this waits, in real time."""
    with trio.fail_after(LIMIT):
        async with open_hub(
            backend=RedisBackend(redis_server.url), history_size=10, history_ttl=0.2
        ) as hub:
            start = await hub.position("t")
            await hub.publish_with_position("t", item(1))
            await hub.publish_with_position("t", item(2))
            # Only ever longer than the TTL, however slow the machine.
            await trio.sleep(0.5)
            last = await hub.publish_with_position("t", item(3))
            assert not (await hub.history("t", since=start)).recovered
            result = await hub.history("t")
            # 3 may be gone too on a machine that stalls: only 1 and 2 surely are.
            assert [p.offset for p in result.publications] in ([3], [])
            assert result.position == last


async def test_publish_with_position_never_waits_past_the_hub(redis_server: RedisServer) -> None:
    with trio.fail_after(LIMIT):
        outcome: list[BaseException] = []
        async with open_hub(backend=RedisBackend(redis_server.url), history_size=10) as hub:
            await hub.position("t")  # connected and working
            redis_server.pause()  # the next publication is sent, and never answered

            async def publish() -> None:
                try:
                    await hub.publish_with_position("t", item(1))
                except HistoryUnavailableError as exc:
                    outcome.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(publish)
                await trio.testing.wait_all_tasks_blocked()
                await hub.aclose()
        redis_server.resume()
        assert len(outcome) == 1
        assert "closed" in str(outcome[0])
