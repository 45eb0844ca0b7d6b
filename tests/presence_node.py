"""A hub node for the multi-process presence tests: the wire protocol, presence, Redis.

Run from the repository's root: ``python -m tests.presence_node REDIS_URL PREFIX TTL``.
It prints ``listening on ws://127.0.0.1:PORT/`` on stderr once it serves, and runs
until it is killed (a crash) or gets SIGTERM (a graceful stop: its clients leave,
and its entries are removed from Redis at once). It is ``python -m trio_hub serve --presence
--redis REDIS_URL`` plus one thing the tests need: a client's identity is the
``user`` query parameter of its URL (``ws://.../?user=c7``), so that presence
entries name the test's clients.
"""

from __future__ import annotations

import logging
import signal
import sys
from functools import partial

import trio

from trio_hub import HandshakeRejection, HandshakeRequest, open_hub, protocol_handler, serve_hub
from trio_hub.backends.redis import RedisBackend


async def authenticate(request: HandshakeRequest) -> str:
    """The client's identity is its ``user`` query parameter."""
    user = request.query.get("user")
    if not user:
        raise HandshakeRejection(401, "?user= is required")
    return user


async def main(redis_url: str, prefix: str, ttl: float) -> None:
    """Serve until cancelled."""
    backend = RedisBackend(redis_url, prefix=prefix, presence_ttl=ttl)
    # SIGTERM: a graceful stop, which says goodbye (SIGKILL is the crash).
    # Installed before anything listens, so that no SIGTERM can find it missing.
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with (
            open_hub(
                backend=backend,
                presence_events=True,
                on_message=protocol_handler,
                queue_size=100_000,
                ping_interval=None,
            ) as hub,
            trio.open_nursery() as nursery,
        ):
            server = await nursery.start(
                partial(serve_hub, hub, "127.0.0.1", 0, authenticate=authenticate)
            )
            print(f"listening on {server.url}", file=sys.stderr, flush=True)
            async for _ in signals:
                break
            await server.aclose()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    trio.run(main, sys.argv[1], sys.argv[2], float(sys.argv[3]))
