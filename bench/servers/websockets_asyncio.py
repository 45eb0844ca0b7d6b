"""Peer server: asyncio ``websockets`` with ``websockets.asyncio.server.broadcast()``.

The asyncio ``broadcast()`` is synchronous: it writes the frame into each connection's
transport buffer and never waits, skipping connections whose buffer is over the high
water mark. That is the shape trio_hub's fast path aims for.

With ``--compression deflate`` it negotiates permessage-deflate with websockets' defaults
(context takeover both ways, 12-bit windows, memLevel 5): ``broadcast()`` then compresses
the message once per connection, with that connection's compressor.
"""

from __future__ import annotations

import asyncio
import signal

from _shootout import announce, handle_text, parse_args
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

# Trio's listeners ask for the kernel's maximum backlog; asyncio defaults to 100, which
# drops SYNs (and adds 1 s retransmits) when thousands of clients connect at once.
BACKLOG = 4096


async def main(host: str, port: int, compression: str = "off") -> None:
    """Serve until SIGINT or SIGTERM.

    Args:
        host: Address to bind.
        port: Port to bind, 0 for any free one.
        compression: ``"off"`` or ``"deflate"``.
    """
    clients: set[ServerConnection] = set()

    async def handler(ws: ServerConnection) -> None:
        clients.add(ws)
        try:
            async for text in ws:
                reply = handle_text(text, len(clients))
                if reply.broadcast is not None:
                    broadcast(clients, reply.broadcast)
                await ws.send(reply.to_sender)
        except ConnectionClosed:
            pass
        finally:
            clients.discard(ws)

    stop = asyncio.get_running_loop().create_future()
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set_result, None)
    async with serve(
        handler,
        host,
        port,
        compression="deflate" if compression == "deflate" else None,
        ping_interval=None,
        backlog=BACKLOG,
    ) as server:
        announce(host, next(iter(server.sockets)).getsockname()[1])
        await stop


if __name__ == "__main__":
    options = parse_args(__doc__.splitlines()[0] if __doc__ else "")
    asyncio.run(main(options.host, options.port, options.compression))
