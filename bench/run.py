"""Broadcast fan-out benchmark: trio_hub against its peers, side by side.

Usage::

    python bench/run.py                       # all servers, N = 100, 1000, 5000, 3 repeats
    python bench/run.py --quick               # CI smoke test: 50 clients, 1 repeat, seconds
    python bench/run.py --servers naive_trio,trio_hub --clients 100,1000 --repeats 5
    python bench/run.py --load open --step 1000 --max-clients 8000   # open loop, N by 1,000
    python bench/run.py --servers trio_hub --baseline-tree /tmp/base   # against another checkout
    python bench/run.py --servers trio_hub,websockets_asyncio --compression off,deflate \
        --payload words               # permessage-deflate on and off, side by side

For every server, client count and repeat it starts a fresh server process pinned to
one core and a fresh ``loadgen.py`` process pinned to another, lets the load generator
measure (see its docstring for what and how), and stops the server. It prints a table
of the medians over the repeats, writes everything to ``bench/results/*.json`` and draws
latency against clients to a PNG next to it.

With ``--load open`` the load generator runs its open loop instead (4 senders, each
sending again as soon as its own ``broadcastResult`` arrives; see ``loadgen.py``), for
N = ``--step``, 2 x ``--step``, ... up to ``--max-clients``, and the table shows the
sender round trip, the delivery lag behind the sender's result, and per server the most
clients with a p95 round trip under ``--p95-limit-ms``. A server whose p95 is already over
``--give-up-ms`` is not stepped further.

The Go peers (``servers/gorilla_hub``, ``servers/gorilla_shootout``) are built on demand
into ``bench/results/bin`` in GOPATH mode from Debian's ``golang-go`` and
``golang-github-gorilla-websocket-dev`` (nothing is downloaded); without them they are
skipped, loudly.

A server that cannot run here (``trio_hub`` before its CLI exists) is reported as
skipped, loudly; a server that starts but breaks the protocol makes the exit status 1.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict, TypeVar

import psutil
from loadgen import LoadgenResult, OpenLoopResult, raise_open_files_limit

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PYTHON = sys.executable
LISTENING = re.compile(r"listening on ws://([^/\s]+):(\d+)/")
START_TIMEOUT_S = 20.0
QUIET_PERCENT = 20.0  # a core busier than this before a run means someone else is on it
QUIET_WAIT_S = 30.0
# trio_hub servers run with this API key (--api-key), so that run.py can read
# /api/stats after each run (loopback only; the key guards nothing else).
API_KEY = "bench"
# What run.py keeps of a trio_hub server's /api/stats after each run.
HUB_FIELDS = ("peak_queued_bytes", "intake_pauses", "queued_bytes", "unsent_bytes")


@dataclass(frozen=True)
class ServerSpec:
    """How to start one server under test.

    Attributes:
        name: Short name for tables and charts.
        command: Argument vector, run from the repository root; it must log
            ``listening on ws://HOST:PORT/`` to stderr once it accepts connections.
        description: One line for the report.
        unavailable: Returns why the server cannot run here, or ``None`` if it can.
        compression: Whether it takes ``--compression {off,deflate}`` (permessage-deflate).
        hub_stats: Whether it is ``trio_hub serve``, whose ``/api/stats`` (with
            ``--api-key``) is read after each run.
    """

    name: str
    command: list[str]
    description: str
    unavailable: Callable[[], str | None] = field(default=lambda: None)
    cwd: Path = ROOT
    compression: bool = False
    hub_stats: bool = False


def _trio_hub_unavailable() -> str | None:
    # Asked of a child interpreter started where the servers start, so it sees exactly
    # what `python -m trio_hub` will see (the repo root on sys.path, or an install).
    probe = subprocess.run(
        [
            PYTHON,
            "-c",
            "import importlib.util, sys\n"
            "spec = importlib.util.find_spec('trio_hub.__main__')\n"
            "sys.exit(0 if spec else 'trio_hub has no __main__ module')",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if probe.returncode == 0:
        return None
    lines = (probe.stderr.strip() or "unknown error").splitlines()
    return f"`python -m trio_hub` cannot run here ({lines[-1]})"


GO_BIN = BENCH / "results" / "bin"
# Debian's golang-github-gorilla-websocket-dev installs its source here; GOPATH mode
# (GO111MODULE=off) finds it there, so no module is downloaded.
GO_SHARED_PATH = Path("/usr/share/gocode")
GORILLA_SOURCE = GO_SHARED_PATH / "src" / "github.com" / "gorilla" / "websocket"


def _go_build(name: str) -> Callable[[], str | None]:
    """Build ``servers/<name>`` into ``GO_BIN`` when its sources are newer; say why not."""

    def build() -> str | None:
        import shutil

        go = shutil.which("go")
        if go is None:
            return "`go` not found (apt-get install golang-go)"
        if not GORILLA_SOURCE.is_dir():
            return f"{GORILLA_SOURCE} missing (apt-get install golang-github-gorilla-websocket-dev)"
        source = BENCH / "servers" / name
        binary = GO_BIN / name
        newest = max(path.stat().st_mtime for path in source.glob("*.go"))
        if binary.exists() and binary.stat().st_mtime >= newest:
            return None
        GO_BIN.mkdir(parents=True, exist_ok=True)
        environment = {
            **os.environ,
            "GO111MODULE": "off",
            "GOPATH": f"{GO_BIN / 'gopath'}{os.pathsep}{GO_SHARED_PATH}",
            "GOCACHE": str(GO_BIN / "gocache"),
            "GOFLAGS": "",
            "GOPROXY": "off",
        }
        built = subprocess.run(
            [go, "build", "-o", str(binary), "."],
            cwd=source,
            env=environment,
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        if built.returncode != 0:
            return f"go build failed: {built.stderr.strip()[-500:]}"
        return None

    return build


def _picows_unavailable() -> str | None:
    missing = [name for name in ("picows", "uvloop") if importlib.util.find_spec(name) is None]
    return f"{' and '.join(missing)} not installed" if missing else None


SERVERS: dict[str, ServerSpec] = {
    spec.name: spec
    for spec in (
        ServerSpec(
            "naive_trio",
            [PYTHON, str(BENCH / "servers" / "naive_trio.py"), "--port", "0"],
            "Trio + trio-websocket, `for ws in clients: await ws.send_message(m)`",
        ),
        ServerSpec(
            "websockets_trio",
            [PYTHON, str(BENCH / "servers" / "websockets_trio.py"), "--port", "0"],
            "websockets.trio server + async broadcast() (a task per connection)",
        ),
        ServerSpec(
            "websockets_asyncio",
            [PYTHON, str(BENCH / "servers" / "websockets_asyncio.py"), "--port", "0"],
            "websockets.asyncio server + synchronous broadcast()",
            compression=True,
        ),
        ServerSpec(
            "trio_hub",
            [PYTHON, "-m", "trio_hub", "serve", "--host", "127.0.0.1", "--port", "0"],
            "python -m trio_hub serve",
            _trio_hub_unavailable,
            compression=True,
            hub_stats=True,
        ),
        ServerSpec(
            "trio_hub_asgi",
            [PYTHON, str(BENCH / "servers" / "trio_hub_asgi.py"), "--port", "0"],
            "trio_hub.asgi: a plain ASGI app on Hypercorn's Trio worker, protocol_handler",
            lambda: None if importlib.util.find_spec("hypercorn") else "hypercorn is not installed",
        ),
        ServerSpec(
            "trio_hub_quart",
            [PYTHON, str(BENCH / "servers" / "trio_hub_asgi.py"), "--port", "0", "--quart"],
            "trio_hub.asgi: a Quart-Trio endpoint on Hypercorn's Trio worker, protocol_handler",
            lambda: (
                None if importlib.util.find_spec("quart_trio") else "quart-trio is not installed"
            ),
        ),
        ServerSpec(
            "gorilla_hub",
            [str(GO_BIN / "gorilla_hub"), "--port", "0"],
            "Go gorilla/websocket chat Hub/Client: hub goroutine, 256-message send buffers",
            _go_build("gorilla_hub"),
        ),
        ServerSpec(
            "gorilla_shootout",
            [str(GO_BIN / "gorilla_shootout"), "--port", "0"],
            "Go gorilla/websocket, websocket-shootout style: writes under a mutex",
            _go_build("gorilla_shootout"),
        ),
        ServerSpec(
            "picows",
            [PYTHON, str(BENCH / "servers" / "picows_server.py"), "--port", "0"],
            "picows on uvloop, synchronous WSTransport.send() to each client",
            _picows_unavailable,
        ),
        ServerSpec(
            "raw_uvloop",
            [PYTHON, str(BENCH / "servers" / "raw_uvloop.py"), "--port", "0"],
            "calibration, not a contender: hand-written frames on uvloop, the loadgen's ceiling",
            lambda: None if importlib.util.find_spec("uvloop") else "uvloop is not installed",
        ),
    )
}


def baseline_spec(tree: Path) -> ServerSpec:
    """``python -m trio_hub serve`` from another checkout (``git worktree add /tmp/base main``).

    Args:
        tree: The root of that checkout; its ``trio_hub`` is imported.

    Returns:
        The spec, named ``trio_hub_base``.
    """
    spec = SERVERS["trio_hub"]
    return ServerSpec(
        "trio_hub_base",
        spec.command,
        f"{spec.description} from {tree}",
        cwd=tree,
        hub_stats=True,
    )


class RunResult(LoadgenResult):
    """One load generator run, plus how busy the cores were just before it."""

    background_busy_percent: list[float]
    load_average: list[float]  # 1, 5, 15 minutes, right after the run
    hub: dict[str, float] | None  # HUB_FIELDS of a trio_hub server, after the run


class OpenRunResult(OpenLoopResult):
    """One open-loop run, plus how busy the cores were just before it."""

    background_busy_percent: list[float]
    load_average: list[float]  # 1, 5, 15 minutes, right after the run
    hub: dict[str, float] | None  # HUB_FIELDS of a trio_hub server, after the run


class OpenSummary(TypedDict):
    """Medians over the repeats of one open-loop (server, clients) cell."""

    server: str
    clients: int
    repeats: int
    round_trip_p50_ms: float
    round_trip_p95_ms: float
    round_trip_p99_ms: float
    round_trip_p95_over_p50: float
    lag_p50_ms: float
    lag_p99_ms: float
    lag_max_ms: float
    missing_after_late: float
    broadcasts_per_s: float
    deliveries_per_s: float
    server_us_per_delivery: float
    server_cpu_percent: float
    server_core_busy_percent: float
    loadgen_cpu_percent: float
    loadgen_core_busy_percent: float
    rss_peak_mib: float
    held_peak_kib: float  # trio_hub only: the most its queues and streams held at once
    intake_pauses: float  # trio_hub only: times its intake gate closed
    p95_each_repeat_ms: list[float]


class Summary(TypedDict):
    """Medians over the repeats of one (server, clients) cell."""

    server: str
    clients: int
    repeats: int
    deliveries_per_s: float
    latency_median_ms: float
    latency_p99_ms: float
    server_us_per_delivery: float
    server_user_us_per_delivery: float
    server_system_us_per_delivery: float
    server_cpu_percent: float
    server_core_busy_percent: float
    loadgen_cpu_percent: float
    loadgen_core_busy_percent: float
    bytes_per_idle_connection: float
    wire_bytes_per_delivery: float


@dataclass(frozen=True)
class Profile:
    """How long and how hard each load generator run goes."""

    warmup_batches: int
    min_batches: int
    max_batches: int
    seconds: float
    timeout: float


FULL = Profile(warmup_batches=5, min_batches=20, max_batches=2000, seconds=5.0, timeout=60.0)
QUICK = Profile(warmup_batches=1, min_batches=3, max_batches=10, seconds=0.2, timeout=20.0)
# Open loop: the warm-up is wall time (a backlog needs time to build), the window too.
OPEN_WARMUP_S = 2.0
OPEN_QUICK_WARMUP_S = 0.2


def _pinned(cpu: int | None) -> Callable[[], None] | None:
    if cpu is None:
        return None

    def pin() -> None:
        # In the child between fork and exec, so every thread it ever starts inherits it.
        os.sched_setaffinity(0, {cpu})

    return pin


class _StderrTail:
    """Drains a child's stderr so it can never block on a full pipe; keeps the tail."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        self._stream = process.stderr
        self.lines: collections.deque[str] = collections.deque(maxlen=20)
        self.address: tuple[str, int] | None = None
        self.listening = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        for line in self._stream:
            self.lines.append(line.rstrip())
            if self.address is None and (match := LISTENING.search(line)):
                self.address = (match[1], int(match[2]))
                self.listening.set()
        self.listening.set()  # EOF: the server died before (or after) listening

    def text(self) -> str:
        return "\n".join(self.lines)


