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

The load generator runs in this process, on loadgen.py's bare frame walker (a
WebSocket library per client would cost more CPU than the server), pinned to the
last core; servers and Redis to the others. Medians over the repeats. Results go
to ``bench/results/recovery-<UTC time>.json`` (``quick-recovery-*`` with
``--quick``). A failed run makes the exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import psutil
from loadgen import (
    _OP_TEXT,
    Fanout,
    _Connection,
    _handshake_request,
    mask_frame,
    raise_open_files_limit,
)
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


class Client(_Connection):
    """A bare client (loadgen's frame walker): counts ``message`` frames, keeps the rest."""

    def __init__(self, fanout: Fanout, request: bytes, accept: bytes) -> None:
        super().__init__(fanout, request, accept)
        self.messages = 0
        self.others: list[dict[str, Any]] = []
        self.waiter: asyncio.Future[None] | None = None
        self.want_messages = 0
        self.want_others = 0

    def message(self, buf: bytes | bytearray, start: int, end: int, opcode: int) -> None:
        # No JSON decoding for the many: the server writes "type" first.
        if buf.startswith(b'{"type":"message"', start):
            self.messages += 1
        else:
            self.others.append(json.loads(bytes(buf[start:end])))
        self._check()

    def _check(self) -> None:
        waiter = self.waiter
        if (
            waiter is not None
            and not waiter.done()
            and self.messages >= self.want_messages
            and len(self.others) >= self.want_others
        ):
            waiter.set_result(None)

    async def wait(self, *, messages: int = 0, others: int = 0) -> None:
        """Wait until this client has at least so many of each, in all."""
        self.want_messages, self.want_others = messages, others
        self.waiter = asyncio.get_running_loop().create_future()
        self._check()
        await self.waiter

    def submit(self, type_: str, payload: Any) -> None:
        self.send(mask_frame(_OP_TEXT, json.dumps({"type": type_, "payload": payload}).encode()))


async def open_clients(port: int, count: int) -> list[Client]:
    loop = asyncio.get_running_loop()
    fanout = Fanout(0, [])
    clients = []
    for _ in range(count):
        request, accept = _handshake_request("127.0.0.1", port)
        _, protocol = await loop.create_connection(
            lambda request=request, accept=accept: Client(fanout, request, accept),
            "127.0.0.1",
            port,
        )
        await protocol.opened
        clients.append(protocol)
    return clients


async def measure_recovery(
    port: int, pids: Sequence[int], clients: int, missed: int
) -> dict[str, float]:
    publisher, *connections = await asyncio.wait_for(open_clients(port, clients + 1), TIMEOUT_S)
    publisher.submit("subscribe", {"topic": TOPIC})
    await publisher.wait(others=1)
    start = publisher.others[0]["payload"]
    for n in range(missed):
        publisher.submit("publish", {"topic": TOPIC, "data": n})
    await asyncio.wait_for(publisher.wait(messages=missed, others=1 + missed), TIMEOUT_S)
    recover = {"topic": TOPIC, "recover": {"offset": start["offset"], "epoch": start["epoch"]}}
    cpu_before = cpu_seconds(pids)
    began = time.perf_counter()
    for connection in connections:
        connection.submit("subscribe", recover)
    await asyncio.wait_for(
        asyncio.gather(*(c.wait(messages=missed, others=1) for c in connections)), TIMEOUT_S
    )
    elapsed = time.perf_counter() - began
    cpu = cpu_seconds(pids) - cpu_before
    for connection in connections:
        subscribed = connection.others[0]
        if subscribed.get("payload", {}).get("recovered") is not True:
            raise RuntimeError(f"a recovery failed: {subscribed}")
    for connection in [publisher, *connections]:
        connection.close()
    return {
        "seconds": elapsed,
        "cpu_s": cpu,
        "cpu_us_per_client": cpu / clients * 1e6,
        "cpu_us_per_replayed": cpu / (clients * missed) * 1e6,
    }


async def measure_publications(
    port: int, pids: Sequence[int], clients: int, publications: int
) -> dict[str, float]:
    publisher, *connections = await asyncio.wait_for(open_clients(port, clients + 1), TIMEOUT_S)
    for connection in connections:
        connection.submit("subscribe", {"topic": TOPIC})
    await asyncio.wait_for(asyncio.gather(*(c.wait(others=1) for c in connections)), TIMEOUT_S)
    cpu_before = cpu_seconds(pids)
    began = time.perf_counter()
    sent = 0
    while sent < publications:
        batch = min(4, publications - sent)
        for n in range(batch):
            publisher.submit("publish", {"topic": TOPIC, "data": sent + n})
        sent += batch
        await asyncio.wait_for(
            asyncio.gather(*(c.wait(messages=sent) for c in connections)), TIMEOUT_S
        )
    elapsed = time.perf_counter() - began
    cpu = cpu_seconds(pids) - cpu_before
    for connection in [publisher, *connections]:
        connection.close()
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
                measure = measure_recovery(port, pids, options.clients, options.missed)
            else:
                measure = measure_publications(port, pids, options.clients, options.publications)
            return asyncio.run(measure)


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
