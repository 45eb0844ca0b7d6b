"""Presence across nodes on a real redis-server (DESIGN guarantee 12).

In-process nodes first (each hub has its own RedisBackend, connections and
node id, so they are as separate as processes), then three CLI server
processes driven by a Hypothesis state machine that kills and restarts them.
Every test has a time limit; the only polling waits for other processes.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from unittest.mock import ANY

import coredis
import orjson
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
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as websocket_connect

from trio_hub import Hub, Message, PresenceInfo, open_hub, protocol_handler
from trio_hub.backends import BackendUnavailableError
from trio_hub.backends.redis import RedisBackend
from trio_hub.testing import MemoryClient, TestHub

from .redis_server import (
    REPO_ROOT,
    NodeProcess,
    RedisServer,
    eventually,
    wait_for_state,
    wait_for_subscribers,
)
from .test_cli import client as cli_client
from .test_cli import receive, request, running_server
from .test_redis import LIMIT

TTL = 1.0  # seconds: presence_ttl for these tests, short so that expiry is quick


@asynccontextmanager
async def presence_node(url: str, **settings: Any) -> AsyncIterator[tuple[Hub, RedisBackend]]:
    backend = RedisBackend(url, presence_ttl=TTL, **settings)
    async with open_hub(
        backend=backend,
        presence_events=True,
        on_message=protocol_handler,
        queue_size=10_000,
        ping_interval=None,
    ) as hub:
        yield hub, backend


def connect(hub: Hub, identity: str, *topics: str) -> MemoryClient:
    return TestHub(hub).connect(
        identity=identity, info={"who": identity}, topics=topics, wire_capacity=math.inf
    )


async def wait_for_presence(hub: Hub, topic: str, identities: list[str]) -> list[PresenceInfo]:
    """Wait until ``hub`` sees exactly ``identities`` on ``topic`` (another node writes)."""

    async def entries() -> list[PresenceInfo] | None:
        found = await hub.presence(topic)
        return found if sorted(e.identity or "" for e in found) == sorted(identities) else None

    while (found := await entries()) is None:  # noqa: ASYNC110  another process's state
        await trio.sleep(0.01)
    return found


async def test_presence_and_events_are_shared_by_the_nodes(redis_server: RedisServer) -> None:
    url = redis_server.url
    with trio.fail_after(LIMIT):
        async with presence_node(url) as (hub_a, _), presence_node(url) as (hub_b, backend_b):
            alice = connect(hub_a, "alice", "room")
            # Alice's entry and her join go to Redis in one batch, the entry
            # first: once B sees the entry, the join is out, and bob cannot get it.
            await wait_for_presence(hub_b, "room", ["alice"])
            bob = connect(hub_b, "bob")
            bob.server_side.subscribe("room")
            # Node A subscribed to the topic in Redis for alice: bob's join reaches her.
            await alice.expect_join("room", identity="bob")
            await wait_for_presence(hub_b, "room", ["alice", "bob"])
            await wait_for_subscribers(url, {backend_b.channel_name("room"): 2})
            carol = connect(hub_b, "carol", "room")
            await alice.expect_join("room", identity="carol", info={"who": "carol"})
            await bob.expect_join("room", identity="carol")
            entries = await wait_for_presence(hub_a, "room", ["alice", "bob", "carol"])
            # Node-qualified ids: unique across nodes.
            assert len({entry.client_id for entry in entries}) == 3
            assert entries[0].identity == "alice"  # this node's first
            # The wire protocol answers from every node.
            await carol.send(Message("presence", {"topic": "room"}))
            reply = await carol.expect("presence", {"topic": "room", "clients": ANY})
            assert isinstance(reply.payload, dict)
            clients = reply.payload["clients"]
            assert isinstance(clients, list)
            assert len(clients) == 3
            await carol.close()
            await alice.expect_leave("room", identity="carol")
            await bob.expect_leave("room", identity="carol")
            await wait_for_presence(hub_a, "room", ["alice", "bob"])
            statistics = hub_b.statistics()
            assert (statistics.presence_joins, statistics.presence_leaves) == (2, 1)
        # Both hubs said goodbye: nothing left in Redis but empty structures.
        async with coredis.Redis.from_url(url) as redis:
            keys = await redis.keys("trio_hub:presence:*")
            assert keys == set(), keys


async def test_a_dead_node_drops_out_and_its_leaves_are_sent(redis_server: RedisServer) -> None:
    url = redis_server.url
    with trio.fail_after(LIMIT):
        async with presence_node(url) as (hub, _):
            watcher = connect(hub, "watcher", "room")
            # A node that wrote an entry and then died: it never refreshes its
            # heartbeat, which expires after TTL.
            ghost = "deadbeef0000.1"
            entry = {"id": ghost, "identity": "ghost", "info": None}
            async with coredis.Redis.from_url(url) as redis:
                await redis.hset("trio_hub:presence:topic:room", {ghost: orjson.dumps(entry)})
                await redis.sadd("trio_hub:presence:nodes", ["deadbeef0000"])
                await redis.sadd("trio_hub:presence:topics:deadbeef0000", ["room"])
                await redis.set("trio_hub:presence:alive:deadbeef0000", "1", px=round(TTL * 1000))
            started = time.monotonic()
            await wait_for_presence(hub, "room", ["ghost", "watcher"])
            leave = await watcher.expect_leave("room", identity="ghost", timeout=3 * TTL)
            elapsed = time.monotonic() - started
            assert leave.client_id == ghost
            # The documented bound: presence_ttl * 4 / 3 (plus Redis' round trips).
            assert elapsed < TTL * 4 / 3 + 0.5, elapsed
            await assert_room(hub, ["watcher"])
            assert hub.statistics().presence_expirations == 1
            # One TTL after it was noticed, its entries are deleted.
            async with coredis.Redis.from_url(url) as redis:

                async def cleaned() -> bool:
                    return not await redis.hexists("trio_hub:presence:topic:room", ghost)

                await eventually(cleaned)
                assert not await redis.sismember("trio_hub:presence:nodes", "deadbeef0000")
            await trio.testing.wait_all_tasks_blocked()
            assert watcher.drain() == []  # one leave, never two


async def test_a_burst_of_changes_larger_than_the_outbox_is_not_lost(
    redis_server: RedisServer,
) -> None:
    # Presence changes wait in one place and go out together: they never take
    # more than one slot of the outbox, so a burst cannot overflow it.
    url = redis_server.url
    with trio.fail_after(LIMIT):
        async with (
            open_hub(backend=RedisBackend(url, outbox_size=4), presence=True) as hub_a,
            open_hub(backend=RedisBackend(url), presence=True) as hub_b,
        ):
            test_hub = TestHub(hub_a)
            clients = [test_hub.connect(identity=f"u{i}", topics=["room"]) for i in range(2000)]
            for client in clients[::2]:
                client.server_side.unsubscribe("room")
            expected = sorted(f"u{i}" for i in range(1, 2000, 2))
            found = await wait_for_presence(hub_b, "room", expected)
            assert len(found) == 1000
            assert hub_a.statistics().backend.publish_failures == 0


async def assert_room(hub: Hub, identities: list[str]) -> None:
    await TestHub(hub).assert_present("room", *identities)


async def test_presence_during_an_outage_is_an_error_then_comes_back(
    redis_server: RedisServer,
) -> None:
    url = redis_server.url
    with trio.fail_after(LIMIT):
        async with (
            presence_node(url, max_reconnect_delay=0.1) as (hub_a, backend_a),
            presence_node(url, max_reconnect_delay=0.1) as (hub_b, backend_b),
        ):
            connect(hub_a, "alice", "room")
            await wait_for_presence(hub_b, "room", ["alice"])  # her join is out
            bob = connect(hub_b, "bob", "room")
            await wait_for_presence(hub_b, "room", ["alice", "bob"])
            redis_server.kill()
            await wait_for_state(backend_b, "disconnected")
            with pytest.raises(BackendUnavailableError):
                await hub_b.presence("room")
            # Local presence goes on.
            assert [entry.identity for entry in hub_b.local_presence("room")] == ["bob"]
            await bob.send(Message("presence", {"topic": "room"}))
            await bob.expect("error", {"code": "unavailable", "detail": ANY})
            # Redis comes back empty; each node writes its entries again.
            redis_server.start()
            await wait_for_state(backend_a, "connected")
            await wait_for_state(backend_b, "connected")
            await wait_for_presence(hub_b, "room", ["alice", "bob"])
            await wait_for_presence(hub_a, "room", ["alice", "bob"])


def test_the_presence_redis_example_prints_what_the_howto_shows(
    redis_server: RedisServer,
) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "docs/examples/presence_redis.py"), redis_server.url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout == (
        "alice saw bob join\n"
        "node A lists ['alice', 'bob']\n"
        "node B lists ['bob', 'alice']\n"
        "alice saw bob leave\n"
    )


# ------------------------------------- three processes, killed and restarted
#
# Three node processes (tests/presence_node.py) on one redis-server, driven by
# a Hypothesis state machine through synchronous WebSocket clients. The model:
# which client is on which node and topic. After every step, each client must
# have received exactly the join/leave events the model says, in order, and
# presence, asked on every node, must list exactly the model's subscribers.
# A killed node's clients must be announced as leaving within the documented
# bound, presence_ttl * 4 / 3 (plus a margin for a loaded machine).

NODES = 3
MAX_CLIENTS = 5
PROCESS_TTL = 1.0
KILL_MARGIN = 2.0  # seconds on top of the bound, for a loaded single core
STEP_TIMEOUT = 10.0  # seconds for anything a step waits for
TOPIC_NAMES = ("red", "green")


@dataclass
class PresenceCluster:
    """The nodes are tests/presence_node.py processes; None where one is down."""

    redis: RedisServer
    prefix: str
    nodes: list[NodeProcess | None]

    def start(self, index: int) -> None:
        self.nodes[index] = NodeProcess(
            "tests.presence_node", self.redis.url, self.prefix, str(PROCESS_TTL)
        )


@pytest.fixture(scope="module")
def presence_cluster() -> Iterator[PresenceCluster]:
    with RedisServer() as server:
        cluster = PresenceCluster(server, f"presence-{uuid.uuid4().hex[:8]}", [None] * NODES)
        try:
            for index in range(NODES):
                cluster.start(index)
            yield cluster
        finally:
            # SIGKILL, as a crash would: a graceful stop is the stop rule's to check.
            for node in cluster.nodes:
                if node is not None:
                    node.kill()


Event = tuple[str, str, str]  # (join or leave, topic, identity)


@dataclass
class SyncClient:
    name: str
    node: int
    connection: ClientConnection
    topics: set[str] = field(default_factory=set)
    events: list[Event] = field(default_factory=list)
    expected: list[Event] = field(default_factory=list)

    def send(self, type: str, payload: object) -> None:
        self.connection.send(orjson.dumps({"type": type, "payload": payload}).decode())

    def receive(self, timeout: float) -> dict[str, Any]:
        """The next message that is not an event; events go to ``self.events``."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{self.name}: nothing within {timeout}s")
            message = orjson.loads(self.connection.recv(timeout=remaining))
            if not self._record(message):
                return message  # type: ignore[no-any-return]

    def _record(self, message: dict[str, Any]) -> bool:
        if message["type"] not in ("join", "leave"):
            return False
        payload = message["payload"]
        self.events.append((message["type"], payload["topic"], payload["client"]["identity"]))
        return True

    def wait_for_events(self, deadline: float) -> None:
        """Read until this client holds as many events as expected (or more, by then)."""
        while len(self.events) < len(self.expected):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):
                message = orjson.loads(self.connection.recv(timeout=remaining))
                assert self._record(message), f"{self.name}: unexpected {message}"
        # Whatever else has arrived already: an extra event would show here.
        while True:
            try:
                message = orjson.loads(self.connection.recv(timeout=0))
            except TimeoutError:
                return
            assert self._record(message), f"{self.name}: unexpected {message}"


