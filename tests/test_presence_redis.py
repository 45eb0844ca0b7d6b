"""Presence across nodes on a real redis-server (DESIGN guarantee 12).

In-process nodes first (each hub has its own RedisBackend, connections and
node id, so they are as separate as processes), then three CLI server
processes driven by a Hypothesis state machine that kills and restarts them.
Every test has a time limit; the only polling waits for other processes.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any
from unittest.mock import ANY

import coredis
import orjson
import pytest
import trio
import trio.testing

from trio_hub import Hub, Message, PresenceInfo, open_hub, protocol_handler
from trio_hub.backends import BackendUnavailableError
from trio_hub.backends.redis import RedisBackend
from trio_hub.testing import MemoryClient, TestHub

from .redis_server import RedisServer
from .test_redis import LIMIT, eventually, wait_for_state

TTL = 1.0  # seconds: presence_ttl for these tests, short so that expiry is quick


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.kill()


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
            await wait_for_subscribed(url, backend_b.channel_name("room"), 2)
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
            assert len(reply.payload["clients"]) == 3  # type: ignore[arg-type]
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
            entry = {"id": "deadbeef0000.1", "identity": "ghost", "info": None}
            async with coredis.Redis.from_url(url) as redis:
                await redis.hset("trio_hub:presence:topic:room", {entry["id"]: orjson.dumps(entry)})
                await redis.sadd("trio_hub:presence:nodes", ["deadbeef0000"])
                await redis.sadd("trio_hub:presence:topics:deadbeef0000", ["room"])
                await redis.set("trio_hub:presence:alive:deadbeef0000", "1", px=round(TTL * 1000))
            started = time.monotonic()
            await wait_for_presence(hub, "room", ["ghost", "watcher"])
            leave = await watcher.expect_leave("room", identity="ghost", timeout=3 * TTL)
            elapsed = time.monotonic() - started
            assert leave.client_id == "deadbeef0000.1"
            # The documented bound: presence_ttl * 4 / 3 (plus Redis' round trips).
            assert elapsed < TTL * 4 / 3 + 0.5, elapsed
            await assert_room(hub, ["watcher"])
            assert hub.statistics().presence_expirations == 1
            # One TTL after it was noticed, its entries are deleted.
            async with coredis.Redis.from_url(url) as redis:

                async def cleaned() -> bool:
                    return not await redis.hexists("trio_hub:presence:topic:room", entry["id"])

                await eventually(cleaned)
                assert not await redis.sismember("trio_hub:presence:nodes", "deadbeef0000")
            await trio.testing.wait_all_tasks_blocked()
            assert watcher.drain() == []  # one leave, never two


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


async def wait_for_subscribed(url: str, channel: str, nodes: int) -> None:
    async with coredis.Redis.from_url(url) as redis:

        async def subscribed() -> bool:
            counts = await redis.pubsub_numsub(channel)
            return counts[channel.encode()] == nodes  # type: ignore[index]

        await eventually(subscribed)
