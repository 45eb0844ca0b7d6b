"""Presence shared by two nodes over Redis: ``python presence_redis.py REDIS_URL``.

Two hubs in one process stand for two nodes (each has its own RedisBackend,
connections and node id, as separate processes would). Alice is on node A, Bob
on node B; each node lists both, and Bob's join and leave reach Alice.
"""

import sys

import trio

from trio_hub import open_hub
from trio_hub.backends.redis import RedisBackend
from trio_hub.testing import TestHub


async def main(url: str) -> None:
    async with (
        open_hub(backend=RedisBackend(url, presence_ttl=2.0), presence_events=True) as node_a,
        open_hub(backend=RedisBackend(url, presence_ttl=2.0), presence_events=True) as node_b,
    ):
        alice = TestHub(node_a).connect(identity="alice", topics=["room"])
        # Writes to Redis are asynchronous: wait until node B sees Alice.
        while not await node_b.presence("room"):  # noqa: ASYNC110  another node's write
            await trio.sleep(0.01)
        bob = TestHub(node_b).connect(identity="bob", topics=["room"])
        joined = await alice.expect_join("room", identity="bob")
        print("alice saw", joined.identity, "join")
        for name, node in (("A", node_a), ("B", node_b)):
            entries = await node.presence("room")
            print(f"node {name} lists", [entry.identity for entry in entries])
        await bob.close()
        left = await alice.expect_leave("room", identity="bob")
        print("alice saw", left.identity, "leave")


trio.run(main, sys.argv[1])
