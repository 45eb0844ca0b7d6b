"""A publisher that goes as fast as the clients read, and no faster: wait_intake_open()."""

import trio
import trio.testing

from trio_hub import Message
from trio_hub.testing import MemoryClient, open_test_hub

TICKS = 100


async def read_slowly(client: MemoryClient, into: list[object]) -> None:
    while len(into) < TICKS:
        into.append((await client.receive()).payload)
        await trio.sleep(0.001)  # a slow network: one message per millisecond


async def main() -> None:
    # Intake pauses once 8 deliveries wait hub-wide (each client counts for at
    # most 4 of them), and resumes at half that.
    async with open_test_hub(intake_limit=8, ping_interval=None) as test_hub:
        hub = test_hub.hub
        # In-memory clients with no network buffer: what they have not read waits
        # in their queues, where the hub counts it.
        readers = [test_hub.connect(wire_capacity=0) for _ in range(3)]
        received: list[list[object]] = [[] for _ in readers]
        async with trio.open_nursery() as nursery:
            for reader, into in zip(readers, received, strict=True):
                nursery.start_soon(read_slowly, reader, into)
            for number in range(TICKS):
                # Returns at once while the hub keeps up; waits while it is behind.
                await hub.wait_intake_open()
                hub.broadcast(Message("tick", number))  # still never waits
        stats = hub.statistics()
        print(f"published {TICKS} ticks to {len(readers)} slow readers")
        print("intake paused:", stats.intake_pauses > 0)
        print("nothing dropped:", stats.drops == 0 and stats.evictions == 0)
        print("every reader got all, in order:", all(r == list(range(TICKS)) for r in received))


# Virtual time (a clock that jumps ahead whenever every task waits), so that the
# "slow network" above is equally slow on any machine and the output is always the same.
trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
