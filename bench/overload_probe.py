"""Run ``python -m trio_hub serve`` with a probe that records where the backlog sits.

Usage (instead of ``python -m trio_hub serve``; same arguments)::

    TRIO_HUB_PROBE_OUT=/tmp/probe.json python bench/overload_probe.py serve --port 0

Not a benchmark and not a test: an analysis aid for the overload design (issue 14).
It reaches into trio_hub's private state, so it only runs against the tree it ships
with. Every 100 ms it records, for each client in registration order, how many
messages wait in its queue and how many bytes its stream holds that the socket has
not taken, and for every ``broadcastResult`` how much is queued ahead of it on the
sender's own connection. At exit it writes a summary to ``$TRIO_HUB_PROBE_OUT``.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio_hub.__main__ as cli
from trio_hub import _protocol

SAMPLE_S = 0.1
_open_hub = cli.open_hub
_broadcast = _protocol._broadcast
results_ahead: list[tuple[int, int, int]] = []  # (sender id, queued msgs, held bytes)
samples: list[dict[str, Any]] = []
started = time.monotonic()


def _held(client: Any) -> int:
    stream = getattr(client._transport, "_stream", None)
    return 0 if stream is None else len(stream._pending) + stream._batch_bytes


def _probed_broadcast(client: Any, payload: Any) -> None:
    # Before the result is offered: what it will wait behind on the sender's socket.
    _broadcast(client, payload)
    results_ahead.append((client.id, client._backlog - 1 if client._backlog else 0, _held(client)))


async def _sample(hub: Any) -> None:
    while True:
        await trio.sleep(SAMPLE_S)
        clients = hub.clients
        if not clients:
            continue
        queued = [client._backlog for client in clients]
        held = [_held(client) for client in clients]
        samples.append(
            {
                "t": time.monotonic() - started,
                "clients": len(clients),
                "ids": [clients[0].id, clients[-1].id],
                "queued": queued,
                "held_bytes": held,
                "writing": sum(client._writing for client in clients),
                "tasks": trio.lowlevel.current_statistics().tasks_living,
                "runnable": trio.lowlevel.current_statistics().tasks_runnable,
            }
        )


def _summary(hub: Any) -> dict[str, Any]:
    busy = [s for s in samples if s["clients"] > 100 and sum(s["queued"]) > 0]
    out: dict[str, Any] = {"samples": len(samples), "busy_samples": len(busy)}
    # The hub's own figures (issue 14; absent from a hub before it).
    stats = hub.statistics()
    for name in ("peak_queued_bytes", "intake_pauses"):
        out[name] = getattr(stats, name, None)
    if busy:
        n = min(s["clients"] for s in busy)
        deciles = 10
        by_decile_queued = [0.0] * deciles
        by_decile_backlogged = [0.0] * deciles
        for s in busy:
            for index in range(n):
                decile = index * deciles // n
                by_decile_queued[decile] += s["queued"][index]
                by_decile_backlogged[decile] += s["queued"][index] > 0 or s["held_bytes"][index] > 0
        size = n / deciles
        out["queued_mean_per_client_by_registration_decile"] = [
            round(v / len(busy) / size, 2) for v in by_decile_queued
        ]
        out["backlogged_fraction_by_registration_decile"] = [
            round(v / len(busy) / size, 3) for v in by_decile_backlogged
        ]
        out["first_8_clients_queued_mean"] = [
            round(statistics.mean(s["queued"][i] for s in busy), 2) for i in range(min(8, n))
        ]
        out["hub_queued_messages"] = {
            "median": statistics.median(sum(s["queued"]) for s in busy),
            "max": max(sum(s["queued"]) for s in busy),
        }
        out["hub_held_bytes"] = {
            "median": statistics.median(sum(s["held_bytes"]) for s in busy),
            "max": max(sum(s["held_bytes"]) for s in busy),
        }
        out["clients_with_a_queue"] = {
            "median": statistics.median(sum(q > 0 for q in s["queued"]) for s in busy),
            "max": max(sum(q > 0 for q in s["queued"]) for s in busy),
        }
        out["max_queue"] = max(max(s["queued"]) for s in busy)
        out["runnable_tasks_median"] = statistics.median(s["runnable"] for s in busy)
        out["living_tasks_median"] = statistics.median(s["tasks"] for s in busy)
    if results_ahead:
        queued = sorted(r[1] for r in results_ahead)
        held = sorted(r[2] for r in results_ahead)
        out["results"] = len(results_ahead)
        out["result_queued_ahead"] = {
            "p50": queued[len(queued) // 2],
            "p95": queued[len(queued) * 95 // 100],
            "max": queued[-1],
            "fraction_nonzero": sum(q > 0 for q in queued) / len(queued),
        }
        out["result_bytes_held_ahead"] = {
            "p50": held[len(held) // 2],
            "p95": held[len(held) * 95 // 100],
            "max": held[-1],
        }
    return out


@contextlib.asynccontextmanager
async def _probed_open_hub(**kwargs: Any) -> AsyncIterator[Any]:
    async with _open_hub(**kwargs) as hub, trio.open_nursery() as nursery:
        nursery.start_soon(_sample, hub)
        try:
            yield hub
        finally:
            nursery.cancel_scope.cancel()
            target = os.environ.get("TRIO_HUB_PROBE_OUT")
            if target:
                # Once, at exit, after the clients are gone: blocking is harmless here.
                Path(target).write_text(json.dumps(_summary(hub), indent=2) + "\n")  # noqa: ASYNC240


cli.open_hub = _probed_open_hub  # type: ignore[assignment]
_protocol._ACTIONS["broadcast"] = _probed_broadcast  # type: ignore[index]

if __name__ == "__main__":
    sys.exit(cli.main())
