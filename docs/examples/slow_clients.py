"""What each slow-client policy does to a client that stops reading."""

import trio

from trio_hub import Message, SlowClientPolicy
from trio_hub.testing import open_test_hub


async def show(policy: SlowClientPolicy) -> None:
    # An in-memory client whose "network" buffers nothing (wire_capacity=0), so
    # whatever it has not read waits in its queue, which holds 4 messages.
    async with open_test_hub(queue_size=4, on_slow_client=policy) as test_hub:
        hub = test_hub.hub
        stuck = test_hub.connect(wire_capacity=0)
        for number in range(1, 9):
            hub.broadcast(Message("tick", number))  # never waits for `stuck`
        stats = hub.statistics()
        print(f"{policy.name}: drops={stats.drops} evictions={stats.evictions}")
        # Now shut the hub down while the client reads what it can get.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hub.aclose)
            messages, close_code = await stuck.receive_until_closed()
        print(f"  received {[message.payload for message in messages]}, closed {close_code}")


async def main() -> None:
    for policy in SlowClientPolicy:
        await show(policy)


trio.run(main)