@contextlib.contextmanager
def running_server(
    spec: ServerSpec, cpu: int | None, compression: str = "off"
) -> Iterator[tuple[int, int, _StderrTail]]:
    """Start a server, wait until it listens, stop it (SIGTERM, then SIGKILL) on exit.

    Args:
        spec: The server.
        cpu: The core to pin it to, or ``None``.
        compression: ``off`` or ``deflate``, for servers that take ``--compression``.

    Yields:
        Its pid, its port and its stderr.

    Raises:
        RuntimeError: It exited or did not announce its port in time.
    """
    command = [*spec.command, f"--compression={compression}"] if spec.compression else spec.command
    if spec.hub_stats:
        # With a key, clients may no longer publish by default: say they may.
        command = [*command, f"--api-key={API_KEY}", "--client-publish=all"]
    process = subprocess.Popen(
        command,
        cwd=spec.cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_pinned(cpu),  # only sched_setaffinity, fork-safe
    )
    tail = _StderrTail(process)
    try:
        tail.listening.wait(START_TIMEOUT_S)
        if tail.address is None:
            raise RuntimeError(
                f"{spec.name} did not log 'listening on ws://HOST:PORT/' within "
                f"{START_TIMEOUT_S} s (exit status {process.poll()}); stderr:\n{tail.text()}"
            )
        yield process.pid, tail.address[1], tail
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def run_once(
    spec: ServerSpec,
    clients: int,
    profile: Profile,
    cpus: tuple[int | None, int | None],
    load: str = "closed",
    quiet_wait_s: float = QUIET_WAIT_S,
    compression: str = "off",
    payload: str = "x",
    check: str = "all",
    in_flight: int = 1,
) -> RunResult:
    """One fresh server, one load generator run against it.

    Args:
        spec: The server.
        clients: Receiver connections.
        profile: Batches and time.
        cpus: Cores for the server and for the load generator.
        load: ``closed`` (batches) or ``open`` (see ``loadgen.py``); an open-loop run
            returns an :class:`OpenRunResult` under the same type.
        quiet_wait_s: How long to wait for the cores to be quiet before the run.
        compression: ``off`` or ``deflate`` (permessage-deflate, offered and required).
        payload: What pads the messages: ``x`` or ``words`` (see ``loadgen.py``).
        check: Which receivers inflate and check compressed frames: ``all`` or ``one``.
        in_flight: Open loop: the broadcasts each sender keeps unanswered.

    Returns:
        What the load generator measured.

    Raises:
        RuntimeError: The server failed to start or the load generator failed.
    """
    # Another process hogging a core skews everything: wait a little for quiet, and
    # say so rather than hide it when it does not come.
    deadline = time.monotonic() + quiet_wait_s
    while max(background := psutil.cpu_percent(interval=0.5, percpu=True)) > QUIET_PERCENT:
        if time.monotonic() > deadline:
            print(
                f"WARNING: cores busy before this run: {background} %; numbers are skewed",
                file=sys.stderr,
                flush=True,
            )
            break
    with running_server(spec, cpus[0], compression) as (pid, port, tail):
        command = [
            PYTHON,
            str(BENCH / "loadgen.py"),
            f"--port={port}",
            f"--clients={clients}",
            f"--server-pid={pid}",
            f"--warmup-batches={profile.warmup_batches}",
            f"--min-batches={profile.min_batches}",
            f"--max-batches={profile.max_batches}",
            f"--seconds={profile.seconds}",
            f"--timeout={profile.timeout}",
            f"--payload={payload}",
            f"--check={check}",
            *(["--compression"] if compression == "deflate" else []),
        ]
        if load == "open":
            quick = profile == QUICK
            command += [
                "--load=open",
                f"--warmup-seconds={OPEN_QUICK_WARMUP_S if quick else OPEN_WARMUP_S}",
                f"--in-flight={in_flight}",
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
            preexec_fn=_pinned(cpus[1]),  # only sched_setaffinity, fork-safe
        )
        if loadgen.returncode != 0:
            raise RuntimeError(
                f"loadgen failed against {spec.name} (N={clients}): "
                f"{loadgen.stderr.strip()[-2000:]}\nserver stderr:\n{tail.text()}"
            )
        measured: LoadgenResult = json.loads(loadgen.stdout)
        return {
            **measured,
            "background_busy_percent": background,
            "load_average": list(os.getloadavg()),
            "hub": hub_statistics(port) if spec.hub_stats else None,
        }


