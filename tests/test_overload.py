"""Guarantee 9, overload: intake slows before queues grow; fair order; bounded backlog.

In-memory connections (``wire_capacity=0``: a client that is not reading takes
nothing, so every message for it waits in its queue) make the backlog exact,
and ``wait_all_tasks_blocked`` says when the hub has done all it can. No test
depends on timing: time-based ones run on the ``autojump_clock``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from functools import partial

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_hub import (
    Client,
    CloseCode,
    Hub,
    Message,
    MessageHandler,
    SlowClientPolicy,
    TransportClosed,
    open_hub,
    serve_hub,
)
from trio_hub._pacing import CONTRIBUTION_CAP
from trio_hub.testing import MemoryClient, TestHub, open_test_hub

from .rawws import OP_TEXT, RawWebSocket


def publisher_handler(handled: list[object]) -> MessageHandler:
    async def on_message(client: Client, message: Message) -> None:
        handled.append(message.payload)
        client.hub.broadcast(Message("relay", message.payload))

    return on_message


async def test_intake_pauses_above_the_limit_and_resumes_at_half() -> None:
    handled: list[object] = []
    async with open_test_hub(
        intake_limit=8, queue_size=100, ping_interval=None, on_message=publisher_handler(handled)
    ) as test_hub:
        hub = test_hub.hub
        stalled = [test_hub.connect(wire_capacity=0) for _ in range(4)]
        publisher = test_hub.connect(wire_capacity=math.inf)
        await trio.testing.wait_all_tasks_blocked()
        for number in range(3):
            hub.broadcast(Message("n", number))
        await trio.testing.wait_all_tasks_blocked()
        # 4 clients x 3 queued = 12 counted deliveries > 8.
        stats = hub.statistics()
        assert stats.queued == 12
        assert paused(hub)
        assert stats.intake_paused
        assert stats.intake_pauses == 1

        # broadcast() itself never waits, paused or not.
        assert hub.broadcast(Message("n", 3)) == 5
        await trio.testing.wait_all_tasks_blocked()

        # The publisher's next message waits before it is handled, and so does
        # an application publisher.
        await publisher.send(Message("broadcast", "held"))
        woke: list[str] = []

        async def application_publisher() -> None:
            await hub.wait_intake_open()
            woke.append("publisher")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(application_publisher)
            await trio.testing.wait_all_tasks_blocked()
            assert handled == []
            assert woke == []

            # Two readers catch up: 2 x 4 counted left = 8, over half the limit.
            for reader in stalled[:2]:
                assert [m.payload for m in await receive_n(reader, 4)] == [0, 1, 2, 3]
            await trio.testing.wait_all_tasks_blocked()
            assert paused(hub)
            assert handled == []

            # A third: 4 counted left, at half the limit: intake resumes.
            await receive_n(stalled[2], 4)
            await trio.testing.wait_all_tasks_blocked()
            assert not paused(hub)
            assert handled == ["held"]
            assert woke == ["publisher"]
        # The held message went out to everyone, in order after the others.
        assert [m.payload for m in await receive_n(stalled[3], 5)] == [0, 1, 2, 3, "held"]
        for reader in stalled[:3]:
            assert (await reader.receive()).payload == "held"
        assert [m.payload for m in publisher.drain()] == [0, 1, 2, 3, "held"]


def paused(hub: Hub) -> bool:
    # A call, not the property: mypy would narrow the property between asserts.
    return hub.intake_paused


async def receive_n(reader: MemoryClient, count: int) -> list[Message]:
    return [await reader.receive() for _ in range(count)]


async def test_one_client_slow_on_its_own_meets_its_policy_and_pauses_nobody(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Shutdown waits for the write under way to the stalled client: write_timeout.
    handled: list[object] = []
    async with open_test_hub(
        intake_limit=CONTRIBUTION_CAP * 2,
        queue_size=CONTRIBUTION_CAP * 3,
        ping_interval=None,
        on_message=publisher_handler(handled),
    ) as test_hub:
        hub = test_hub.hub
        slow = test_hub.connect(wire_capacity=0)
        fast = test_hub.connect(wire_capacity=math.inf)
        publisher = test_hub.connect(wire_capacity=math.inf)
        await trio.testing.wait_all_tasks_blocked()
        sent = CONTRIBUTION_CAP * 3 + 1
        for number in range(sent):
            await publisher.send(Message("broadcast", number))
            await trio.testing.wait_all_tasks_blocked()
            # The slow client counts for at most CONTRIBUTION_CAP: never paused.
            assert not paused(hub)
        assert handled == list(range(sent))
        # Evicted (its connection closes once the write under way times out).
        assert slow.server_side.closed
        assert slow.server_side.close_code == CloseCode.SLOW_CLIENT
        assert [m.payload for m in fast.drain()] == list(range(sent))
        stats = hub.statistics()
        assert stats.evictions == 1
        assert stats.intake_pauses == 0


@pytest.mark.parametrize("policy", [SlowClientPolicy.DROP_NEWEST, SlowClientPolicy.DROP_OLDEST])
async def test_drop_policies_keep_the_count_exact(policy: SlowClientPolicy) -> None:
    async with open_test_hub(
        intake_limit=100, queue_size=6, on_slow_client=policy, ping_interval=None
    ) as test_hub:
        hub = test_hub.hub
        slow = test_hub.connect(wire_capacity=0)
        await trio.testing.wait_all_tasks_blocked()
        for number in range(10):
            hub.broadcast(Message("n", number))
        await trio.testing.wait_all_tasks_blocked()
        assert hub._gate._count == min(slow.server_side.statistics().queued, CONTRIBUTION_CAP)
        assert hub.statistics().drops == 4
        while hub.statistics().queued:
            await slow.receive()
            await trio.testing.wait_all_tasks_blocked()
        assert hub._gate._count == 0
        assert hub._gate._queued_bytes == 0


async def test_write_timeout_cuts_off_stalled_clients_and_reopens_intake(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handled = trio.Event()

    async def on_message(client: Client, message: Message) -> None:
        client.hub.broadcast(Message("relay", message.payload))
        handled.set()

    async with open_test_hub(
        intake_limit=4, write_timeout=3.0, ping_interval=None, on_message=on_message
    ) as test_hub:
        hub = test_hub.hub
        stalled = [test_hub.connect(wire_capacity=0) for _ in range(3)]
        publisher = test_hub.connect(wire_capacity=math.inf)
        await trio.testing.wait_all_tasks_blocked()
        for number in range(2):
            hub.broadcast(Message("n", number))
        await trio.testing.wait_all_tasks_blocked()
        assert paused(hub)
        await publisher.send(Message("broadcast", "held"))
        start = trio.current_time()
        with trio.fail_after(10):
            await handled.wait()
        # Nobody read, so only the write timeout could reopen intake.
        assert 3.0 <= trio.current_time() - start <= 4.0
        for reader in stalled:
            assert await reader.wait_closed() == CloseCode.ABNORMAL
        assert hub.statistics().evictions == 3
        assert not paused(hub)
        assert [m.payload for m in publisher.drain()] == [0, 1, "held"]


async def test_shutdown_releases_everyone_waiting_on_intake(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Shutdown waits for the write under way to the stalled client: write_timeout.
    woke: list[str] = []
    async with open_test_hub(intake_limit=1, ping_interval=None, drain_timeout=0) as test_hub:
        hub = test_hub.hub
        stalled = [test_hub.connect(wire_capacity=0) for _ in range(2)]
        await trio.testing.wait_all_tasks_blocked()
        hub.broadcast(Message("n", 0))
        await trio.testing.wait_all_tasks_blocked()
        assert paused(hub)

        async def application_publisher() -> None:
            await hub.wait_intake_open()
            woke.append("publisher")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(application_publisher)
            await trio.testing.wait_all_tasks_blocked()
            assert woke == []
            nursery.start_soon(hub.aclose)
        assert woke == ["publisher"]
        for reader in stalled:
            assert await reader.wait_closed() in (CloseCode.GOING_AWAY, CloseCode.ABNORMAL)


async def test_without_a_limit_intake_never_pauses(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Shutdown waits for the write under way to the stalled client: write_timeout.
    async with open_test_hub(intake_limit=None, ping_interval=None) as test_hub:
        hub = test_hub.hub
        test_hub.connect(wire_capacity=0)
        await trio.testing.wait_all_tasks_blocked()
        for number in range(200):
            hub.broadcast(Message("n", number))
            with trio.testing.assert_checkpoints():
                await hub.wait_intake_open()
        assert not paused(hub)
        assert hub.statistics().peak_queued_bytes == hub.statistics().queued_bytes > 0


async def test_served_clients_behind_on_their_sockets_pause_intake() -> None:
    # Real sockets (serve_hub): a served client's backlog starts in its
    # stream, as the bytes its socket refused; those count in the gate too,
    # and in unsent_bytes / peak_queued_bytes.
    handled: list[object] = []
    with trio.fail_after(30):
        async with (
            open_hub(
                intake_limit=2,
                ping_interval=None,
                write_timeout=60,
                on_message=publisher_handler(handled),
            ) as hub,
            trio.open_nursery() as nursery,
        ):
            server = await nursery.start(partial(serve_hub, hub, "127.0.0.1", 0))
            stalled = [await RawWebSocket.connect(server.port) for _ in range(2)]
            await trio.testing.wait_all_tasks_blocked()
            assert len(hub) == 2
            big = Message("big", "x" * 65536)
            sent = 0
            # Bounded: loopback buffers hold a few MiB per connection.
            while not paused(hub) and sent < 2000:
                hub.broadcast(big)
                sent += 1
                await trio.testing.wait_all_tasks_blocked()
            assert paused(hub)
            stats = hub.statistics()
            assert stats.unsent_bytes > 0
            assert stats.peak_queued_bytes >= stats.queued_bytes + stats.unsent_bytes
            publisher = await RawWebSocket.connect(server.port)
            await publisher.send_frame(
                OP_TEXT, json.dumps({"type": "broadcast", "payload": "held"}).encode()
            )
            await trio.testing.wait_all_tasks_blocked()
            assert handled == []  # the publisher's message waits for the gate

            async def read_all(raw: RawWebSocket, received: list[object]) -> None:
                while len(received) < sent + 1:
                    opcode, payload = await raw.receive_frame()
                    assert opcode == OP_TEXT
                    received.append(json.loads(payload)["payload"])

            received: list[list[object]] = [[], []]
            async with trio.open_nursery() as readers:
                for raw, into in zip(stalled, received, strict=True):
                    readers.start_soon(read_all, raw, into)
            # Once they read, the backlog drains, intake resumes, and the held
            # message reaches everyone after everything before it.
            assert handled == ["held"]
            for into in received:
                assert into == ["x" * 65536] * sent + ["held"]
            _, payload = await publisher.receive_frame()
            assert json.loads(payload)["payload"] == "held"
            stats = hub.statistics()
            assert not stats.intake_paused
            assert stats.intake_pauses == 1
            assert stats.unsent_bytes == 0
            for raw in [*stalled, publisher]:
                await raw.aclose()
            await server.aclose()


async def test_bad_intake_limit_is_refused() -> None:
    for value in (0, -1, 1.5):
        with pytest.raises(ValueError, match="intake_limit"):
            async with open_hub(intake_limit=value):  # type: ignore[arg-type]
                pass


class OrderTransport:
    """A transport that takes every message at once and logs the order of the offers."""

    def __init__(self, log: list[tuple[int, object]], name: int) -> None:
        self._log = log
        self._name = name
        self._closed = trio.Event()

    async def receive(self) -> str | bytes:
        await self._closed.wait()
        raise TransportClosed(None, "closed")

    async def send_batch(self, messages: Sequence[Message]) -> None:
        raise AssertionError("never blocked, so never queued")

    def send_nowait(self, message: Message) -> bool:
        self._log.append((self._name, message.payload))
        return True

    async def ping(self) -> None:
        await trio.lowlevel.checkpoint()

    async def close(self, code: int, reason: str) -> None:
        self._closed.set()
        await trio.lowlevel.checkpoint()

    async def abort(self) -> None:
        await self.close(CloseCode.ABNORMAL, "")


@settings(max_examples=30, deadline=None)
@given(clients=st.integers(1, 12), rounds=st.integers(1, 4))
def test_fan_out_order_rotates_so_lateness_is_alike(clients: int, rounds: int) -> None:
    """Over ``clients`` consecutive broadcasts, every client is at every place once."""

    async def main() -> None:
        log: list[tuple[int, object]] = []
        async with open_hub(ping_interval=None) as hub:
            for name in range(clients):
                hub.register(OrderTransport(log, name))
            for number in range(clients * rounds):
                hub.broadcast(Message("n", number))
            places: dict[int, list[int]] = {name: [] for name in range(clients)}
            for number in range(clients * rounds):
                order = [name for name, payload in log if payload == number]
                assert sorted(order) == list(range(clients))
                for place, name in enumerate(order):
                    places[name].append(place)
            # Each client's mean place (its lateness within a round) is the same.
            for name in range(clients):
                assert sorted(places[name]) == sorted(list(range(clients)) * rounds)
            # And each still got every message once, in the order of the calls.
            for name in range(clients):
                assert [p for n, p in log if n == name] == list(range(clients * rounds))

    trio.run(main)


operations = st.lists(
    st.one_of(
        st.tuples(st.just("broadcast"), st.integers(1, 300)),
        st.tuples(st.just("read"), st.integers(0, 4)),
        st.tuples(st.just("leave"), st.integers(0, 4)),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=40, deadline=None)
@given(ops=operations, limit=st.integers(1, 12))
def test_the_gate_tracks_the_backlog_exactly(ops: list[tuple[str, int]], limit: int) -> None:
    """After every step: the count is the capped backlog, and paused follows it."""

    async def main() -> None:
        with trio.fail_after(30):
            async with open_test_hub(
                intake_limit=limit,
                queue_size=6,
                on_slow_client=SlowClientPolicy.DROP_OLDEST,
                ping_interval=None,
            ) as test_hub:
                await run_ops(test_hub, ops, limit)

    # A client that leaves with a write under way waits for write_timeout.
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def run_ops(test_hub: TestHub, ops: list[tuple[str, int]], limit: int) -> None:
    hub = test_hub.hub
    gate = hub._gate
    readers = [test_hub.connect(wire_capacity=0) for _ in range(5)]
    await trio.testing.wait_all_tasks_blocked()
    was_paused = False
    for what, argument in ops:
        if what == "broadcast":
            hub.broadcast(Message("n", "x" * argument))
        elif what == "read":
            reader = readers[argument]
            if not reader.server_side.closed and reader.server_side.statistics().queued:
                await reader.receive()
        elif not readers[argument].server_side.closed:
            await readers[argument].close()
        await trio.testing.wait_all_tasks_blocked()
        clients = [reader.server_side for reader in readers]
        count = sum(min(c.statistics().queued, CONTRIBUTION_CAP) for c in clients)
        assert gate._count == count
        assert gate._queued_bytes == hub.statistics().queued_bytes
        assert gate._peak_queued_bytes >= gate._queued_bytes
        # Hysteresis: paused above the limit, open at or below half, and in
        # between it keeps the state it had.
        if count > limit:
            assert paused(hub)
        elif count <= limit // 2:
            assert not paused(hub)
        else:
            assert paused(hub) == was_paused
        was_paused = paused(hub)