example_counter = itertools.count()


class ClusterPresence(RuleBasedStateMachine):
    cluster: PresenceCluster  # set by the test

    def __init__(self) -> None:
        super().__init__()
        run = next(example_counter)
        self.topic_names = {topic: f"{topic}-{run}" for topic in TOPIC_NAMES}
        self.run = run
        self.clients: dict[str, SyncClient] = {}
        self.next_client = 0
        for index, node in enumerate(self.cluster.nodes):
            if node is None:
                self.cluster.start(index)

    # ------------------------------------------------------------ rules

    @precondition(lambda self: len(self.clients) < MAX_CLIENTS)
    @rule(node=st.integers(0, NODES - 1))
    def connect(self, node: int) -> None:
        self.do_connect(node)

    def do_connect(self, node: int) -> str | None:
        process = self.cluster.nodes[node]
        if process is None:
            return None
        name = f"c{self.run}-{self.next_client}"
        self.next_client += 1
        connection = websocket_connect(
            f"{process.url}?user={name}", open_timeout=STEP_TIMEOUT, legacy=True
        )
        self.clients[name] = SyncClient(name, node, connection)
        return name

    @precondition(lambda self: self.clients)
    @rule(data=st.data(), topic=st.sampled_from(TOPIC_NAMES))
    def subscribe(self, data: st.DataObject, topic: str) -> None:
        self.do_subscribe(self._draw_client(data), topic)

    def do_subscribe(self, client_name: str, topic: str) -> None:
        client, name = self._ask(client_name, "subscribe", topic, "subscribed")
        if name not in client.topics:
            self._announce("join", name, client)
            client.topics.add(name)
        self._settle()

    @precondition(lambda self: self.clients)
    @rule(data=st.data(), topic=st.sampled_from(TOPIC_NAMES))
    def unsubscribe(self, data: st.DataObject, topic: str) -> None:
        self.do_unsubscribe(self._draw_client(data), topic)

    def do_unsubscribe(self, client_name: str, topic: str) -> None:
        client, name = self._ask(client_name, "unsubscribe", topic, "unsubscribed")
        if name in client.topics:
            client.topics.discard(name)
            self._announce("leave", name, client)
        self._settle()

    @precondition(lambda self: self.clients)
    @rule(data=st.data())
    def disconnect(self, data: st.DataObject) -> None:
        self.do_disconnect(self._draw_client(data))

    def do_disconnect(self, client_name: str) -> None:
        client = self.clients.pop(client_name)
        client.connection.close()
        for name in sorted(client.topics):
            self._announce("leave", name, client)
        self._settle()

    @rule(node=st.integers(0, NODES - 1))
    def kill(self, node: int) -> None:
        process = self._one_of_several(node)
        if process is None:
            return
        process.kill()
        killed_at = time.monotonic()
        marks = self._forget_node(node)
        # The documented bound: within presence_ttl * 4 / 3 of the kill.
        self._settle(deadline=killed_at + PROCESS_TTL * 4 / 3 + KILL_MARGIN, unordered_from=marks)

    @rule(node=st.integers(0, NODES - 1))
    def stop(self, node: int) -> None:
        process = self._one_of_several(node)
        if process is None:
            return
        # SIGTERM: the node closes its clients and says goodbye, then exits with 0.
        assert process.stop() == 0
        marks = self._forget_node(node)
        # Said goodbye: its clients' leaves went out as they were closed.
        self._settle(unordered_from=marks)

    @rule(node=st.integers(0, NODES - 1))
    def restart(self, node: int) -> None:
        if self.cluster.nodes[node] is None:
            self.cluster.start(node)

    # ----------------------------------------------------------- helpers

    def _draw_client(self, data: st.DataObject) -> str:
        return data.draw(st.sampled_from(sorted(self.clients)))

    def _ask(
        self, client_name: str, request: str, topic: str, reply: str
    ) -> tuple[SyncClient, str]:
        """Send ``request`` for ``topic``, expect ``reply``; the client and the topic's name."""
        client = self.clients[client_name]
        name = self.topic_names[topic]
        client.send(request, {"topic": name})
        assert client.receive(STEP_TIMEOUT) == {"type": reply, "payload": {"topic": name}}
        return client, name

    def _one_of_several(self, node: int) -> NodeProcess | None:
        """The node's process, unless it is down or the last one up.

        One node stays alive, or there is nobody left to check.
        """
        process = self.cluster.nodes[node]
        if process is None or sum(n is not None for n in self.cluster.nodes) == 1:
            return None
        return process

    def _forget_node(self, node: int) -> dict[str, int]:
        """A node is gone: drop it and its clients, and expect their leaves.

        Returns, per remaining client, how many events it expected before:
        a node's leaves come in no particular order.
        """
        self.cluster.nodes[node] = None
        gone = [client for client in self.clients.values() if client.node == node]
        for client in gone:
            del self.clients[client.name]
            client.connection.close_socket()
        marks = {client.name: len(client.expected) for client in self.clients.values()}
        for client in gone:
            for name in sorted(client.topics):
                self._announce("leave", name, client)
        return marks

    # ---------------------------------------------------------- checking

    def _announce(self, kind: str, topic: str, subject: SyncClient) -> None:
        for other in self.clients.values():
            if other is not subject and topic in other.topics:
                other.expected.append((kind, topic, subject.name))

    def _settle(
        self, deadline: float | None = None, unordered_from: dict[str, int] | None = None
    ) -> None:
        if deadline is None:
            deadline = time.monotonic() + STEP_TIMEOUT
        for client in self.clients.values():
            client.wait_for_events(deadline)
        for client in self.clients.values():
            mark = (unordered_from or {}).get(client.name)
            if mark is not None and sorted(client.events[mark:]) == sorted(client.expected[mark:]):
                client.events[mark:] = client.expected[mark:]
            assert client.events == client.expected, client.name
        # Each node subscribes in Redis to a topic when its first client does,
        # and presence writes are asynchronous: wait until Redis holds what
        # the model says, so that the next step starts from a settled state.
        expected = (self._model_presence(), self._model_numsub())
        wait_until(lambda: trio.run(self._redis_state) == expected, deadline)

    def _model_presence(self) -> dict[str, set[str]]:
        return {
            name: {client.name for client in self.clients.values() if name in client.topics}
            for name in self.topic_names.values()
        }

    def _model_numsub(self) -> dict[str, int]:
        return {
            name: len({c.node for c in self.clients.values() if name in c.topics})
            for name in self.topic_names.values()
        }

    async def _redis_state(self) -> tuple[dict[str, set[str]], dict[str, int]]:
        """Who is on each topic per Redis (live nodes only), and each channel's nodes."""
        prefix = f"{self.cluster.prefix}:presence:"
        presence: dict[str, set[str]] = {}
        async with coredis.Redis.from_url(self.cluster.redis.url) as redis:
            for name in self.topic_names.values():
                presence[name] = set()
                entries = await redis.hgetall(f"{prefix}topic:{name}")
                for client_id, data in entries.items():
                    node = client_id.decode().partition(".")[0]
                    if await redis.exists([f"{prefix}alive:{node}"]):
                        presence[name].add(orjson.loads(data)["identity"])
            channels = {f"{self.cluster.prefix}:topic:{name}": name for name in presence}
            counts = await redis.pubsub_numsub(*channels)
        numsub = {channels[channel.decode()]: count for channel, count in counts.items()}
        return presence, numsub

    @invariant()
    def presence_on_every_node_matches_the_model(self) -> None:
        for client in self.clients.values():
            for name in sorted(client.topics):
                client.send("presence", {"topic": name})
                reply = client.receive(STEP_TIMEOUT)
                assert reply["type"] == "presence", reply
                listed = [entry["identity"] for entry in reply["payload"]["clients"]]
                assert len(listed) == len(set(listed)), listed
                assert set(listed) == self._model_presence()[name], (client.name, name)

    def teardown(self) -> None:
        for client in self.clients.values():
            client.connection.close()