def hub_statistics(port: int) -> dict[str, float] | None:
    """A trio_hub server's own counters (``/api/stats``), or ``None`` if it has none.

    Args:
        port: The server's port; ``/api/stats`` is served beside the WebSockets.

    Returns:
        The :data:`HUB_FIELDS` it reports (a tree from before a field existed
        lacks it), or ``None`` when the server has no such endpoint.
    """
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/stats", headers={"Authorization": f"Bearer {API_KEY}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            stats = json.load(response)
    except (OSError, ValueError):  # urllib.error.URLError is an OSError
        return None
    return {name: float(stats[name]) for name in HUB_FIELDS if name in stats}


_Result = TypeVar("_Result", LoadgenResult, OpenLoopResult)


def _median_over(runs: Sequence[_Result]) -> Callable[[Callable[[_Result], float]], float]:
    """``median(pick)``: the median over the repeats of what ``pick`` takes from a run."""

    def median(pick: Callable[[_Result], float]) -> float:
        return statistics.median(pick(run) for run in runs)

    return median


def _core_busy(run: LoadgenResult | OpenLoopResult, cpus: list[int]) -> float:
    """How busy the core of the process pinned to ``cpus`` was in ``run``, in percent.

    Meaningful only when pinned to one core: NaN otherwise.
    """
    return run["cores"][cpus[0]]["busy_percent"] if len(cpus) == 1 else float("nan")


