"""Helpers for tests of :mod:`trio_hub.asgi` under real Hypercorn (Trio worker) on 127.0.0.1:0.

Shared by ``test_asgi.py`` and ``test_conformance.py``. The network is real, so
the clock is too: every test that uses these needs a time limit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any
from urllib.parse import parse_qs

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from trio_hub import Hub, HubClosedError
from trio_hub.asgi import (
    ASGIReceive,
    ASGISend,
    HubLifespan,
    QuartTrioHub,
    asgi_transport,
    quart_transport,
)


@asynccontextmanager
async def hypercorn_serving(app: Any, **config: Any) -> AsyncIterator[int]:
    """Serve ``app`` with Hypercorn's Trio worker on 127.0.0.1 port 0; yield the port.

    Leaving the block triggers Hypercorn's shutdown and waits for it.
    """
    settings = Config()
    settings.bind = ["127.0.0.1:0"]
    settings.accesslog = None
    settings.graceful_timeout = 5
    for name, value in config.items():
        setattr(settings, name, value)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(partial(serve, app, settings, shutdown_trigger=stop.wait))
        yield int(binds[0].rsplit(":", 1)[1])
        stop.set()


def hub_app(**hub_settings: Any) -> HubLifespan:
    """A plain ASGI app (no Quart) whose WebSocket clients all go to one hub.

    A client's path names its topics (``/a,b``); its ``name`` query parameter,
    if any, becomes its identity, else the whole path does.
    """

    async def app(scope: Any, receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] != "websocket":
            return
        hub: Hub = scope["state"]["trio_hub"]
        query = parse_qs(scope["query_string"].decode())
        topics = [topic for topic in scope["path"].strip("/").split(",") if topic]
        identity = query["name"][0] if "name" in query else scope["path"]
        try:
            transport = await asgi_transport(hub, scope, receive, send)
        except HubClosedError:
            return  # refused: Hypercorn answered 403
        await hub.serve_client(transport, topics=topics, identity=identity)

    return HubLifespan(app, **hub_settings)


def quart_hub_app(**hub_settings: Any) -> tuple[Any, QuartTrioHub]:
    """A Quart-Trio app whose endpoint ``/ws/<name>`` hands every client to one hub."""
    from quart import websocket
    from quart_trio import QuartTrio

    app = QuartTrio(__name__)
    hub_of_app = QuartTrioHub(app, **hub_settings)

    @app.websocket("/ws/<name>")
    async def ws(name: str) -> None:
        hub = hub_of_app.hub
        await hub.serve_client(await quart_transport(hub, websocket), identity=name)

    return app, hub_of_app