def wait_until(check: Callable[[], bool], deadline: float) -> None:
    """Poll another process's state until ``check`` holds, or fail at ``deadline``."""
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not settled in time: {check}")
        time.sleep(0.01)


def test_a_killed_node_leaves_within_the_bound_and_a_restarted_one_rejoins(
    presence_cluster: PresenceCluster,
) -> None:
    # The kill case, spelt out: a random run may not kill a node that has
    # subscribers while others watch. kill() asserts the bound.
    ClusterPresence.cluster = presence_cluster
    machine = ClusterPresence()
    try:
        watcher = machine.do_connect(0)
        doomed = [machine.do_connect(1), machine.do_connect(1)]
        other = machine.do_connect(2)
        assert watcher
        assert other
        assert all(doomed)
        for name in [watcher, *doomed, other]:
            machine.do_subscribe(name, "red")  # type: ignore[arg-type]
        machine.do_subscribe(doomed[0], "green")  # type: ignore[arg-type]
        machine.do_subscribe(other, "green")
        machine.presence_on_every_node_matches_the_model()
        machine.kill(1)
        machine.presence_on_every_node_matches_the_model()
        assert machine.clients[watcher].events[-2:] == [
            ("leave", machine.topic_names["red"], doomed[0]),
            ("leave", machine.topic_names["red"], doomed[1]),
        ]
        machine.restart(1)
        back = machine.do_connect(1)
        assert back
        machine.do_subscribe(back, "red")
        machine.presence_on_every_node_matches_the_model()
        # A graceful stop says goodbye: its heartbeat is gone at once, not
        # after presence_ttl, and its clients' leaves were sent as they left.
        machine.stop(2)
        assert trio.run(alive_nodes, presence_cluster) == 2
        assert machine.clients[watcher].events[-1] == ("leave", machine.topic_names["red"], other)
        machine.presence_on_every_node_matches_the_model()
    finally:
        machine.teardown()


