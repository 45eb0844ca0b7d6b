"""Scale-out benchmark: 1, 2 and 3 ``trio_hub serve --redis`` nodes sharing one Redis.

Usage::

    python bench/scaleout.py                  # N = 100, 1000; 1 to 3 nodes; 3 repeats
    python bench/scaleout.py --quick          # CI smoke test: 30 clients, 1 repeat, seconds
    python bench/scaleout.py --clients 1000 --nodes 1,3 --repeats 5 --seconds 10

It needs ``redis-server`` on the PATH and coredis (``pip install '.[redis]'``).

For each client count N it measures, with the same load generator as ``run.py``
(``loadgen.py``: a sender sends ``broadcast`` messages 4 at a time and waits until
every receiver has them):

* ``local``: one ``python -m trio_hub serve`` without Redis, the baseline;
* ``redis x K`` for K in ``--nodes``: K ``python -m trio_hub serve --redis URL``
  processes sharing one ``redis-server`` (a fresh key prefix per run), the N
  receivers spread evenly over the K nodes (round-robin), the sender on node 1.

Latency is publish to the *last* client, wherever it is: with K > 1 that includes
the hop through Redis to the other nodes. "+p50" and "+p99" are what Redis adds
against the ``local`` baseline at the same N (medians over the repeats).
``cpu/deliv`` is the CPU (user + system) that every node and Redis spent per
delivery, so it shows what the detour costs in all.

Each repeat runs every case once, in turn, so that background load on a shared
machine spreads over the cases; the table shows medians over the repeats.

Placement: the load generator is pinned to the last core, and every node and Redis
to the other cores (on a 2-core machine: all of them to core 0). So the nodes share
the same server cores whatever K is: on a small machine this measures what Redis
costs, not how far more cores would carry it.

Results go to ``bench/results/scaleout-<UTC time>.json`` (``quick-scaleout-*`` with
``--quick``, which git ignores). A failed run makes the exit status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypedDict

import psutil
from loadgen import LoadgenResult, raise_open_files_limit
from run import (
    BENCH,
    FULL,
    PYTHON,
    QUICK,
    QUIET_PERCENT,
    QUIET_WAIT_S,
    ROOT,
    Profile,
    ServerSpec,
    running_server,
)

REDIS_READY_TIMEOUT_S = 10.0


class Row(TypedDict):
    """Medians over the repeats of one (case, clients) cell."""

    case: str
    nodes: int
    redis: bool
    clients: int
    repeats: int
    deliveries_per_s: float
    latency_median_ms: float
    latency_p99_ms: float
    added_median_ms: float
    added_p99_ms: float
    cpu_us_per_delivery: float


def _pin(cpus: set[int] | None) -> Callable[[], None] | None:
    if not cpus:
        return None

    def pin() -> None:
        # In the child between fork and exec, so every thread it starts inherits it.
        os.sched_setaffinity(0, cpus)

    return pin


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def redis_server(cpus: set[int] | None) -> Iterator[tuple[int, str]]:
    """A throwaway ``redis-server`` on a free loopback port, nothing kept on disk.

    Args:
        cpus: The cores to pin it to, or ``None``.

    Yields:
        Its pid and URL.

    Raises:
        RuntimeError: It is not installed, or did not become ready in time.
    """
    executable = shutil.which("redis-server")
    if executable is None:
        raise RuntimeError(
            "redis-server is not installed: apt-get install redis-server (Debian/Ubuntu)"
        )
    port = _free_port()
    # fmt: off
    process = subprocess.Popen(
        [
            executable,
            "--port", str(port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--logfile", "",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=_pin(cpus),  # only sched_setaffinity, fork-safe
    )
    # fmt: on
    ready = threading.Event()
    lines: list[str] = []

    def drain() -> None:
        # Read to the end, so that Redis never blocks on a full pipe.
        assert process.stdout is not None
        for line in process.stdout:
            if len(lines) < 50:
                lines.append(line.rstrip())
            if "Ready to accept connections" in line:
                ready.set()
        ready.set()

    threading.Thread(target=drain, daemon=True).start()
    try:
        ready.wait(REDIS_READY_TIMEOUT_S)
        if process.poll() is not None or not any("Ready to accept" in line for line in lines):
            raise RuntimeError("redis-server did not start:\n" + "\n".join(lines))
        yield process.pid, f"redis://127.0.0.1:{port}/0"
    finally:
        process.kill()
        process.wait()


def node_spec(redis_url: str | None, prefix: str) -> ServerSpec:
    """A ``python -m trio_hub serve`` node, on Redis when ``redis_url`` is given."""
    command = [PYTHON, "-m", "trio_hub", "serve", "--host", "127.0.0.1", "--port", "0"]
    if redis_url is not None:
        command += ["--redis", redis_url, "--redis-prefix", prefix]
    return ServerSpec("trio_hub", command, "python -m trio_hub serve")


def run_once(
    nodes: int,
    redis: tuple[int, str] | None,
    clients: int,
    profile: Profile,
    server_cpus: set[int] | None,
    loadgen_cpus: set[int] | None,
    prefix: str,
) -> LoadgenResult:
    """Start ``nodes`` fresh nodes, run the load generator against them, stop them.

    Args:
        nodes: How many nodes.
        redis: Redis' pid and URL, or ``None`` for one node without Redis.
        clients: Receivers, spread round-robin over the nodes.
        profile: Batches and time.
        server_cpus: Cores for the nodes.
        loadgen_cpus: Cores for the load generator.
        prefix: The Redis key prefix for this run.

    Returns:
        What the load generator measured.

    Raises:
        RuntimeError: A node failed to start or the load generator failed.
    """
    spec = node_spec(redis[1] if redis else None, prefix)
    # As run.py does: wait a little for quiet cores, and say so when it does not come.
    deadline = time.monotonic() + QUIET_WAIT_S
    while max(background := psutil.cpu_percent(interval=0.5, percpu=True)) > QUIET_PERCENT:
        if time.monotonic() > deadline:
            print(
                f"WARNING: cores busy before this run: {background} %; numbers are skewed",
                file=sys.stderr,
                flush=True,
            )
            break
    pinned = min(server_cpus) if server_cpus else None
    with contextlib.ExitStack() as stack:
        # run.running_server pins to one core; the nodes share the server cores.
        started = [stack.enter_context(running_server(spec, pinned)) for _ in range(nodes)]
        if server_cpus and len(server_cpus) > 1:
            # Every thread of each node (their threads inherited the first core).
            for node_pid, _, _ in started:
                for task in Path(f"/proc/{node_pid}/task").iterdir():
                    with contextlib.suppress(OSError):  # a thread that just ended
                        os.sched_setaffinity(int(task.name), server_cpus)
        (pid, port, _), *others = started
        command = [
            PYTHON,
            str(BENCH / "loadgen.py"),
            f"--port={port}",
            *(f"--extra-port={other[1]}" for other in others),
            f"--clients={clients}",
            f"--server-pid={pid}",
            *(f"--other-pid={other[0]}" for other in others),
            *([f"--other-pid={redis[0]}"] if redis else []),
            f"--warmup-batches={profile.warmup_batches}",
            f"--min-batches={profile.min_batches}",
            f"--max-batches={profile.max_batches}",
            f"--seconds={profile.seconds}",
            f"--timeout={profile.timeout}",
        ]
        # Bounded: connecting, warm-up and the window, plus every batch timing out once.
        limit = 120 + profile.seconds + 2 * profile.timeout + clients / 50
        loadgen = subprocess.run(
            command,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=limit,
            check=False,
            preexec_fn=_pin(loadgen_cpus),  # only sched_setaffinity, fork-safe
        )
        if loadgen.returncode != 0:
            stderr = "\n".join(
                f"node {index + 1}:\n{s[2].text()}" for index, s in enumerate(started)
            )
            raise RuntimeError(
                f"loadgen failed ({nodes} nodes, N={clients}): "
                f"{loadgen.stderr.strip()[-2000:]}\n{stderr}"
            )
        result: LoadgenResult = json.loads(loadgen.stdout)
        return result


def _cpu_us_per_delivery(run: LoadgenResult) -> float:
    own = run["server_cpu"]
    spent = own["user_s"] + own["system_s"]
    spent += sum(other["user_s"] + other["system_s"] for other in run["other_cpu"])
    return 1e6 * spent / run["deliveries"]


def summarize(
    case: str, nodes: int, redis: bool, clients: int, runs: Sequence[LoadgenResult]
) -> Row:
    """Medians over the repeats; the "added" columns are filled in later."""

    def median(pick: Callable[[LoadgenResult], float]) -> float:
        return statistics.median(pick(run) for run in runs)

    return {
        "case": case,
        "nodes": nodes,
        "redis": redis,
        "clients": clients,
        "repeats": len(runs),
        "deliveries_per_s": median(lambda r: r["deliveries_per_s"]),
        "latency_median_ms": median(lambda r: r["latency"]["median_ms"]),
        "latency_p99_ms": median(lambda r: r["latency"]["p99_ms"]),
        "added_median_ms": float("nan"),
        "added_p99_ms": float("nan"),
        "cpu_us_per_delivery": median(_cpu_us_per_delivery),
    }


def add_baseline(rows: list[Row]) -> None:
    """Fill in what Redis adds to the latency against ``local`` at the same N."""
    baselines = {row["clients"]: row for row in rows if not row["redis"]}
    for row in rows:
        base = baselines.get(row["clients"])
        if base is not None and row["redis"]:
            row["added_median_ms"] = row["latency_median_ms"] - base["latency_median_ms"]
            row["added_p99_ms"] = row["latency_p99_ms"] - base["latency_p99_ms"]


def format_table(rows: Sequence[Row]) -> str:
    """Render the rows as a fixed-width text table, with a header line."""
    header = (
        f"{'case':<11} {'N':>5} {'deliv/s':>9} {'lat p50':>8} {'lat p99':>8} "
        f"{'+p50':>7} {'+p99':>7} {'cpu/deliv':>9}"
    )
    units = f"{'':<11} {'':>5} {'':>9} {'ms':>8} {'ms':>8} {'ms':>7} {'ms':>7} {'us':>9}"
    lines = [header, units, "-" * len(header)]
    for row in rows:
        added = (
            f"{row['added_median_ms']:>+7.2f} {row['added_p99_ms']:>+7.2f}"
            if row["redis"]
            else f"{'':>7} {'':>7}"
        )
        lines.append(
            f"{row['case']:<11} {row['clients']:>5} {row['deliveries_per_s']:>9.0f} "
            f"{row['latency_median_ms']:>8.2f} {row['latency_p99_ms']:>8.2f} {added} "
            f"{row['cpu_us_per_delivery']:>9.2f}"
        )
    return "\n".join(lines)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="CI smoke test, no timing claims")
    parser.add_argument("--clients", default=None, help="comma-separated (default 100,1000)")
    parser.add_argument("--nodes", default="1,2,3", help="comma-separated node counts on Redis")
    parser.add_argument("--repeats", type=int, default=None, help="default 3 (1 with --quick)")
    parser.add_argument("--seconds", type=float, default=None, help="measured window per run")
    parser.add_argument("--output-dir", type=Path, default=BENCH / "results")
    args = parser.parse_args(argv)
    args.nodes = [int(n) for n in args.nodes.split(",")]
    if not all(n >= 1 for n in args.nodes):
        parser.error("--nodes: each count must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the scale-out benchmark.

    Args:
        argv: Command line arguments, ``sys.argv[1:]`` by default.

    Returns:
        The exit status: 1 if any run failed, or Redis cannot run here.
    """
    args = _parse(argv)
    profile = QUICK if args.quick else FULL
    if args.seconds is not None:
        profile = Profile(
            profile.warmup_batches,
            profile.min_batches,
            profile.max_batches,
            args.seconds,
            profile.timeout,
        )
    counts = [int(n) for n in (args.clients or ("30" if args.quick else "100,1000")).split(",")]
    repeats = args.repeats or (1 if args.quick else 3)
    if importlib.util.find_spec("coredis") is None:
        print("scaleout: coredis is missing: pip install '.[redis]'", file=sys.stderr)
        return 1
    raise_open_files_limit()  # the children inherit it

    available = sorted(os.sched_getaffinity(0))
    server_cpus: set[int] | None = set(available[:-1]) if len(available) >= 2 else None
    loadgen_cpus: set[int] | None = {available[-1]} if len(available) >= 2 else None
    if server_cpus is None:
        print("WARNING: one core only: nodes, Redis and load generator share it", file=sys.stderr)

    cases = [("local", 1, False)] + [(f"redis x {n}", n, True) for n in args.nodes]
    rows: list[Row] = []
    runs: list[dict[str, object]] = []
    failures: list[str] = []
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        try:
            redis = stack.enter_context(redis_server(server_cpus))
        except RuntimeError as exc:
            print(f"scaleout: {exc}", file=sys.stderr)
            return 1
        for count in counts:
            # Cases interleaved within each repeat, so that a burst of background
            # load on a shared machine hits one repeat of every case, not one case.
            results: dict[str, list[LoadgenResult]] = {case: [] for case, _, _ in cases}
            failed: set[str] = set()
            for repeat in range(repeats):
                for case, nodes, on_redis in cases:
                    if case in failed:
                        continue
                    print(
                        f"{case} N={count} repeat {repeat + 1}/{repeats} ...",
                        file=sys.stderr,
                        flush=True,
                    )
                    # A fresh prefix per run: nothing from a run reaches the next one.
                    prefix = f"bench{len(runs)}-{os.getpid()}"
                    try:
                        result = run_once(
                            nodes,
                            redis if on_redis else None,
                            count,
                            profile,
                            server_cpus,
                            loadgen_cpus,
                            prefix,
                        )
                    except (RuntimeError, subprocess.TimeoutExpired) as exc:
                        failed.add(case)
                        failures.append(f"{case} N={count}: {exc}")
                        print(f"FAILED {case} N={count}: {exc}", file=sys.stderr, flush=True)
                        continue
                    results[case].append(result)
                    runs.append({"case": case, "nodes": nodes, "repeat": repeat, **result})
            rows.extend(
                summarize(case, nodes, on_redis, count, results[case])
                for case, nodes, on_redis in cases
                if results[case]
            )
    add_baseline(rows)

    print(format_table(rows))
    for failure in failures:
        print(f"failed: {failure.splitlines()[0]}")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = args.output_dir / f"{'quick-scaleout' if args.quick else 'scaleout'}-{stamp}.json"
    report = {
        "created": stamp,
        "command": [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])],
        "machine": {
            "cpus": os.cpu_count(),
            "server_cpus": sorted(server_cpus or []),
            "loadgen_cpus": sorted(loadgen_cpus or []),
            "platform": platform.platform(),
        },
        "profile": profile.__dict__,
        "summary": rows,
        "failures": failures,
        "runs": runs,
        "elapsed_s": time.monotonic() - started,
    }
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
