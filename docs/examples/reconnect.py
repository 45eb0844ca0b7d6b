"""Survive reconnects: a client comes back with its position and gets what it missed.

The application keeps the position of the last publication each client got (here
the in-memory test client does it), and subscribes again with it.
"""

import trio

from trio_hub import HistoryPolicy, Message, StreamPosition
from trio_hub.testing import open_test_hub


def history_for(topic: str) -> HistoryPolicy | None:
    # Prices keep their last 100 publications for 5 minutes; chat keeps none.
    return HistoryPolicy(size=100, ttl=300) if topic.startswith("prices.") else None


async def main() -> None:
    async with open_test_hub(history=history_for) as test_hub:
        hub = test_hub.hub
        browser = test_hub.connect()
        await test_hub.recover(browser, "prices.eur")  # subscribe; no position yet
        hub.publish("prices.eur", Message("price", {"bid": 1.08}))
        print("live:", await browser.receive())

        await browser.close()  # the connection drops...
        hub.publish("prices.eur", Message("price", {"bid": 1.09}))
        hub.publish("prices.eur", Message("price", {"bid": 1.10}))

        # ...and comes back with the position of the last publication it got.
        position = browser.position("prices.eur")
        assert position is not None
        print("position:", position.offset)
        browser, results = await browser.reconnect()
        result = results["prices.eur"]
        print("recovered:", result.recovered, "replayed:", len(result.publications))
        print("missed:", await browser.receive())
        print("missed:", await browser.receive())

        # A position that the history no longer covers replays nothing.
        late = test_hub.connect()
        elsewhere = StreamPosition(0, "another epoch")
        stale = await hub.recover(late.server_side, "prices.eur", elsewhere)
        print("recovered:", stale.recovered, "replayed:", len(stale.publications))
        print("statistics:", hub.statistics().recoveries, hub.statistics().recovery_failures)


trio.run(main)