async def alive_nodes(cluster: PresenceCluster) -> int:
    async with coredis.Redis.from_url(cluster.redis.url) as redis:
        keys = await redis.keys(f"{cluster.prefix}:presence:alive:*")
    return len(keys)


def test_presence_across_three_processes_follows_the_model(
    presence_cluster: PresenceCluster,
) -> None:
    ClusterPresence.cluster = presence_cluster
    run_state_machine_as_test(
        ClusterPresence,
        settings=settings(max_examples=6, stateful_step_count=10, deadline=None),
    )


def test_entries_read_from_redis_are_parsed_exactly_or_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from trio_hub.backends._redis_presence import _parse_entry

    exact = b'{"id":"a.1","identity":null,"info":{"big":123456789012345678901234567890}}'
    entry = _parse_entry(exact)
    assert entry == PresenceInfo("a.1", None, {"big": 123456789012345678901234567890})
    assert _parse_entry(b'{"id":"a.2","identity":"x","info":[1.5]}') == PresenceInfo(
        "a.2", "x", [1.5]
    )
    for garbage in (b"not json", b'{"id":3}', b"[]", b'{"id":"a","identity":7}'):
        assert _parse_entry(garbage) is None
    assert _parse_entry(None) is None
    assert "no trio_hub wrote" in caplog.text


