"""Peer server: picows on uvloop, broadcasting by writing into each transport.

picows is a Cython WebSocket library for asyncio: frames are parsed and built in C, and
``WSTransport.send()`` is synchronous (it writes the frame into the asyncio transport's
buffer and never waits). With uvloop underneath it is about as lean as Python WebSocket
serving gets, so it shows what the interpreter costs when the library costs nearly
nothing. Like every peer it answers with :mod:`_shootout`, runs without compression or
keepalive pings, and logs ``listening on ws://HOST:PORT/``.
"""

from __future__ import annotations

import asyncio
import signal

from _shootout import announce, handle_text, parse_args
from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_create_server

# Trio's listeners ask for the kernel's maximum backlog; asyncio defaults to 100, which
# drops SYNs (and adds 1 s retransmits) when thousands of clients connect at once.
BACKLOG = 4096


class _Client(WSListener):
    def __init__(self, clients: set[WSTransport]) -> None:
        self.clients = clients

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.clients.add(transport)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.clients.discard(transport)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind == WSMsgType.TEXT and frame.fin:
            reply = handle_text(frame.get_payload_as_bytes(), len(self.clients))
            if reply.broadcast is not None:
                data = reply.broadcast.encode()
                for client in self.clients:
                    client.send(WSMsgType.TEXT, data)
            transport.send(WSMsgType.TEXT, reply.to_sender.encode())
        elif kind == WSMsgType.CLOSE:
            self.clients.discard(transport)
            transport.send_close(frame.get_close_code())
            transport.disconnect()
        elif kind in (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION):
            # The shootout protocol is unfragmented text; anything else is unsupported.
            self.clients.discard(transport)
            transport.send_close(WSCloseCode.UNSUPPORTED_DATA)
            transport.disconnect()
        # PING is answered by picows itself (enable_auto_pong); PONG needs nothing.


async def main(host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM.

    Args:
        host: Address to bind.
        port: Port to bind, 0 for any free one.
    """
    clients: set[WSTransport] = set()
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set_result, None)
    server = await ws_create_server(
        lambda _request: _Client(clients), host, port, enable_auto_ping=False, backlog=BACKLOG
    )
    async with server:
        announce(host, server.sockets[0].getsockname()[1])
        await stop


if __name__ == "__main__":
    import uvloop

    options = parse_args(__doc__.splitlines()[0] if __doc__ else "")
    uvloop.run(main(options.host, options.port))
