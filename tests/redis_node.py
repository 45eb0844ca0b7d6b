"""A hub node for the multi-process Redis tests: a hub on a RedisBackend behind WebSockets.

Run from the repository's root: ``python -m tests.redis_node REDIS_URL PREFIX [HISTORY_SIZE]``.
With a history size, every topic has history and clients speak the ready
server's wire protocol (:func:`trio_hub.protocol_handler`, with ``recover``).
It prints ``listening on ws://127.0.0.1:PORT/`` on stderr once it serves, and
runs until it is terminated.

Clients speak a small JSON protocol (the ready server's topic messages):

* ``{"type": "subscribe", "payload": {"topic": T}}`` is answered with
  ``{"type": "subscribed", "payload": {"topic": T}}``.
* ``{"type": "broadcast", "payload": X}`` sends ``{"type": "broadcast",
  "payload": X}`` to every client of every node.
* ``{"type": "publish", "payload": {"topic": T, "data": X}}`` sends
  ``{"type": "message", "payload": {"topic": T, "data": X}}`` to every
  subscriber of ``T`` on every node.
* ``{"type": "statistics"}`` is answered with the backend's statistics.

Each client's messages are handled in the order they arrive, so the order in
which one client sends is the order in which its node publishes.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from functools import partial

import trio
from trio_websocket import WebSocketRequest, serve_websocket

from trio_hub import Client, Hub, JSONValue, Message, MessageHandler, open_hub, protocol_handler
from trio_hub.backends.redis import RedisBackend


def handler_for(hub: Hub, backend: RedisBackend) -> MessageHandler:
    """Make the hub's on_message handler."""

    async def on_message(client: Client, message: Message) -> None:
        payload = message.payload
        if message.type == "broadcast":
            hub.broadcast(Message("broadcast", payload))
        elif message.type == "publish":
            assert isinstance(payload, dict)
            topic = payload["topic"]
            assert isinstance(topic, str)
            hub.publish(topic, Message("message", {"topic": topic, "data": payload["data"]}))
        elif message.type == "subscribe":
            assert isinstance(payload, dict)
            topic = payload["topic"]
            assert isinstance(topic, str)
            hub.subscribe(client, topic)
            client.send(Message("subscribed", {"topic": topic}))
        elif message.type == "statistics":
            statistics: dict[str, JSONValue] = dataclasses.asdict(backend.statistics())
            client.send(Message("statistics", statistics))
        else:
            client.send(Message("error", {"code": "unknown_type", "detail": message.type}))

    return on_message


async def main(redis_url: str, prefix: str, history_size: int | None = None) -> None:
    """Serve a hub on a RedisBackend on 127.0.0.1 (a free port) until cancelled."""
    backend = RedisBackend(redis_url, prefix=prefix)
    # A large queue: the tests count every message, so no client may be evicted.
    async with open_hub(backend=backend, queue_size=100_000, history_size=history_size) as hub:
        on_message = handler_for(hub, backend) if history_size is None else protocol_handler

        async def serve(request: WebSocketRequest) -> None:
            connection = await request.accept()
            await hub.serve_client(connection, on_message=on_message)

        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                partial(serve_websocket, serve, "127.0.0.1", 0, ssl_context=None)
            )
            print(f"listening on ws://127.0.0.1:{server.port}/", file=sys.stderr, flush=True)


if __name__ == "__main__":
    # Warnings only: nobody reads this process's stderr after the first line.
    logging.basicConfig(level=logging.WARNING)
    history_size = int(sys.argv[3]) if len(sys.argv) > 3 else None
    trio.run(main, sys.argv[1], sys.argv[2], history_size)