async def test_the_cli_shares_presence_over_redis_and_announces_a_killed_node(
    redis_server: RedisServer,
) -> None:
    flags = ("--redis", redis_server.url, "--presence", "--redis-presence-ttl", str(TTL))
    with trio.fail_after(LIMIT):
        async with (
            running_server(*flags) as node_a,
            running_server(*flags) as node_b,
            cli_client(node_a.port) as alice,
        ):
            await request(alice, "subscribe", {"topic": "room"})
            assert (await receive(alice))["type"] == "subscribed"
            async with cli_client(node_b.port) as bob:
                await request(bob, "subscribe", {"topic": "room"})
                assert (await receive(bob))["type"] == "subscribed"
                join = await receive(alice)
                assert join["type"] == "join"
                assert join["payload"]["client"]["id"].count(".") == 1  # node-qualified
                await request(bob, "presence", {"topic": "room"})
                reply = await receive(bob)
                assert len(reply["payload"]["clients"]) == 2
                node_b.process.kill()
                killed_at = trio.current_time()
                leave = await receive(alice)
                assert leave == {"type": "leave", "payload": join["payload"]}
                # The documented bound, with a margin for a loaded machine.
                assert trio.current_time() - killed_at < TTL * 4 / 3 + 2.0
            await request(alice, "presence", {"topic": "room"})
            assert len((await receive(alice))["payload"]["clients"]) == 1