def summarize(server: str, clients: int, runs: Sequence[LoadgenResult]) -> Summary:
    """Medians over the repeats.

    Args:
        server: Server name.
        clients: Receiver connections.
        runs: One result per repeat, at least one.

    Returns:
        The row for the table.
    """
    median = _median_over(runs)
    return {
        "server": server,
        "clients": clients,
        "repeats": len(runs),
        "deliveries_per_s": median(lambda r: r["deliveries_per_s"]),
        "latency_median_ms": median(lambda r: r["latency"]["median_ms"]),
        "latency_p99_ms": median(lambda r: r["latency"]["p99_ms"]),
        "server_us_per_delivery": median(lambda r: r["server_us_per_delivery"]),
        "server_user_us_per_delivery": median(lambda r: r["server_user_us_per_delivery"]),
        "server_system_us_per_delivery": median(lambda r: r["server_system_us_per_delivery"]),
        "server_cpu_percent": median(lambda r: r["server_cpu"]["percent_of_one_core"]),
        "server_core_busy_percent": median(lambda r: _core_busy(r, r["server_cpus"])),
        "loadgen_cpu_percent": median(lambda r: r["loadgen_cpu"]["percent_of_one_core"]),
        "loadgen_core_busy_percent": median(lambda r: _core_busy(r, r["loadgen_cpus"])),
        "wire_bytes_per_delivery": median(lambda r: r["wire_bytes_per_delivery"]),
        "bytes_per_idle_connection": median(lambda r: r["memory"]["bytes_per_idle_connection"]),
    }


