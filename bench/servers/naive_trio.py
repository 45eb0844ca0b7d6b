"""Peer server: Trio + trio-websocket, broadcasting with the naive send loop.

``for ws in clients: await ws.send_message(m)`` is what most people write first. It
awaits every client in turn, so one slow client holds up all the others; the benchmark
shows what it costs per delivery even when every client keeps up.
"""

from __future__ import annotations

import signal

import trio
from _shootout import announce, handle_text, parse_args
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket


async def main(host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM.

    Args:
        host: Address to bind.
        port: Port to bind, 0 for any free one.
    """
    clients: set[WebSocketConnection] = set()

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        clients.add(ws)
        try:
            while True:
                text = await ws.get_message()
                reply = handle_text(text, len(clients))
                if reply.broadcast is not None:
                    # A snapshot, because a client that leaves mid-loop changes the set.
                    for client in list(clients):
                        try:
                            await client.send_message(reply.broadcast)
                        except ConnectionClosed:
                            clients.discard(client)
                await ws.send_message(reply.to_sender)
        except ConnectionClosed:
            pass
        finally:
            clients.discard(ws)

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_websocket, handler, host, port, None)
            announce(host, server.port)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


if __name__ == "__main__":
    options = parse_args(__doc__.splitlines()[0] if __doc__ else "")
    trio.run(main, options.host, options.port)
