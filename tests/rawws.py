"""A raw WebSocket client over a plain Trio socket, for sending what browsers never would.

It performs a real HTTP upgrade handshake, then writes hand-built (masked) frames,
so that tests can send invalid UTF-8, odd control frames or garbage bytes.
"""

from __future__ import annotations

import base64
import os
import struct

import trio

OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, rsv1: bool = False) -> bytes:
    """Build one masked client-to-server frame (``rsv1``: compressed, RFC 7692)."""
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", first, 0x80 | length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", first, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, length)
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
    return header + mask + masked


class RawWebSocket:
    """One raw connection: handshake, send frames, read server frames."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()
        self.response_head = b""

    @classmethod
    async def connect(
        cls, port: int, path: str = "/", *, extensions: str | None = None
    ) -> RawWebSocket:
        """Connect and upgrade; ``extensions`` is sent as ``Sec-WebSocket-Extensions``."""
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        self = cls(stream)
        key = base64.b64encode(os.urandom(16)).decode()
        offer = f"Sec-WebSocket-Extensions: {extensions}\r\n" if extensions else ""
        request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n{offer}"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        )
        try:
            await stream.send_all(request.encode())
            head = await self.read_until(b"\r\n\r\n")
            self.response_head = head
            if not head.startswith(b"HTTP/1.1 101"):
                raise ConnectionError(f"handshake refused: {head[:80]!r}")
        except BaseException:
            # Refused or cut off: the socket must not outlive the attempt.
            await trio.aclose_forcefully(stream)
            raise
        return self

    async def read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError("connection closed during read")
            self.buffer += data
        end = self.buffer.index(marker) + len(marker)
        head = bytes(self.buffer[:end])
        del self.buffer[:end]
        return head

    async def read_exactly(self, count: int) -> bytes:
        while len(self.buffer) < count:
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError("connection closed during read")
            self.buffer += data
        chunk = bytes(self.buffer[:count])
        del self.buffer[:count]
        return chunk

    async def send_frame(
        self, opcode: int, payload: bytes, *, fin: bool = True, rsv1: bool = False
    ) -> None:
        await self.stream.send_all(client_frame(opcode, payload, fin=fin, rsv1=rsv1))

    async def receive_frame(self) -> tuple[int, bytes]:
        """Read one server frame: (opcode, payload)."""
        _, opcode, payload = await self.receive_frame_with_bits()
        return opcode, payload

    async def receive_frame_with_bits(self) -> tuple[int, int, bytes]:
        """Read one server frame: (first byte, opcode, payload)."""
        first, second = await self.read_exactly(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self.read_exactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self.read_exactly(8))
        return first, first & 0x0F, await self.read_exactly(length)

    async def receive_close_code(self) -> int:
        """Read frames until the close frame; return its code."""
        while True:
            opcode, payload = await self.receive_frame()
            if opcode == OP_CLOSE:
                return int(struct.unpack("!H", payload[:2])[0]) if len(payload) >= 2 else 1005

    async def aclose(self) -> None:
        await self.stream.aclose()