def _hub_max(runs: Sequence[OpenRunResult], name: str) -> float:
    # The most over the repeats (a bound, not a typical value); NaN without it.
    values = [hub[name] for run in runs if (hub := run.get("hub")) and name in hub]
    return max(values) if values else float("nan")


def summarize_open(server: str, clients: int, runs: Sequence[OpenRunResult]) -> OpenSummary:
    """Medians over the repeats of open-loop runs, as :func:`summarize` for closed ones."""
    median = _median_over(runs)
    return {
        "server": server,
        "clients": clients,
        "repeats": len(runs),
        "round_trip_p50_ms": median(lambda r: r["round_trip"]["p50_ms"]),
        "round_trip_p95_ms": median(lambda r: r["round_trip"]["p95_ms"]),
        "round_trip_p99_ms": median(lambda r: r["round_trip"]["p99_ms"]),
        "round_trip_p95_over_p50": median(
            lambda r: r["round_trip"]["p95_ms"] / r["round_trip"]["p50_ms"]
        ),
        "lag_p50_ms": median(lambda r: r["delivery_lag"]["p50_ms"]),
        "lag_p99_ms": median(lambda r: r["delivery_lag"]["p99_ms"]),
        "lag_max_ms": median(lambda r: r["delivery_lag"]["max_ms"]),
        "missing_after_late": median(lambda r: r["missing_after_late_ms"]),
        "broadcasts_per_s": median(lambda r: r["broadcasts_per_s"]),
        "deliveries_per_s": median(lambda r: r["deliveries_per_s"]),
        "server_us_per_delivery": median(lambda r: r["server_us_per_delivery"]),
        "server_cpu_percent": median(lambda r: r["server_cpu"]["percent_of_one_core"]),
        "loadgen_cpu_percent": median(lambda r: r["loadgen_cpu"]["percent_of_one_core"]),
        "server_core_busy_percent": median(lambda r: _core_busy(r, r["server_cpus"])),
        "loadgen_core_busy_percent": median(lambda r: _core_busy(r, r["loadgen_cpus"])),
        "rss_peak_mib": median(lambda r: r["rss_peak_bytes"] / 2**20),
        "held_peak_kib": _hub_max(runs, "peak_queued_bytes") / 1024,
        "intake_pauses": _hub_max(runs, "intake_pauses"),
        "p95_each_repeat_ms": [run["round_trip"]["p95_ms"] for run in runs],
    }


def most_clients(rows: Sequence[OpenSummary], limit_ms: float) -> dict[str, int]:
    """Per server, the largest N up to which every step had a median p95 under the limit.

    Args:
        rows: The open-loop summary.
        limit_ms: The p95 round trip limit.

    Returns:
        Server name to clients (0 when even the first step was over).
    """
    best: dict[str, int] = {}
    for server in dict.fromkeys(row["server"] for row in rows):
        best[server] = 0
        for row in sorted((r for r in rows if r["server"] == server), key=lambda r: r["clients"]):
            if row["round_trip_p95_ms"] >= limit_ms:
                break
            best[server] = row["clients"]
    return best


def _or_dash(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.0f}"


def format_open_table(rows: Sequence[OpenSummary], limit_ms: float, late_ms: float) -> str:
    """Render the open-loop summary as a fixed-width text table.

    Args:
        rows: One per (server, clients).
        limit_ms: The p95 limit for the "most clients" line.
        late_ms: The lateness for the missing-deliveries column.

    Returns:
        The table, with a header line and the most-clients line per server.
    """
    header = (
        f"{'server':<18} {'N':>5} {'rtt p50':>8} {'p95':>7} {'p99':>7} {'p95/50':>6} "
        f"{'lag p50':>7} {'p99':>6} {'max':>6} {'late':>6} {'bc/s':>6} {'deliv/s':>8} "
        f"{'us/dlv':>6} {'srv%':>4} {'core0%':>6} {'lg%':>4} {'core1%':>6} {'RSS':>5} "
        f"{'held':>6} {'pauses':>6}"
    )
    units = (
        f"{'':<18} {'':>5} {'ms':>8} {'ms':>7} {'ms':>7} {'':>6} {'ms':>7} {'ms':>6} "
        f"{'ms':>6} {f'+{late_ms:.0f}ms':>6} {'':>6} {'':>8} {'cpu':>6} {'':>4} {'':>6} {'':>4} "
        f"{'':>6} {'MiB':>5} {'KiB':>6} {'':>6}"
    )
    lines = [header, units, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row['server']:<18} {row['clients']:>5} {row['round_trip_p50_ms']:>8.0f} "
            f"{row['round_trip_p95_ms']:>7.0f} {row['round_trip_p99_ms']:>7.0f} "
            f"{row['round_trip_p95_over_p50']:>6.2f} {row['lag_p50_ms']:>7.0f} "
            f"{row['lag_p99_ms']:>6.0f} {row['lag_max_ms']:>6.0f} "
            f"{row['missing_after_late']:>6.0f} {row['broadcasts_per_s']:>6.0f} "
            f"{row['deliveries_per_s']:>8.0f} {row['server_us_per_delivery']:>6.2f} "
            f"{row['server_cpu_percent']:>4.0f} {row['server_core_busy_percent']:>6.0f} "
            f"{row['loadgen_cpu_percent']:>4.0f} "
            f"{row['loadgen_core_busy_percent']:>6.0f} {row['rss_peak_mib']:>5.0f} "
            f"{_or_dash(row['held_peak_kib']):>6} {_or_dash(row['intake_pauses']):>6}"
        )
    lines.append("")
    for server, clients in most_clients(rows, limit_ms).items():
        lines.append(f"most clients with p95 round trip < {limit_ms:.0f} ms: {server} {clients}")
    return "\n".join(lines)


