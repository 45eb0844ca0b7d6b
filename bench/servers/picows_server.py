"""Peer server: picows (Cython WebSocket on asyncio), the fastest Python WebSocket library.

Each connection is a ``WSListener`` with callbacks, no task per connection. A
broadcast writes the frame into every connection's transport with
``WSTransport.send()``, which never waits (like asyncio ``websockets.broadcast()``).
Runs on uvloop when it is installed, as picows recommends. Messages are expected
unfragmented (what the load generators send); a fragmented one gets an error reply.
"""

from __future__ import annotations

import asyncio
import signal

from _shootout import announce, handle_text, parse_args
from picows import WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server

# As for the other asyncio peer: thousands of clients may connect at once.
BACKLOG = 4096


class _Client(WSListener):  # type: ignore[misc]
    __slots__ = ("_clients", "transport")

    def __init__(self, clients: set[WSTransport]) -> None:
        self._clients = clients
        self.transport: WSTransport | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self._clients.add(transport)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self._clients.discard(transport)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.TEXT and frame.fin:
            reply = handle_text(frame.get_payload_as_bytes(), len(self._clients))
            if reply.broadcast is not None:
                data = reply.broadcast.encode()
                for client in self._clients:
                    client.send(WSMsgType.TEXT, data)
            transport.send(WSMsgType.TEXT, reply.to_sender.encode())
        elif frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()
        elif frame.msg_type in (WSMsgType.TEXT, WSMsgType.CONTINUATION):
            transport.send(WSMsgType.TEXT, handle_text(b"", 0).to_sender.encode())


async def main(host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM.

    Args:
        host: Address to bind.
        port: Port to bind, 0 for any free one.
    """
    clients: set[WSTransport] = set()

    def factory(request: WSUpgradeRequest) -> _Client:
        return _Client(clients)

    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set_result, None)
    server = await ws_create_server(factory, host, port, backlog=BACKLOG)
    announce(host, server.sockets[0].getsockname()[1])
    await stop
    server.close()
    for client in list(clients):
        client.send_close()
        client.disconnect()
    await server.wait_closed()


if __name__ == "__main__":
    options = parse_args(__doc__.splitlines()[0] if __doc__ else "")
    try:
        import uvloop
    except ImportError:
        asyncio.run(main(options.host, options.port))
    else:
        uvloop.run(main(options.host, options.port))
