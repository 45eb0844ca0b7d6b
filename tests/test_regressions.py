"""Regressions for defects that the reliability suite (``tests/reliability``) found.

Each test names the scenario that found it; each failed before its fix.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import socket
import struct

import pytest
import trio
import trio.testing

from trio_hub import Client, CloseCode, Message, open_hub, protocol_handler
from trio_hub._stream import HubStream
from trio_hub.testing import memory_connection

from .rawws import OP_CLOSE, OP_PING, OP_TEXT, RawWebSocket
from .reliability.support import reset, running, wait_until
from .reliability.test_faults import upgrade_request


def clients_in_memory() -> int:
    gc.collect()
    return sum(1 for thing in gc.get_objects() if type(thing) is Client)


async def test_clients_that_left_are_not_kept_alive_until_their_next_ping_is_due(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Found by the churn scenario: every client that left stayed in the
    # keepalive queue, with its transport and buffers, until its next ping was
    # due: ping_interval seconds (20 by default) of departed clients, which is
    # tens of thousands under a reconnect storm.
    async with open_hub(ping_interval=20.0) as hub:
        before = clients_in_memory()
        for _ in range(200):
            transport, peer = memory_connection()
            client = hub.register(transport)
            await trio.testing.wait_all_tasks_blocked()
            await peer.close()
            await client.wait_closed()
        del client
        assert len(hub) == 0
        # Well within ping_interval: nobody has been pinged yet.
        assert trio.current_time() < 20.0
        assert clients_in_memory() - before <= 1


async def test_a_peer_that_resets_during_the_handshake_is_not_logged_as_a_server_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Found by the faults scenario: a reset while the server read the request
    # head (BrokenResourceError) or before its 101 response went out
    # (ConnectionClosed) escaped to "error while serving a connection", an
    # ERROR with a traceback, for what is the peer's ordinary departure.
    caplog.set_level(logging.INFO, logger="trio_hub")
    with trio.fail_after(20):
        async with running({"ping_interval": None}) as (hub, server):
            for attempt in range(30):
                stream = await trio.open_tcp_stream("127.0.0.1", server.port)
                request = upgrade_request(server.port)
                # Half the head, or all of it, then a reset.
                await stream.send_all(request if attempt % 2 else request[:40])
                reset(stream)
                await stream.aclose()
            await wait_until(lambda: server.connections == 0)
            assert len(hub) == 0
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
    assert any("connection lost during the handshake" in r.getMessage() for r in caplog.records)


async def test_invalid_utf8_gets_its_1007_close_frame_while_broadcasts_are_being_written() -> None:
    # Found by the fuzzing scenario: when the bad frame arrived while frames
    # waited for the coalescer, or a write was in progress (a pong, a queued
    # batch), the close frame with 1007 was skipped and the peer saw only the
    # TCP connection end.
    with trio.fail_after(20):
        async with running({"ping_interval": None}) as (hub, server):
            for _ in range(30):
                raw = await RawWebSocket.connect(server.port, "/bad")
                try:
                    await wait_until(lambda: len(hub) == 1)
                    await raw.send_frame(OP_PING, b"")  # a pong write in progress
                    async with trio.open_nursery() as nursery:

                        async def broadcast() -> None:
                            for number in range(20):
                                hub.broadcast(Message("n", number))
                                await trio.lowlevel.checkpoint()

                        nursery.start_soon(broadcast)
                        await raw.send_frame(OP_TEXT, b'{"type":"\xff"}')
                        assert await raw.receive_close_code() == CloseCode.INVALID_PAYLOAD
                finally:
                    await raw.aclose()
                await wait_until(lambda: len(hub) == 0)


async def test_a_close_started_by_the_peer_gets_its_reply_while_frames_are_being_written() -> None:
    # Found by the fuzzing scenario (long mode): when the peer's close frame
    # arrived while frames were waiting to be written, the writer saw the
    # connection closing and ended the client; serve_hub then cancelled the
    # connection's task while it was still writing the close reply, and the
    # peer saw the TCP connection end without one.
    with trio.fail_after(20):
        async with running({"on_message": protocol_handler, "ping_interval": None}) as (
            hub,
            server,
        ):
            for _ in range(30):
                raw = await RawWebSocket.connect(server.port, "/closer")
                try:
                    await wait_until(lambda: len(hub) == 1)
                    async with trio.open_nursery() as nursery:

                        async def broadcast() -> None:
                            for number in range(20):
                                hub.broadcast(Message("n", number))
                                await trio.lowlevel.checkpoint()

                        nursery.start_soon(broadcast)
                        await raw.send_frame(OP_TEXT, b'{"type":"echo","payload":1}')
                        await raw.send_frame(OP_PING, b"between")
                        await raw.send_frame(OP_CLOSE, struct.pack("!H", CloseCode.NORMAL))
                        assert await raw.receive_close_code() == CloseCode.NORMAL
                finally:
                    await raw.aclose()
                await wait_until(lambda: len(hub) == 0)


async def test_a_write_cancelled_before_its_first_byte_leaves_the_stream_usable() -> None:
    # Found by the faults scenario (long mode): a write cancelled before a
    # byte of it went out (a ping, cancelled as its client left after the
    # handler raised) marked the stream as broken, so the 1011 close frame
    # was never sent and the peer saw only the TCP connection end.
    left, right = socket.socketpair()
    # Fill the socket, so that the next write waits before its first byte.
    left.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while True:
            left.send(b"x" * 65536)
    stream = HubStream(trio.SocketStream(trio.socket.from_stdlib_socket(left)))
    peer = trio.SocketStream(trio.socket.from_stdlib_socket(right))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            cancelled = trio.CancelScope()

            async def ping() -> None:
                with cancelled:
                    await stream.send_all(b"\x89\x00")

            nursery.start_soon(ping)
            await trio.testing.wait_all_tasks_blocked()
            cancelled.cancel()
        # The stream is intact: the close frame still goes out, after what the
        # socket already held.
        async with trio.open_nursery() as nursery:
            received = bytearray()

            async def drain() -> None:
                while not received.endswith(b"\x88\x02\x03\xf3"):
                    received.extend(await peer.receive_some(65536))

            nursery.start_soon(drain)
            await stream.send_all(b"\x88\x02\x03\xf3")
        assert b"\x89" not in received
    await stream.aclose()
    await peer.aclose()