def format_table(rows: Sequence[Summary]) -> str:
    """Render the summary as a fixed-width text table.

    Args:
        rows: One per (server, clients).

    Returns:
        The table, with a header line.
    """
    header = (
        f"{'server':<19} {'N':>5} {'deliv/s':>9} {'lat p50':>8} {'lat p99':>8} "
        f"{'us/deliv':>8} {'usr':>5} {'sys':>5} {'srv%':>5} {'core0%':>6} "
        f"{'lg%':>5} {'core1%':>6} {'KiB/idle':>8} {'B/deliv':>7}"
    )
    units = (
        f"{'':<19} {'':>5} {'':>9} {'ms':>8} {'ms':>8} {'cpu':>8} {'us':>5} {'us':>5} "
        f"{'':>5} {'':>6} {'':>5} {'':>6} {'conn':>8} {'wire':>7}"
    )
    lines = [header, units, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row['server']:<19} {row['clients']:>5} {row['deliveries_per_s']:>9.0f} "
            f"{row['latency_median_ms']:>8.2f} {row['latency_p99_ms']:>8.2f} "
            f"{row['server_us_per_delivery']:>8.2f} {row['server_user_us_per_delivery']:>5.1f} "
            f"{row['server_system_us_per_delivery']:>5.1f} {row['server_cpu_percent']:>5.0f} "
            f"{row['server_core_busy_percent']:>6.0f} {row['loadgen_cpu_percent']:>5.0f} "
            f"{row['loadgen_core_busy_percent']:>6.0f} "
            f"{row['bytes_per_idle_connection'] / 1024:>8.1f} "
            f"{row['wire_bytes_per_delivery']:>7.0f}"
        )
    return "\n".join(lines)


_Row = TypeVar("_Row", Summary, OpenSummary)


def _by_server(rows: Sequence[_Row]) -> Iterator[tuple[str, str, list[int], list[_Row]]]:
    """For a chart: per server, its name, its colour, its client counts and its rows by N."""
    for index, server in enumerate(dict.fromkeys(row["server"] for row in rows)):
        mine = sorted((row for row in rows if row["server"] == server), key=lambda r: r["clients"])
        yield server, f"C{index}", [row["clients"] for row in mine], mine


def draw_chart(rows: Sequence[Summary], path: Path) -> None:
    """Latency (p50 solid, p99 dashed), throughput and CPU per delivery against N.

    Args:
        rows: The summary.
        path: Where to write the PNG.
    """
    import matplotlib  # slow import, only needed here

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import ScalarFormatter

    figure, (latency, rate, cpu) = plt.subplots(1, 3, figsize=(16, 5), layout="constrained")
    for server, color, clients, mine in _by_server(rows):
        latency.plot(
            clients,
            [r["latency_median_ms"] for r in mine],
            "o-",
            color=color,
            label=f"{server} p50",
        )
        latency.plot(
            clients, [r["latency_p99_ms"] for r in mine], "x--", color=color, label=f"{server} p99"
        )
        rate.plot(clients, [r["deliveries_per_s"] for r in mine], "o-", color=color, label=server)
        cpu.plot(
            clients, [r["server_us_per_delivery"] for r in mine], "o-", color=color, label=server
        )
    latency.set(
        title="Publish to last client", xlabel="clients", ylabel="ms", xscale="log", yscale="log"
    )
    rate.set(title="Deliveries per second", xlabel="clients", xscale="log")
    cpu.set(title="Server CPU per delivery (user+sys)", xlabel="clients", ylabel="us", xscale="log")
    counts = sorted({row["clients"] for row in rows})
    for axes in (latency, rate, cpu):
        axes.set_xticks(counts, [str(count) for count in counts])
        axes.minorticks_off()
        axes.yaxis.set_major_formatter(ScalarFormatter())
        axes.grid(visible=True, which="major", alpha=0.3)
        axes.legend(fontsize="small")
    rate.set_ylim(bottom=0)
    cpu.set_ylim(bottom=0)
    figure.suptitle(
        "Broadcast fan-out, ~250-byte JSON, 4 broadcasts in flight (medians over repeats)"
    )
    figure.savefig(path, dpi=110)
    plt.close(figure)


