"""Presence benchmark: CPU per join and leave on a topic with many subscribers.

Usage::

    python bench/presence.py                   # 10,000 subscribers, 200 cycles, 3 repeats
    python bench/presence.py --quick           # CI smoke test: 1,000 subscribers, seconds
    python bench/presence.py --subscribers 10000 --cycles 500 --repeats 5

One *cycle* is one extra connection subscribing to the topic and unsubscribing
again: one ``join`` and one ``leave``. Every case runs in this process, so its
CPU is measured with :func:`time.process_time` (user + system of the whole
process) over the cycles, after one warm-up cycle:

* ``off``: a hub without presence, the baseline (a subscribe and an unsubscribe);
* ``presence``: ``open_hub(presence=True)``: entries kept, no events;
* ``events``: ``presence_events=True``: each join and leave is sent to every
  other subscriber, so the cost is the fan-out of two messages to N clients;
* ``redis``: two nodes (two hubs, each on its own ``RedisBackend``) sharing one
  ``redis-server``: the subscribers on node B, the churning connection on node
  A. The CPU is both nodes' (this process) plus Redis' own (``INFO cpu``), and
  a cycle counts once every subscriber on B has received its leave.

It also times ``await hub.presence(topic)`` with N entries (``read`` columns):
in memory, and over Redis from the node that holds none of them.

The subscribers' transport takes every frame at once and throws it away
(``send_nowait`` returns ``True``), so the figures are the hub's own work: no
socket, no kernel. ``per event`` divides a cycle's CPU by the 2 x N event
deliveries it made.

Results go to ``bench/results/presence-<UTC time>.json`` (``quick-presence-*``
with ``--quick``, which git ignores). It needs ``redis-server`` on the PATH for
the ``redis`` case, and is skipped with a note without it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shutil
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import trio
import trio.testing

from trio_hub import Hub, Message, open_hub
from trio_hub.backends.redis import RedisBackend

BENCH = Path(__file__).resolve().parent
TOPIC = "room"


class CountingTransport:
    """A transport that takes every frame at once, and counts the events."""

    __slots__ = ("events",)

    def __init__(self) -> None:
        self.events = 0

    async def receive(self) -> str | bytes:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def send_batch(self, messages: Sequence[Message]) -> None:
        await trio.lowlevel.checkpoint()

    def send_nowait(self, message: Message) -> bool:
        self.events += 1
        return True

    async def ping(self) -> None:
        await trio.lowlevel.checkpoint()

    async def close(self, code: int, reason: str) -> None:
        await trio.lowlevel.checkpoint()

    async def abort(self) -> None:
        await trio.lowlevel.checkpoint()


class Switch:
    """A ``presence_events`` predicate that the bench turns on after the setup.

    With events, each join goes to everyone already there: N subscribers
    joining one by one are N^2 / 2 deliveries (50 million for 10,000), which
    is not what is measured here.
    """

    def __init__(self) -> None:
        self.on = False

    def __call__(self, topic: str) -> bool:
        return self.on


async def add_subscribers(hub: Hub, count: int) -> list[CountingTransport]:
    transports = [CountingTransport() for _ in range(count)]
    for index, transport in enumerate(transports):
        hub.register(transport, topics=[TOPIC], identity=f"user-{index}", info={"n": index})
        if index % 100 == 0:
            await trio.lowlevel.checkpoint()
    return transports


async def cycles_locally(hub: Hub, cycles: int) -> float:
    """CPU seconds per cycle on one node."""
    churner = hub.register(CountingTransport(), identity="churner", info={"name": "C"})
    hub.subscribe(churner, TOPIC)  # warm-up
    hub.unsubscribe(churner, TOPIC)
    await trio.testing.wait_all_tasks_blocked()
    started = time.process_time()
    for _ in range(cycles):
        hub.subscribe(churner, TOPIC)
        hub.unsubscribe(churner, TOPIC)
    elapsed = time.process_time() - started
    churner.close()
    return elapsed / cycles


async def case_local(mode: str, subscribers: int, cycles: int) -> dict[str, float]:
    settings: dict[str, Any] = {"ping_interval": None}
    switch = Switch()
    if mode == "presence":
        settings["presence"] = True
    elif mode == "events":
        settings["presence_events"] = switch
    async with open_hub(**settings) as hub:
        await add_subscribers(hub, subscribers)
        switch.on = True
        await trio.testing.wait_all_tasks_blocked()
        per_cycle = await cycles_locally(hub, cycles)
        result = {"cpu_per_cycle_us": per_cycle * 1e6}
        if mode != "off":
            started = time.perf_counter()
            reads = 20
            for _ in range(reads):
                entries = await hub.presence(TOPIC)
            assert len(entries) == subscribers
            result["read_ms"] = (time.perf_counter() - started) / reads * 1e3
        return result


async def case_redis(url: str, redis_pid: int, subscribers: int, cycles: int) -> dict[str, float]:
    import psutil

    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    redis_process = psutil.Process(redis_pid)

    def redis_cpu() -> float:
        times = redis_process.cpu_times()
        return float(times.user + times.system)

    switch = Switch()
    async with (
        open_hub(
            backend=RedisBackend(url, prefix=prefix), presence_events=switch, ping_interval=None
        ) as node_a,
        open_hub(
            backend=RedisBackend(url, prefix=prefix), presence_events=switch, ping_interval=None
        ) as node_b,
    ):
        transports = await add_subscribers(node_b, subscribers)
        switch.on = True
        last = transports[-1]
        churner = node_a.register(CountingTransport(), identity="churner")

        async def wait_until(check: Callable[[], bool]) -> None:
            while not check():  # noqa: ASYNC110  the other node's state, via Redis
                await trio.sleep(0.001)

        # Node A must be subscribed to nothing, node B to the topic in Redis:
        # wait until all of B's entries are readable from A, and a first
        # join and leave have gone round.
        with trio.fail_after(60):
            while len(await node_a.presence(TOPIC)) < subscribers:  # noqa: ASYNC110
                await trio.sleep(0.01)
            node_a.subscribe(churner, TOPIC)
            node_a.unsubscribe(churner, TOPIC)
            await wait_until(lambda: last.events >= 2)
        before_events = last.events
        started = time.process_time()
        started_redis = redis_cpu()
        started_wall = time.perf_counter()
        for _ in range(cycles):
            node_a.subscribe(churner, TOPIC)
            node_a.unsubscribe(churner, TOPIC)
            # One cycle at a time, so that each is measured end to end.
            target = before_events + 2
            await wait_until(lambda target=target: last.events >= target)  # type: ignore[misc]
            before_events = last.events
        wall = time.perf_counter() - started_wall
        process_cpu = time.process_time() - started
        redis_cpu_used = redis_cpu() - started_redis
        started = time.perf_counter()
        reads = 5
        for _ in range(reads):
            entries = await node_a.presence(TOPIC)
        assert len(entries) == subscribers
        read_ms = (time.perf_counter() - started) / reads * 1e3
        return {
            "cpu_per_cycle_us": (process_cpu + redis_cpu_used) / cycles * 1e6,
            "redis_cpu_per_cycle_us": redis_cpu_used / cycles * 1e6,
            "wall_per_cycle_us": wall / cycles * 1e6,
            "read_ms": read_ms,
        }


def run_case(
    case: str, args: argparse.Namespace, redis: tuple[int, str] | None
) -> dict[str, float]:
    if case == "redis":
        assert redis is not None
        pid, url = redis
        return trio.run(case_redis, url, pid, args.subscribers, args.cycles)
    return trio.run(case_local, case, args.subscribers, args.cycles)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="CI smoke test, no timing claims")
    parser.add_argument("--subscribers", type=int, default=None, help="default 10000 (1000 quick)")
    parser.add_argument("--cycles", type=int, default=None, help="default 200 (20 quick)")
    parser.add_argument("--repeats", type=int, default=None, help="default 3 (1 quick)")
    parser.add_argument("--output-dir", type=Path, default=BENCH / "results")
    args = parser.parse_args(argv)
    args.subscribers = args.subscribers or (1000 if args.quick else 10_000)
    args.cycles = args.cycles or (20 if args.quick else 200)
    repeats = args.repeats or (1 if args.quick else 3)

    cases = ["off", "presence", "events"]
    redis_context: Any = None
    if shutil.which("redis-server"):
        sys.path.insert(0, str(BENCH))
        from scaleout import redis_server

        redis_context = redis_server(None)
        cases.append("redis")
    else:
        print("redis-server is not installed: the redis case is skipped", file=sys.stderr)

    results: dict[str, list[dict[str, float]]] = {case: [] for case in cases}
    redis = redis_context.__enter__() if redis_context is not None else None
    try:
        # Each repeat runs every case once, in turn, so that background load
        # on a shared machine spreads over the cases.
        for _ in range(repeats):
            for case in cases:
                results[case].append(run_case(case, args, redis))
    finally:
        if redis_context is not None:
            redis_context.__exit__(None, None, None)

    n = args.subscribers
    print(f"\npresence: {n} subscribers on one topic, {args.cycles} cycles, {repeats} repeat(s)")
    print(f"{'case':<10} {'cpu/cycle':>12} {'per event':>10} {'redis/cycle':>12} {'read':>9}")
    summary: dict[str, dict[str, float]] = {}
    for case, runs in results.items():
        median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        summary[case] = median
        per_event = (
            f"{median['cpu_per_cycle_us'] / (2 * n) * 1000:7.0f} ns"
            if case in ("events", "redis")
            else "-"
        )
        redis_part = (
            f"{median['redis_cpu_per_cycle_us']:9.0f} us"
            if "redis_cpu_per_cycle_us" in median
            else "-"
        )
        read = f"{median['read_ms']:6.2f} ms" if "read_ms" in median else "-"
        print(
            f"{case:<10} {median['cpu_per_cycle_us']:9.0f} us {per_event:>10} "
            f"{redis_part:>12} {read:>9}"
        )
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    path = args.output_dir / f"{'quick-presence' if args.quick else 'presence'}-{stamp}.json"
    path.write_text(
        json.dumps(
            {
                "subscribers": n,
                "cycles": args.cycles,
                "repeats": repeats,
                "machine": platform.platform(),
                "python": sys.version,
                "runs": results,
                "medians": summary,
            },
            indent=2,
        )
    )
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
