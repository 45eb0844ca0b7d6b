"""Where an idle served connection's memory goes: tracemalloc, by allocation site.

Usage::

    python bench/idle_profile.py --clients 2000

Runs ``serve_hub`` in this process under :mod:`tracemalloc`, has a child process
(``memory.py``'s clients) open N idle connections, and prints the bytes per
connection by the line that allocated them, largest first.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tracemalloc
from pathlib import Path

import trio

from trio_hub import open_hub, serve_hub

CLIENT = """
import asyncio, sys
sys.path.insert(0, {bench!r})
from memory import connect
async def main():
    clients = await connect({port}, {count}, in_flight=200, spread=False)
    print("ready", flush=True)
    sys.stdin.readline()
asyncio.run(main())
"""


async def main(count: int, top: int) -> None:
    async with open_hub() as hub, trio.open_nursery() as nursery:
        server = await nursery.start(serve_hub, hub, "127.0.0.1", 0)
        code = CLIENT.format(bench=str(Path(__file__).parent), port=server.port, count=count)
        child = subprocess.Popen(  # noqa: ASYNC220 (started once, read from a thread)
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert child.stdout is not None
        assert child.stdin is not None
        tracemalloc.start(8)
        before = tracemalloc.take_snapshot()
        line = await trio.to_thread.run_sync(child.stdout.readline)
        assert line.startswith("ready"), line
        while len(hub) < count:  # noqa: ASYNC110 (registration has no event)
            await trio.sleep(0.1)
        await trio.sleep(1)
        after = tracemalloc.take_snapshot()
        total = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
        print(f"{count} idle connections: {total / count:.0f} B each (tracemalloc)")
        for stat in after.compare_to(before, "lineno")[:top]:
            frame = stat.traceback[0]
            print(f"{stat.size_diff / count:8.0f} B  {frame.filename}:{frame.lineno}")
        child.stdin.write("\n")
        child.stdin.flush()
        await trio.to_thread.run_sync(child.wait)
        await server.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--top", type=int, default=30)
    options = parser.parse_args()
    trio.run(main, options.clients, options.top)
