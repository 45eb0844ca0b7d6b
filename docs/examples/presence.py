"""Presence on one hub: who is on a topic, and join/leave events.

Three connections subscribe to "room": Alice twice (two tabs), and Bob. The
page groups the entries by identity to show people, not connections.
"""

from collections import Counter

import trio

from trio_hub import Message
from trio_hub.testing import open_test_hub


async def main() -> None:
    async with open_test_hub(presence_events=True) as test_hub:
        hub = test_hub.hub
        # In-memory clients stand for browsers here; with serve_hub the
        # identity and info come from your authenticate hook (an Admission).
        alice = test_hub.connect(identity="alice", info={"name": "Alice"}, topics=["room"])
        bob = test_hub.connect(identity="bob", info={"name": "Bob"}, topics=["room"])
        print("alice got", await alice.receive())
        second_tab = test_hub.connect(identity="alice", info={"name": "Alice"})
        second_tab.server_side.subscribe("room")
        second_tab.server_side.subscribe("room")  # twice: still one entry, one join
        print("bob got  ", await bob.receive())

        entries = await hub.presence("room")
        for entry in entries:
            print(entry)
        people = Counter(entry.identity for entry in entries)
        print("people:", dict(people))

        await second_tab.close()
        print("bob got  ", await bob.receive())
        hub.publish("room", Message("chat", "still here"))
        print("bob got  ", await bob.receive())
        statistics = hub.statistics()
        print("joins", statistics.presence_joins, "leaves", statistics.presence_leaves)


trio.run(main)
