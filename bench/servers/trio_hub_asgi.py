"""trio_hub behind Hypercorn's Trio worker: the ASGI transport, plain ASGI or Quart-Trio.

The hub speaks the ready server's wire protocol (``protocol_handler``), as
``python -m trio_hub serve`` does, so the two compare write path for write path:
trio_hub's own server against Hypercorn + :mod:`trio_hub.asgi`. ``--quart`` serves
the same hub from a Quart-Trio endpoint instead of a bare ASGI app.
"""

from __future__ import annotations

import argparse
import signal
import sys
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from trio_hub import Hub, protocol_handler
from trio_hub.asgi import ASGIReceive, ASGISend, HubLifespan, asgi_transport


def plain_app() -> Any:
    async def app(scope: Any, receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] == "websocket":
            hub: Hub = scope["state"]["trio_hub"]
            await hub.serve_client(await asgi_transport(hub, scope, receive, send))

    # No pings, as every peer runs (the hub never pings ASGI clients anyway).
    return HubLifespan(app, on_message=protocol_handler, ping_interval=None)


def quart_app() -> Any:
    from quart import websocket
    from quart_trio import QuartTrio

    from trio_hub.asgi import QuartTrioHub, quart_transport

    app = QuartTrio(__name__)
    hub_of_app = QuartTrioHub(app, on_message=protocol_handler, ping_interval=None)

    @app.websocket("/")
    async def ws() -> None:
        hub = hub_of_app.hub
        await hub.serve_client(await quart_transport(hub, websocket))

    return app


async def main(host: str, port: int, quart: bool) -> None:
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = None
    config.websocket_ping_interval = None
    config.backlog = 4096

    async def until_signal() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                return

    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            partial(
                serve, quart_app() if quart else plain_app(), config, shutdown_trigger=until_signal
            )
        )
        bound_port = int(binds[0].rsplit(":", 1)[1])
        print(f"listening on ws://{host}:{bound_port}/", file=sys.stderr, flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--quart", action="store_true", help="serve from a Quart-Trio endpoint")
    options = parser.parse_args()
    trio.run(main, options.host, options.port, options.quart)