def draw_open_chart(rows: Sequence[OpenSummary], path: Path) -> None:
    """Open loop: sender round trip (p50 solid, p95 dashed) and delivery lag p99 against N.

    Args:
        rows: The open-loop summary.
        path: Where to write the PNG.
    """
    import matplotlib  # slow import, only needed here

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (round_trip, lag) = plt.subplots(1, 2, figsize=(12, 5), layout="constrained")
    for server, color, clients, mine in _by_server(rows):
        round_trip.plot(
            clients,
            [r["round_trip_p50_ms"] for r in mine],
            "o-",
            color=color,
            label=f"{server} p50",
        )
        round_trip.plot(
            clients,
            [r["round_trip_p95_ms"] for r in mine],
            "x--",
            color=color,
            label=f"{server} p95",
        )
        lag.plot(clients, [r["lag_p99_ms"] for r in mine], "o-", color=color, label=server)
    round_trip.axhline(500, color="grey", linewidth=0.8)
    round_trip.set(title="Sender round trip", xlabel="clients", ylabel="ms", yscale="log")
    lag.set(title="Delivery lag behind the sender's result, p99", xlabel="clients", ylabel="ms")
    for axes in (round_trip, lag):
        axes.grid(visible=True, alpha=0.3)
        axes.legend(fontsize="small")
    figure.suptitle("Open loop: 4 senders, each sends again on its own broadcastResult")
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("trio", "trio-websocket", "websockets", "uvloop", "trio_hub"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    return versions


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="CI smoke test, no timing claims")
    parser.add_argument(
        "--servers",
        default=",".join(
            name for name in SERVERS if name not in ("raw_uvloop", "gorilla_shootout")
        ),
        help=f"comma-separated, from: {', '.join(SERVERS)} "
        "(raw_uvloop and gorilla_shootout only on request)",
    )
    parser.add_argument(
        "--load",
        choices=("closed", "open", "both"),
        default=None,
        help="closed: batches of 4, wait for every receiver (default); open: 4 senders, "
        "each sending again on its own broadcastResult; both (the --quick default)",
    )
    parser.add_argument(
        "--clients",
        default=None,
        help="comma-separated (closed default 100,1000,5000; open default: --step to "
        "--max-clients; with --load both, the closed loop's only)",
    )
    parser.add_argument("--step", type=int, default=1000, help="open loop: N step")
    parser.add_argument(
        "--in-flight",
        type=int,
        default=1,
        help="open loop: broadcasts each sender keeps unanswered (1, websocket-shootout's)",
    )
    parser.add_argument("--max-clients", type=int, default=8000, help="open loop: last N")
    parser.add_argument(
        "--p95-limit-ms", type=float, default=500.0, help="open loop: for 'most clients'"
    )
    parser.add_argument(
        "--give-up-ms",
        type=float,
        default=3000.0,
        help="open loop: stop stepping a server once its median p95 is over this",
    )
    parser.add_argument("--repeats", type=int, default=None, help="default 3 (1 with --quick)")
    parser.add_argument("--seconds", type=float, default=None, help="measured window per run")
    parser.add_argument(
        "--quiet-wait-s",
        type=float,
        default=None,
        help=f"before each run, wait this long at most for quiet cores, then warn and go "
        f"(default {QUIET_WAIT_S:.0f}; 0 with --quick, which makes no timing claims)",
    )
    parser.add_argument("--output-dir", type=Path, default=BENCH / "results")
    parser.add_argument("--no-chart", action="store_true")
    parser.add_argument(
        "--baseline-tree",
        type=Path,
        default=None,
        help="also run `trio_hub serve` from this checkout, as trio_hub_base",
    )
    parser.add_argument(
        "--compression",
        default="off",
        help="comma-separated modes, from: off, deflate (permessage-deflate; each server "
        "that supports it runs in each mode, as NAME+deflate)",
    )
    parser.add_argument(
        "--payload",
        choices=["x", "words"],
        default="x",
        help="message padding: x (the shootout's) or words (JSON-ish text, for compression)",
    )
    parser.add_argument(
        "--check",
        choices=["all", "one"],
        default="all",
        help="which receivers inflate and check compressed frames (see loadgen.py)",
    )
    args = parser.parse_args(argv)
    if args.baseline_tree is not None:
        SERVERS["trio_hub_base"] = baseline_spec(args.baseline_tree.resolve())
        if "trio_hub_base" not in args.servers.split(","):
            args.servers += ",trio_hub_base"
    modes = set(args.compression.split(","))
    if modes - {"off", "deflate"}:
        parser.error(f"unknown compression modes {sorted(modes - {'off', 'deflate'})}")
    unknown = set(args.servers.split(",")) - set(SERVERS)
    if unknown:
        parser.error(f"unknown servers {sorted(unknown)}; known: {', '.join(SERVERS)}")
    if args.load is None:
        args.load = "both" if args.quick else "closed"
    if args.quiet_wait_s is None:
        args.quiet_wait_s = 0.0 if args.quick else QUIET_WAIT_S
    return args


