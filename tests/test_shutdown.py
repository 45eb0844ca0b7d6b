"""Deterministic shutdown (DESIGN guarantee 5), on in-memory connections.

Leaving ``open_hub()``, calling ``aclose()`` and cancelling the enclosing scope all
end the same way: registration stops with HubClosedError, queues are flushed (up
to drain_timeout), every client is closed with 1001, and no task outlives the hub.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from trio_hub import CloseCode, Hub, HubClosedError, Message, open_hub
from trio_hub.testing import MemoryClient, MemoryClientClosed, memory_connection


def task_count() -> int:
    def walk(task: trio.lowlevel.Task) -> int:
        children = [child for nursery in task.child_nurseries for child in nursery.child_tasks]
        return 1 + sum(walk(child) for child in children)

    root = trio.lowlevel.current_root_task()
    assert root is not None
    return walk(root)


async def read_to_close(peer: MemoryClient, into: list[object]) -> None:
    while True:
        try:
            message = await peer.receive(timeout=math.inf)
        except MemoryClientClosed:
            return
        payload = message.payload
        into.append(payload["n"] if isinstance(payload, dict) else payload)


async def leave_block(hub: Hub, scope: trio.CancelScope) -> None:
    """Nothing to do: the ``async with`` block ends and shuts the hub down."""


async def call_aclose(hub: Hub, scope: trio.CancelScope) -> None:
    await hub.aclose()


async def cancel_scope(hub: Hub, scope: trio.CancelScope) -> None:
    scope.cancel()
    await trio.sleep_forever()


@pytest.mark.parametrize("how", [leave_block, call_aclose, cancel_scope])
async def test_every_way_out_flushes_then_closes_with_1001_and_leaves_no_task(
    how: Callable[[Hub, trio.CancelScope], Awaitable[None]],
    autojump_clock: trio.testing.MockClock,
) -> None:
    baseline = task_count()
    received: list[list[object]] = [[], []]
    async with trio.open_nursery() as readers:
        with trio.CancelScope() as scope:
            async with open_hub() as hub:
                peers = []
                for _ in range(2):
                    transport, peer = memory_connection(wire_capacity=2)
                    hub.register(transport)
                    peers.append(peer)
                # More than the wires hold, and more than one write takes: the
                # rest is queued, and only a drain gets it out.
                for n in range(100):
                    hub.broadcast(Message("n", {"n": n, "pad": "x" * 2000}))
                assert hub.statistics().queued > 0
                for peer, into in zip(peers, received, strict=True):
                    readers.start_soon(read_to_close, peer, into)
                start = trio.current_time()
                await how(hub, scope)
        # Each client left as soon as its queue was flushed: the drain did not
        # run into drain_timeout (5 s by default), although the clock is virtual.
        assert trio.current_time() - start < 1
        assert hub.closed
        assert hub.statistics().clients == 0
        assert hub.statistics().discarded == 0
        assert received == [list(range(100)), list(range(100))]
        assert [peer.close_code for peer in peers] == [CloseCode.GOING_AWAY] * 2
    assert task_count() == baseline


async def test_drain_timeout_bounds_the_wait_for_a_client_that_never_reads(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_hub(drain_timeout=3, write_timeout=100) as hub:
        transport, stuck = memory_connection(wire_capacity=1)
        client = hub.register(transport)
        for n in range(5):
            hub.broadcast(Message("n", n))
        start = trio.current_time()
        await hub.aclose()
        # drain_timeout, then the write in progress finishes or times out
        # (write_timeout) before the close: bounded, and deterministic.
        assert trio.current_time() - start <= 3 + 100
        assert client.close_code == CloseCode.GOING_AWAY
        assert stuck.close_code is not None
        stats = hub.statistics()
        assert stats.deliveries + stats.discarded == 5


async def test_register_broadcast_and_publish_after_close_raise_hub_closed_error() -> None:
    async with open_hub() as hub:
        pass
    transport, _ = memory_connection()
    with pytest.raises(HubClosedError, match="takes no new clients"):
        hub.register(transport)
    with pytest.raises(HubClosedError, match="broadcast"):
        hub.broadcast(Message("n"))
    with pytest.raises(HubClosedError, match="publish"):
        hub.publish("t", Message("n"))
    with pytest.raises(HubClosedError):
        await hub.serve_client(transport)


async def test_register_during_shutdown_raises_and_never_deadlocks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outcomes: list[str] = []
    async with open_hub() as hub:
        transport, peer = memory_connection(wire_capacity=0)
        hub.register(transport)
        hub.broadcast(Message("n", 1))  # cannot drain until someone reads

        async def register_late() -> None:
            await trio.testing.wait_all_tasks_blocked()
            try:
                hub.register(memory_connection()[0])
            except HubClosedError:
                outcomes.append("refused")
            await peer.receive()  # let the drain finish

        async with trio.open_nursery() as nursery:
            nursery.start_soon(register_late)
            await hub.aclose()
    assert outcomes == ["refused"]


async def test_aclose_is_idempotent_and_safe_from_several_tasks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    returned: list[int] = []
    async with open_hub() as hub:
        transport, peer = memory_connection(wire_capacity=0)
        client = hub.register(transport)
        hub.broadcast(Message("n", 1))

        async def close(index: int) -> None:
            await hub.aclose()
            # Every caller returns only once the shutdown is complete.
            assert client.close_code == CloseCode.GOING_AWAY
            assert hub.statistics().clients == 0
            returned.append(index)

        async with trio.open_nursery() as nursery:
            for index in range(5):
                nursery.start_soon(close, index)
            await trio.testing.wait_all_tasks_blocked()
            assert returned == []  # all waiting for the drain
            await peer.expect("n", 1)
    await hub.aclose()
    assert sorted(returned) == list(range(5))


async def test_shutdown_under_load_with_clients_coming_and_going(
    autojump_clock: trio.testing.MockClock,
) -> None:
    baseline = task_count()
    async with trio.open_nursery() as world:
        async with open_hub(queue_size=8) as hub:
            peers: list[MemoryClient] = []

            async def churn() -> None:
                for round_ in range(200):
                    try:
                        transport, peer = memory_connection(wire_capacity=round_ % 4)
                        hub.register(transport, topics=["t"] if round_ % 2 else [])
                    except HubClosedError:
                        return
                    peers.append(peer)
                    if round_ % 3 == 0 and peers:
                        await peers.pop(0).close()
                    await trio.sleep(0.01)

            async def publish() -> None:
                for n in range(10_000):
                    try:
                        hub.broadcast(Message("n", n))
                        hub.publish("t", Message("t", n))
                    except HubClosedError:
                        return
                    await trio.sleep(0.001)

            world.start_soon(churn)
            world.start_soon(publish)
            await trio.sleep(1)
        # The block has ended: the hub is closed, and the two tasks stop.
        assert hub.statistics().clients == 0
    assert task_count() == baseline


async def test_a_client_removed_by_the_app_is_closed_with_its_code() -> None:
    async with open_hub() as hub:
        transport, peer = memory_connection()
        client = hub.register(transport)
        await client.aclose(4100, "kicked")
        assert await peer.wait_closed() == 4100
        assert peer.close_reason == "kicked"
        client.close()  # again: nothing happens
        assert client.close_code == 4100
