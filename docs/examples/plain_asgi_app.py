"""A plain ASGI app (no framework) with a hub, served by Hypercorn's Trio worker.

Run it with ``python plain_asgi_app.py --port 8000`` (port 0 picks a free one).
WebSocket clients on any path speak the ready server's wire protocol; a plain
HTTP request gets a one-line page. Ctrl+C (or SIGTERM) stops it gracefully.
"""

import argparse
import signal
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from trio_hub import Hub, HubClosedError, protocol_handler
from trio_hub.asgi import ASGIReceive, ASGISend, HubLifespan, asgi_transport


async def app(scope: Any, receive: ASGIReceive, send: ASGISend) -> None:
    """The app itself: its own lifespan, a page, and the hub's WebSocket endpoint."""
    if scope["type"] == "lifespan":
        # The app's own startup and shutdown: the hub is open for both.
        await receive()  # lifespan.startup
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        await send({"type": "lifespan.shutdown.complete"})
    elif scope["type"] == "websocket":
        hub: Hub = scope["state"]["trio_hub"]  # put there by HubLifespan
        try:
            transport = await asgi_transport(hub, scope, receive, send)
        except HubClosedError:
            return  # the hub is shutting down: Hypercorn answers 403
        await hub.serve_client(transport)
    else:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"trio_hub on plain ASGI\n"})


# What Hypercorn serves: the hub's lifespan around the app.
hub_app = HubLifespan(app, on_message=protocol_handler)


async def wait_for_signal() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            return


async def main(port: int) -> None:
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            partial(
                serve, hub_app, config, shutdown_trigger=hub_app.shutdown_trigger(wait_for_signal)
            )
        )
        print(f"Listening on {binds[0]}/; Ctrl+C stops.", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    trio.run(main, parser.parse_args().port)