def _client_counts(args: argparse.Namespace, load: str) -> list[int]:
    # With --load both, --clients is the closed loop's and the open loop steps.
    if args.clients and (load == "closed" or args.load == "open"):
        return [int(n) for n in args.clients.split(",")]
    if args.quick:
        return [50]
    if load == "open":
        return list(range(args.step, args.max_clients + 1, args.step))
    return [100, 1000, 5000]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark.

    Args:
        argv: Command line arguments, ``sys.argv[1:]`` by default.

    Returns:
        The exit status: 1 if any server that could run failed.
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
    loads = ["closed", "open"] if args.load == "both" else [args.load]
    repeats = args.repeats or (1 if args.quick else 3)
    raise_open_files_limit()  # the children inherit it

    available = sorted(os.sched_getaffinity(0))
    cpus: tuple[int | None, int | None] = (
        (available[0], available[1]) if len(available) >= 2 else (None, None)
    )
    if cpus[0] is None:
        print("WARNING: fewer than 2 cores, server and load generator share one", file=sys.stderr)

    status: dict[str, str] = {}
    runs: list[dict[str, object]] = []
    rows: list[Summary] = []
    open_rows: list[OpenSummary] = []
    started = time.monotonic()
    for server_name in args.servers.split(","):
        spec = SERVERS[server_name]
        for mode in args.compression.split(","):
            if mode == "deflate" and not spec.compression:
                continue
            name = server_name if mode == "off" else f"{server_name}+deflate"
            reason = spec.unavailable()
            if reason is not None:
                status[name] = f"skipped: {reason}"
                print(f"SKIPPED {name}: {reason}", file=sys.stderr, flush=True)
                continue
            status[name] = "ok"
            for load in loads:
                if load == "open" and mode == "deflate":
                    continue  # the open loop's receivers read plain frames only
                for count in _client_counts(args, load):
                    results: list[RunResult] = []
                    for repeat in range(repeats):
                        print(
                            f"{name} {load} N={count} repeat {repeat + 1}/{repeats} ...",
                            file=sys.stderr,
                            flush=True,
                        )
                        try:
                            result = run_once(
                                spec,
                                count,
                                profile,
                                cpus,
                                load,
                                args.quiet_wait_s,
                                mode,
                                args.payload,
                                args.check,
                                args.in_flight,
                            )
                        except (RuntimeError, subprocess.TimeoutExpired) as exc:
                            status[name] = f"failed: {exc}"
                            print(f"FAILED {name} N={count}: {exc}", file=sys.stderr, flush=True)
                            break
                        results.append(result)
                        runs.append({"server": name, "load": load, "repeat": repeat, **result})
                    if not results or status[name] != "ok":
                        break
                    if load == "closed":
                        rows.append(summarize(name, count, results))
                        continue
                    row = summarize_open(name, count, results)  # type: ignore[arg-type]
                    open_rows.append(row)
                    if row["round_trip_p95_ms"] > args.give_up_ms:
                        print(
                            f"{name}: p95 {row['round_trip_p95_ms']:.0f} ms > --give-up-ms, "
                            "not stepping further",
                            file=sys.stderr,
                            flush=True,
                        )
                        break
                if status[name] != "ok":
                    break

    if rows:
        print(format_table(rows))
    if open_rows:
        if rows:
            print()
        window = "" if args.in_flight == 1 else f", {args.in_flight} in flight each"
        print(f"open loop (4 senders, each sends again on its own broadcastResult{window})")
        print(format_open_table(open_rows, args.p95_limit_ms, 250.0))
    for name, state in status.items():
        if state != "ok":
            print(f"{name}: {state.splitlines()[0]}")

    args.output_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    kind = "fanout" if args.load == "closed" else "fanout-open" if args.load == "open" else "both"
    stem = args.output_dir / f"{'quick' if args.quick else kind}-{stamp}"
    report = {
        "created": stamp,
        "command": [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])],
        "machine": {"cpus": os.cpu_count(), "pinned": list(cpus), "platform": platform.platform()},
        "load_average_before": list(os.getloadavg()),
        "versions": _versions(),
        "profile": profile.__dict__,
        "servers": {
            name: {"description": SERVERS[name.split("+")[0]].description, "status": s}
            for name, s in status.items()
        },
        "summary": rows,
        "open_summary": open_rows,
        "most_clients": most_clients(open_rows, args.p95_limit_ms),
        "runs": runs,
        "elapsed_s": time.monotonic() - started,
    }
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {stem.with_suffix('.json')}")
    if rows and not args.no_chart:
        draw_chart(rows, stem.with_suffix(".png"))
        print(f"wrote {stem.with_suffix('.png')}")
    if open_rows and not args.no_chart:
        draw_open_chart(open_rows, stem.with_name(stem.name + "-open.png"))
        print(f"wrote {stem.with_name(stem.name + '-open.png')}")
    return 1 if any(state.startswith("failed") for state in status.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
