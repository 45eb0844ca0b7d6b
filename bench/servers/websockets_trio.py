"""Peer server: ``websockets.trio`` with its ``broadcast()``.

``websockets.trio.server.broadcast`` (websockets 14+) is *async*, unlike the asyncio
one: it starts one task per connection in a nursery, each writing the frame with
``await connection.send_data()``, and returns once every write has finished. So it does
not skip slow clients the way the asyncio ``broadcast()`` does; it waits for them, in
parallel rather than in turn.
"""

from __future__ import annotations

import signal

import trio
from _shootout import announce, handle_text, parse_args
from websockets.exceptions import ConnectionClosed
from websockets.trio.server import Server, ServerConnection, broadcast, serve


async def main(host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM.

    Args:
        host: Address to bind.
        port: Port to bind, 0 for any free one.
    """
    # Our own registry, as in the websockets broadcast guide: Server.connections
    # rebuilds a filtered set on every call, which would add O(N) work per broadcast.
    clients: set[ServerConnection] = set()

    async def handler(ws: ServerConnection) -> None:
        clients.add(ws)
        try:
            async for text in ws:
                reply = handle_text(text, len(clients))
                if reply.broadcast is not None:
                    await broadcast(clients, reply.broadcast)
                await ws.send(reply.to_sender)
        except ConnectionClosed:
            pass
        finally:
            clients.discard(ws)

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            # Compression off and keepalive pings off: the load generator speaks plain
            # frames, and every server in the comparison must do the same work.
            server: Server = await nursery.start(
                lambda task_status: serve(
                    handler,
                    port,
                    host=host,
                    compression=None,
                    ping_interval=None,
                    task_status=task_status,
                )
            )
            announce(host, server.listeners[0].socket.getsockname()[1])
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


if __name__ == "__main__":
    options = parse_args(__doc__.splitlines()[0] if __doc__ else "")
    trio.run(main, options.host, options.port)
