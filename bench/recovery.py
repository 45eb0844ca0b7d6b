"""Recovery benchmark: what history and recovery cost, on one node and over Redis.

Usage::

    python bench/recovery.py                 # 1,000 clients that each missed 100; 3 repeats
    python bench/recovery.py --quick         # CI smoke test: 50 clients, 20 missed, 1 repeat
    python bench/recovery.py --clients 1000 --missed 100 --publications 200 --repeats 5

It needs ``redis-server`` on the PATH for the Redis cases (``--no-redis`` skips them).

Two measurements, each against ``python -m trio_hub serve`` subprocesses:

* **recovery**: N clients are connected, each at the same position of one topic,
  and the topic then gets M publications (``--missed``) that none of them
  receives. Then every client sends ``subscribe`` with ``recover`` at once; the
  time runs until each has its ``subscribed`` and all M replayed messages. The
  CPU is the server's (and Redis') user + system time in that window, per
  client and per replayed message. ``memory``: one node, ``--history-size``;
  ``redis``: one node on a fresh Redis, the history in Redis Streams.
* **publication cost, history on vs off**: N clients subscribed to one topic,
  P publications (``--publications``, sent 4 at a time, each batch waiting
  until every client has it); server CPU per delivery with ``--history-size 0``
  and with history, in the same run, alternating, on one node and over Redis
  (where, with history, every publication is one Lua script call in Redis and
  comes back to the node through pub/sub before it is delivered).

The load generator runs in this process (trio + trio-websocket), pinned to the
last core; servers and Redis to the others. Medians over the repeats. Results go
to ``bench/results/recovery-<UTC time>.json`` (``quick-recovery-*`` with
``--quick``). A failed run makes the exit status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil
import trio
from trio_websocket import WebSocketConnection, connect_websocket

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import raise_open_files_limit
from run import BENCH, PYTHON, ServerSpec, running_server
from scaleout import redis_server

TOPIC = "bench"
TIMEOUT_S = 120.0


def server_spec(redis_url: str | None, history_size: int) -> ServerSpec:
    command = [PYTHON, "-m", "trio_hub", "serve", "--host", "127.0.0.1", "--port", "0"]
    command += ["--history-size", str(history_size), "--queue-size", "10000"]
    command += ["--log-level", "warning"]
    if redis_url is not None:
        command += ["--redis", redis_url, "--redis-prefix", f"bench-{uuid.uuid4().hex[:8]}"]
    return ServerSpec("trio_hub", command, "python -m trio_hub serve")


def cpu_seconds(pids: Sequence[int]) -> float:
    total = 0.0
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system
    return total


async def send(connection: WebSocketConnection, type_: str, payload: Any) -> None:
    await connection.send_message(json.dumps({"type": type_, "payload": payload}))


async def receive(connection: WebSocketConnection) -> dict[str, Any]:
    frame = json.loads(await connection.get_message())
    assert isinstance(frame, dict)
    return frame


async def open_clients(nursery: trio.Nursery, port: int, count: int) -> list[WebSocketConnection]:
    clients = []
    for _ in range(count):
        clients.append(await connect_websocket(nursery, "127.0.0.1", port, "/", use_ssl=False))
    return clients


async def receive_messages(connection: WebSocketConnection, count: int) -> None:
    got = 0
    while got < count:
        frame = await receive(connection)
        if frame["type"] == "message":
            got += 1


async def measure_recovery(
    port: int, pids: Sequence[int], clients: int, missed: int
) -> dict[str, float]:
    with trio.fail_after(TIMEOUT_S):
        return await _measure_recovery(port, pids, clients, missed)


async def _measure_recovery(
    port: int, pids: Sequence[int], clients: int, missed: int
) -> dict[str, float]:
    async with trio.open_nursery() as nursery:
        publisher, *connections = await open_clients(nursery, port, clients + 1)
        await send(publisher, "subscribe", {"topic": TOPIC})
        start = (await receive(publisher))["payload"]
        for n in range(missed):
            await send(publisher, "publish", {"topic": TOPIC, "data": n})
        await receive_messages(publisher, missed)  # all in the history now
        recover = {"topic": TOPIC, "recover": {"offset": start["offset"], "epoch": start["epoch"]}}
        cpu_before = cpu_seconds(pids)
        began = time.perf_counter()

        async def recover_one(connection: WebSocketConnection) -> None:
            await send(connection, "subscribe", recover)
            subscribed = await receive(connection)
            assert subscribed["payload"]["recovered"] is True, subscribed
            await receive_messages(connection, missed)

        async with trio.open_nursery() as recoveries:
            for connection in connections:
                recoveries.start_soon(recover_one, connection)
        elapsed = time.perf_counter() - began
        cpu = cpu_seconds(pids) - cpu_before
        for connection in [publisher, *connections]:
            await connection.aclose()
    return {
        "seconds": elapsed,
        "cpu_s": cpu,
        "cpu_us_per_client": cpu / clients * 1e6,
        "cpu_us_per_replayed": cpu / (clients * missed) * 1e6,
    }


async def measure_publications(
    port: int, pids: Sequence[int], clients: int, publications: int
) -> dict[str, float]:
    with trio.fail_after(TIMEOUT_S):
        return await _measure_publications(port, pids, clients, publications)


async def _measure_publications(
    port: int, pids: Sequence[int], clients: int, publications: int
) -> dict[str, float]:
    async with trio.open_nursery() as nursery:
        publisher, *connections = await open_clients(nursery, port, clients + 1)
        for connection in connections:
            await send(connection, "subscribe", {"topic": TOPIC})
            await receive(connection)
        cpu_before = cpu_seconds(pids)
        began = time.perf_counter()
        sent = 0
        while sent < publications:
            batch = min(4, publications - sent)
            for n in range(batch):
                await send(publisher, "publish", {"topic": TOPIC, "data": sent + n})
            async with trio.open_nursery() as receivers:
                for connection in connections:
                    receivers.start_soon(receive_messages, connection, batch)
            sent += batch
        elapsed = time.perf_counter() - began
        cpu = cpu_seconds(pids) - cpu_before
        for connection in [publisher, *connections]:
            await connection.aclose()
    return {
        "seconds": elapsed,
        "cpu_s": cpu,
        "cpu_us_per_delivery": cpu / (clients * publications) * 1e6,
    }


@contextlib.contextmanager
def maybe_redis(use: bool, cpus: set[int] | None) -> Iterator[tuple[int | None, str | None]]:
    if not use:
        yield None, None
        return
    with redis_server(cpus) as (pid, url):
        yield pid, url


def run_case(
    kind: str, backend: str, history: int, options: argparse.Namespace
) -> dict[str, float]:
    cores = sorted(os.sched_getaffinity(0))
    server_cpus = set(cores[:-1]) or set(cores)
    with maybe_redis(backend == "redis", server_cpus) as (redis_pid, redis_url):
        spec = server_spec(redis_url, history)
        with running_server(spec, min(server_cpus)) as (pid, port, _):
            pids = [pid] + ([redis_pid] if redis_pid is not None else [])
            if kind == "recovery":
                return trio.run(measure_recovery, port, pids, options.clients, options.missed)
            return trio.run(measure_publications, port, pids, options.clients, options.publications)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--missed", type=int, default=100)
    parser.add_argument("--publications", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-redis", action="store_true", help="skip the Redis cases")
    parser.add_argument("--quick", action="store_true", help="CI smoke test")
    options = parser.parse_args(argv)
    if options.quick:
        options.clients, options.missed, options.publications, options.repeats = 50, 20, 20, 1
    return options


def main(argv: Sequence[str] | None = None) -> int:
    options = _parse(argv)
    raise_open_files_limit()
    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cores[-1]})
    backends = ["memory"] if options.no_redis else ["memory", "redis"]
    history = max(options.missed, 1) * 2
    cases = [("recovery", backend, history) for backend in backends]
    cases += [("publish", backend, size) for backend in backends for size in (0, history)]
    runs: dict[str, list[dict[str, float]]] = {}
    failed = False
    for repeat in range(options.repeats):
        for kind, backend, size in cases:
            name = f"{kind} {backend}" + ("" if kind == "recovery" else f" history={size}")
            try:
                result = run_case(kind, backend, size, options)
            except Exception as exc:  # report, go on with the others
                print(f"{name}: FAILED: {exc!r}", file=sys.stderr)
                failed = True
                continue
            runs.setdefault(name, []).append(result)
            print(f"[{repeat + 1}/{options.repeats}] {name}: {result}", file=sys.stderr)
    medians = {
        name: {key: statistics.median(run[key] for run in results) for key in results[0]}
        for name, results in runs.items()
    }
    print(
        f"\n{options.clients} clients, {options.missed} missed each, "
        f"{options.publications} publications; medians of {options.repeats}"
    )
    for name, values in medians.items():
        shown = ", ".join(f"{key} {value:.4g}" for key, value in values.items())
        print(f"  {name:32} {shown}")
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    results = BENCH / "results"
    results.mkdir(exist_ok=True)
    path = results / f"{'quick-' if options.quick else ''}recovery-{stamp}.json"
    path.write_text(
        json.dumps({"options": vars(options), "runs": runs, "medians": medians}, indent=2)
    )
    print(f"results: {path}")
    return 1 if failed or not runs else 0


if __name__ == "__main__":
    sys.exit(main())
