"""Calibration server: bare asyncio protocol on uvloop, no WebSocket library.

Not a contender: it exists to measure the load generator's ceiling. It does the
handshake by hand and broadcasts by writing one pre-encoded frame into each
transport, so its cost per delivery is close to the kernel's cost of one loopback
``send()``. Whatever rate the load generator reaches against it is the most it can
measure; a server under test that gets near that rate is limited by the load
generator, not by itself.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import signal
from typing import cast

import uvloop
from _shootout import announce, handle_text, parse_args

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _text_frame(text: str) -> bytes:
    payload = text.encode()
    length = len(payload)
    if length < 126:
        return bytes((0x81, length)) + payload
    if length < 1 << 16:
        return bytes((0x81, 126)) + length.to_bytes(2, "big") + payload
    return bytes((0x81, 127)) + length.to_bytes(8, "big") + payload


class _Client(asyncio.Protocol):
    def __init__(self, clients: set[_Client]) -> None:
        self.clients = clients
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.open = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports quack like asyncio.Transport without subclassing it.
        self.transport = cast("asyncio.Transport", transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.clients.discard(self)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        if not self.open:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            key = b""
            for line in bytes(self.buffer[:end]).split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"sec-websocket-key":
                    key = value.strip()
            accept = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest())
            self.transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n" % accept
            )
            del self.buffer[: end + 4]
            self.open = True
            self.clients.add(self)
        self._frames()

    def _frames(self) -> None:
        assert self.transport is not None
        buf = self.buffer
        while len(buf) >= 6:
            length, start = buf[1] & 0x7F, 2
            if length == 126:
                length, start = int.from_bytes(buf[2:4], "big"), 4
            elif length == 127:
                length, start = int.from_bytes(buf[2:10], "big"), 10
            end = start + 4 + length
            if len(buf) < end:
                return
            key = bytes(buf[start : start + 4])
            masked = bytes(buf[start + 4 : end])
            payload = (
                int.from_bytes(masked, "big")
                ^ int.from_bytes((key * (length // 4 + 1))[:length], "big")
            ).to_bytes(length, "big")
            opcode = buf[0] & 0x0F
            del buf[:end]
            if opcode == 0x8:
                self.clients.discard(self)
                self.transport.close()
                return
            if opcode != 0x1:
                continue
            reply = handle_text(payload, len(self.clients))
            if reply.broadcast is not None:
                frame = _text_frame(reply.broadcast)
                for client in self.clients:
                    if client.transport is not None:
                        client.transport.write(frame)
            self.transport.write(_text_frame(reply.to_sender))


async def main(host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM.

    Args:
        host: Address to bind.
        port: Port to bind, 0 for any free one.
    """
    loop = asyncio.get_running_loop()
    clients: set[_Client] = set()
    stop = loop.create_future()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set_result, None)
    server = await loop.create_server(lambda: _Client(clients), host, port, backlog=4096)
    announce(host, server.sockets[0].getsockname()[1])
    async with server:
        await stop


if __name__ == "__main__":
    options = parse_args(__doc__.splitlines()[0] if __doc__ else "")
    uvloop.run(main(options.host, options.port))
