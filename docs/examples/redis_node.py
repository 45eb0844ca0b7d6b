"""One node of a hub that runs as several processes linked by one Redis.

Start as many nodes as you need, each on its own port (or host), all with the
same Redis URL; put a load balancer in front of them::

    python redis_node.py redis://127.0.0.1:6379/0 8001
    python redis_node.py redis://127.0.0.1:6379/0 8002

A broadcast or publish sent to any node reaches the clients of every node.
Ctrl+C (or SIGTERM) stops a node gracefully; the others go on.
"""

import signal
import sys

import trio

from trio_hub import HubServer, open_hub, protocol_handler, serve_hub
from trio_hub.backends.redis import RedisBackend


async def main(redis_url: str, port: int) -> None:
    # The same URL and prefix on every node of the application; another
    # application on the same Redis picks another prefix.
    backend = RedisBackend(redis_url, prefix="chat")
    # open_hub() connects to Redis first: if Redis cannot be reached within
    # start_timeout (5 s by default), it raises BackendUnavailableError.
    async with (
        open_hub(backend=backend, on_message=protocol_handler) as hub,
        trio.open_nursery() as nursery,
    ):
        server: HubServer = await nursery.start(serve_hub, hub, "127.0.0.1", port)
        print(f"Serving ws://127.0.0.1:{server.port}/ with {backend!r}", flush=True)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break
        nursery.cancel_scope.cancel()
    print("Stopped.")


if __name__ == "__main__":
    trio.run(main, sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 8000)
