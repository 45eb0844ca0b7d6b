"""Churn: thousands of connect, subscribe, receive, disconnect cycles while broadcasts run.

Real trio-websocket clients connect to serve_hub over loopback, subscribe through
the wire protocol, read a few messages, and leave: two in three with a clean close
handshake, one in three with a TCP reset (SO_LINGER 0, then close), as a phone
that loses its radio does. Meanwhile a broadcaster sends numbered broadcasts and
numbered publications on four topics, and long-lived "keeper" clients read
everything. At the end no client, task or memory is left behind, the keepers lost
nothing, and every client saw its messages in order (DESIGN guarantees 1, 2, 6).

The hub pings the clients while they close: they come from ``tests/wsclient.py``,
which works around trio-websocket issue #184 (a ping after the client's close
frame made its reader raise).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from trio_hub import Hub, JSONValue, Message, protocol_handler

from ..realws import receive
from ..wsclient import READ_AHEAD, connect_websocket
from .conftest import Mode
from .support import reset, rss, running, task_count, wait_until, wire

TOPICS = ("t0", "t1", "t2", "t3")
KEEPERS = 4
BROADCAST_PERIOD = 0.005  # seconds between rounds: a steady load that keepers keep up with
# The broadcaster is never more than this many rounds ahead of the slowest
# keeper. A fixed rate alone is a bet on the machine's speed: where the CPU is
# short, keepers fall behind by seconds, and the hub's pings, which a keeper
# reads in stream order behind every message sent before them, go unanswered
# for longer than pong_timeout (4001). Measured on a starved machine (load 11
# on 2 cores, pinned to a shared core): keepers read 40 messages a second, so
# a window of 50 rounds (250 messages) still meant 6 s pongs. With a window of
# a few rounds, the data in flight, and so the pong's wait, stays small, and
# the load follows the keepers whatever the machine.
KEEPER_WINDOW = 4
MIB = 1024 * 1024
# RSS may grow this much from the end of warm-up to the end. Justification,
# from measurements on this suite: a departed connection that stays referenced
# keeps about 14 KiB (3,000 clients held by the keepalive queue cost 40 MiB
# before that was fixed), while allocator noise after warm-up is 1.4 to 2.6 MiB.
# 512 bytes per cycle (long mode: 4.4 MiB for 9,000 cycles) catches a leak of
# one connection in 28; the 4 MiB floor keeps short mode above the noise (the
# keepalive leak measured 9.5 MiB there). tests/test_regressions.py checks
# object counts exactly.
PER_CYCLE_BOUND = 512  # bytes per cycle after warm-up
MIN_RSS_BOUND = 4 * MIB


@dataclass
class Broadcaster:
    hub: Hub
    keepers: list[Keeper] = field(default_factory=list)
    ticks: int = 0
    published: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TOPICS, 0))
    progress: trio.lowlevel.ParkingLot = field(default_factory=trio.lowlevel.ParkingLot)

    def keeper_progressed(self) -> None:
        self.progress.unpark_all()

    async def run(self, stop: trio.Event) -> None:
        while not stop.is_set():
            while any(len(k.ticks) < self.ticks - KEEPER_WINDOW for k in self.keepers):
                await self.progress.park()
            self.hub.broadcast(Message("tick", self.ticks))
            self.ticks += 1
            for topic in TOPICS:
                data: dict[str, JSONValue] = {"topic": topic, "data": self.published[topic]}
                self.hub.publish(topic, Message("message", data))
                self.published[topic] += 1
            # A steady rate, not a settle: the load the churn runs under.
            await trio.sleep(BROADCAST_PERIOD)
        self.hub.broadcast(Message("end", self.ticks))


class OrderCheck:
    """What one client has seen: each stream must be consecutive once it starts."""

    def __init__(self, earliest_tick: int) -> None:
        self.earliest_tick = earliest_tick
        self.last_tick: int | None = None
        self.last_topic: dict[str, int] = {}
        self.subscribed: set[str] = set()
        self.ticks = 0

    def see(self, message: dict[str, object]) -> None:
        kind = message["type"]
        payload = message["payload"]
        if kind == "tick":
            assert isinstance(payload, int)
            # Nothing from before it registered; then each broadcast, once, in order.
            assert payload >= self.earliest_tick, (payload, self.earliest_tick)
            if self.last_tick is not None:
                assert payload == self.last_tick + 1, (payload, self.last_tick)
            self.last_tick = payload
            self.ticks += 1
        elif kind == "message":
            assert isinstance(payload, dict)
            topic, number = payload["topic"], payload["data"]
            # Only topics it is subscribed to, only after the "subscribed" reply.
            assert topic in self.subscribed, (topic, self.subscribed)
            if topic in self.last_topic:
                assert number == self.last_topic[topic] + 1, (topic, number)
            self.last_topic[topic] = number
        elif kind == "subscribed":
            assert isinstance(payload, dict)
            topic = payload["topic"]
            assert isinstance(topic, str)
            self.subscribed.add(topic)
        else:
            raise AssertionError(f"unexpected message {message!r}")


@dataclass
class Tally:
    clean: int = 0
    resets: int = 0
    echoes: int = 0
    received: int = 0


async def one_cycle(port: int, index: int, broadcaster: Broadcaster, tally: Tally) -> None:
    topic = TOPICS[index % len(TOPICS)]
    check = OrderCheck(earliest_tick=broadcaster.ticks)
    async with trio.open_nursery() as nursery:
        connection = await connect_websocket(
            nursery, "127.0.0.1", port, f"/churn/{index}", use_ssl=False
        )
        try:
            await connection.send_message(wire("subscribe", {"topic": topic}))
            if index % 5 == 0:
                await connection.send_message(wire("echo", index))
            # Read until two messages of its topic have come after "subscribed".
            topic_messages = 0
            while topic_messages < 2:
                message = await receive(connection)
                tally.received += 1
                if message["type"] == "echo":
                    assert message["payload"] == index
                    tally.echoes += 1
                    continue
                check.see(message)
                topic_messages += message["type"] == "message"
            if index % 3 == 0:
                stream = connection._stream
                assert isinstance(stream, trio.SocketStream)
                reset(stream)
                tally.resets += 1
            else:
                await connection.aclose()
                tally.clean += 1
        finally:
            # Reset or closed, the socket goes now (trio-websocket's client
            # leaves it open when the close handshake ends; see realws.py), and
            # so does the client's reader, which may be blocked handing over a
            # message that nobody will read.
            await trio.aclose_forcefully(connection._stream)
            nursery.cancel_scope.cancel()


@dataclass
class Keeper:
    port: int
    name: str
    on_progress: Callable[[], None]
    ready: trio.Event = field(default_factory=trio.Event)
    ticks: list[int] = field(default_factory=list)
    topics: dict[str, list[int]] = field(default_factory=lambda: {t: [] for t in TOPICS})

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            connection = await connect_websocket(
                nursery,
                "127.0.0.1",
                self.port,
                f"/keeper/{self.name}",
                # It answers the hub's pings as they arrive (see wsclient.py).
                message_queue_size=READ_AHEAD,
            )
            try:
                for topic in TOPICS:
                    await connection.send_message(wire("subscribe", {"topic": topic}))
                for _ in TOPICS:
                    assert (await receive(connection))["type"] == "subscribed"
                self.ready.set()
                while True:
                    message = await receive(connection)
                    payload = message["payload"]
                    if message["type"] == "end":
                        break
                    if message["type"] == "tick":
                        assert isinstance(payload, int)
                        self.ticks.append(payload)
                        self.on_progress()
                    else:
                        assert isinstance(payload, dict)
                        topic, number = payload["topic"], payload["data"]
                        assert isinstance(topic, str)
                        assert isinstance(number, int)
                        self.topics[topic].append(number)
                await connection.aclose()
            finally:
                await trio.aclose_forcefully(connection._stream)


async def run_cycles(
    port: int, indexes: range, workers: int, broadcaster: Broadcaster, tally: Tally
) -> None:
    pending = iter(indexes)

    async def worker() -> None:
        for index in pending:
            await one_cycle(port, index, broadcaster, tally)

    async with trio.open_nursery() as nursery:
        for _ in range(workers):
            nursery.start_soon(worker)


async def test_churn_leaves_nothing_behind_and_keepers_lose_nothing(
    mode: Mode, figures: Callable[[str], None]
) -> None:
    tally = Tally()
    with trio.fail_after(mode.time_limit):
        started = trio.current_time()
        async with running(
            {
                "on_message": protocol_handler,
                "ping_interval": 0.5,
                "pong_timeout": 5.0,
                # Room for in-process keepers to keep up while churn takes the CPU.
                "queue_size": 4096,
            }
        ) as (hub, server):
            baseline_tasks = task_count()
            broadcaster = Broadcaster(hub)
            stop = trio.Event()
            keepers = [
                Keeper(server.port, str(number), broadcaster.keeper_progressed)
                for number in range(KEEPERS)
            ]
            broadcaster.keepers = keepers
            async with trio.open_nursery() as nursery:
                for keeper in keepers:
                    nursery.start_soon(keeper.run)
                for keeper in keepers:
                    await keeper.ready.wait()
                nursery.start_soon(broadcaster.run, stop)

                await run_cycles(
                    server.port, range(mode.churn_warmup), mode.churn_workers, broadcaster, tally
                )
                rss_before = rss()
                await run_cycles(
                    server.port,
                    range(mode.churn_warmup, mode.churn_cycles),
                    mode.churn_workers,
                    broadcaster,
                    tally,
                )
                # Same state as at the first measure: keepers and broadcaster running.
                rss_after = rss()
                await wait_until(lambda: len(hub) == KEEPERS)
                stop.set()
            await wait_until(lambda: len(hub) == 0 and server.connections == 0)
            with trio.move_on_after(10):
                await wait_until(lambda: task_count() == baseline_tasks)
            final_tasks = task_count()
            statistics = hub.statistics()
        elapsed = trio.current_time() - started

    lost = 0
    for keeper in keepers:
        lost += broadcaster.ticks - len(keeper.ticks)
        assert keeper.ticks == list(range(broadcaster.ticks))
        for topic in TOPICS:
            lost += broadcaster.published[topic] - len(keeper.topics[topic])
            assert keeper.topics[topic] == list(range(broadcaster.published[topic]))
    cycles = mode.churn_cycles
    growth = rss_after - rss_before
    bound = max(MIN_RSS_BOUND, PER_CYCLE_BOUND * (cycles - mode.churn_warmup))
    figures(
        f"churn: {cycles} cycles ({tally.clean} clean, {tally.resets} resets, "
        f"{tally.echoes} echoes, {tally.received} messages read) in {elapsed:.1f}s; "
        f"{broadcaster.ticks} broadcasts x {KEEPERS} keepers, lost {lost}; "
        f"tasks {baseline_tasks} -> {final_tasks}; "
        f"RSS after warm-up {rss_before / MIB:.1f} MiB -> {rss_after / MIB:.1f} MiB "
        f"(growth {growth / MIB:+.2f} MiB, bound {bound / MIB:.1f} MiB); "
        f"evictions {statistics.evictions}, errors {statistics.errors}"
    )
    assert tally.clean + tally.resets == cycles
    assert statistics.registrations == cycles + KEEPERS
    assert statistics.evictions == 0
    assert statistics.errors == 0
    assert final_tasks == baseline_tasks
    assert growth <= bound
