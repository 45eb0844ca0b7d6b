"""permessage-deflate on served connections: real clients, real sockets.

Clients that negotiate (the ``websockets`` client, a raw client that offers
``permessage-deflate``) and clients that do not (trio-websocket, ``websockets``
with ``compression=None``) share the same broadcasts, and each gets frames it
can read. Real sockets on 127.0.0.1, port 0; each test has a time limit.
"""

from __future__ import annotations

import json
import zlib

import trio
import trio.testing
from trio_websocket import open_websocket
from websockets.trio.client import connect as websockets_connect

from trio_hub import Client, CloseCode, Hub, Message

from .rawws import OP_TEXT, RawWebSocket
from .test_server import running, wait_for_clients

LIMIT = 20
TAIL = b"\x00\x00\xff\xff"
OFFER = "permessage-deflate; client_max_window_bits"  # what Chromium offers


def big_message(index: int) -> Message:
    lines = [{"user": f"user{n % 7}", "text": f"line {n} of message {index}"} for n in range(80)]
    return Message("chat", lines)


def small_message(index: int) -> Message:
    return Message("tick", index)


async def receive_text(raw: RawWebSocket) -> tuple[bool, str]:
    """One message from the raw client: (compressed?, text)."""
    first, opcode, payload = await raw.receive_frame_with_bits()
    assert opcode == OP_TEXT
    if first & 0x40:
        return True, zlib.decompressobj(-15).decompress(payload + TAIL).decode()
    return False, payload.decode()


async def assert_plain_frames(hub: Hub, raw: RawWebSocket) -> None:
    """Nothing was negotiated: even a large message reaches the raw client uncompressed."""
    assert b"sec-websocket-extensions" not in raw.response_head.lower()
    await wait_for_clients(hub, 1)
    hub.broadcast(big_message(1))
    assert await receive_text(raw) == (False, big_message(1).text)


async def test_compressing_and_plain_clients_share_broadcasts() -> None:
    messages = [big_message(i) if i % 2 else small_message(i) for i in range(10)]
    with trio.fail_after(LIMIT):
        async with running() as (hub, server):
            url = server.url
            async with (
                websockets_connect(url) as compressing,
                websockets_connect(url, compression=None) as plain,
                open_websocket("127.0.0.1", server.port, "/", use_ssl=False) as trio_ws,
            ):
                raw = await RawWebSocket.connect(server.port, extensions=OFFER)
                try:
                    await wait_for_clients(hub, 4)
                    assert [e.name for e in compressing.protocol.extensions] == [
                        "permessage-deflate"
                    ]
                    assert plain.protocol.extensions == []
                    assert b"sec-websocket-extensions: permessage-deflate" in (
                        raw.response_head.lower()
                    )
                    for message in messages:
                        hub.broadcast(message)
                    for message in messages:
                        assert await compressing.recv() == message.text
                        assert await plain.recv() == message.text
                        assert await trio_ws.get_message() == message.text
                        compressed, text = await receive_text(raw)
                        assert text == message.text
                        # Large messages go compressed, small ones plain.
                        assert compressed == (message.type == "chat")
                finally:
                    await raw.aclose()
            statistics = hub.statistics().compression
    big = [m for m in messages if m.type == "chat"]
    # Each big message compressed once, delivered compressed to the two
    # clients that negotiated; the small ones never compressed.
    assert statistics.messages_compressed == len(big)
    assert statistics.messages_uncompressed == len(messages) - len(big)
    assert statistics.deliveries_compressed == 2 * len(big)
    assert statistics.delivered_bytes_after < statistics.delivered_bytes_before / 3


async def test_compression_off_negotiates_nothing() -> None:
    with trio.fail_after(LIMIT):
        async with running(compression=None) as (hub, server):
            raw = await RawWebSocket.connect(server.port, extensions=OFFER)
            try:
                await assert_plain_frames(hub, raw)
            finally:
                await raw.aclose()
            async with websockets_connect(server.url) as client:
                assert client.protocol.extensions == []


async def test_declined_offer_still_connects() -> None:
    with trio.fail_after(LIMIT):
        async with running() as (hub, server):
            raw = await RawWebSocket.connect(
                server.port, extensions="permessage-deflate; server_max_window_bits=99"
            )
            try:
                await assert_plain_frames(hub, raw)
            finally:
                await raw.aclose()


async def test_small_server_window_gets_plain_frames_above_it() -> None:
    # The client asks the server to keep to a 512-byte window: messages that
    # fit get the shared compressed frame, larger ones the plain frame.
    medium = Message("t", "abc " * 100)  # ~425 bytes
    with trio.fail_after(LIMIT):
        async with running() as (hub, server):
            raw = await RawWebSocket.connect(
                server.port, extensions="permessage-deflate; server_max_window_bits=9"
            )
            try:
                assert b"server_max_window_bits=9" in raw.response_head
                await wait_for_clients(hub, 1)
                hub.broadcast(medium)
                hub.broadcast(big_message(1))
                assert await receive_text(raw) == (True, medium.text)
                assert await receive_text(raw) == (False, big_message(1).text)
            finally:
                await raw.aclose()


async def test_compressed_messages_from_clients_are_inflated() -> None:
    received: list[Message] = []

    async def on_message(client: Client, message: Message) -> None:
        received.append(message)

    text = big_message(3).text
    with trio.fail_after(LIMIT):
        async with running({"on_message": on_message}) as (hub, server):
            async with websockets_connect(server.url) as client:
                await client.send(text)
                await client.send(text)
                while len(received) < 2:
                    await trio.testing.wait_all_tasks_blocked(cushion=0.001)
            statistics = hub.statistics().compression
    assert [message.text for message in received] == [text, text]
    assert statistics.inbound_messages == 2
    assert statistics.inbound_bytes_after == 2 * len(text)
    assert statistics.inbound_bytes_before < len(text)


def _deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return (compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]


async def test_bomb_closes_1009_and_spares_the_others() -> None:
    # 64 MiB of JSON-ish text in a 64 KiB frame, against a 1 MiB limit.
    bomb = _deflate(b'{"type":"x","payload":"' + b"a" * (64 << 20) + b'"}')
    assert len(bomb) < 100_000
    with trio.fail_after(LIMIT):
        async with running(max_message_size=1 << 20) as (hub, server):
            bystander = await RawWebSocket.connect(server.port, extensions=OFFER)
            attacker = await RawWebSocket.connect(server.port, extensions=OFFER)
            try:
                await wait_for_clients(hub, 2)
                await attacker.send_frame(OP_TEXT, bomb, rsv1=True)
                assert await attacker.receive_close_code() == CloseCode.MESSAGE_TOO_BIG
                await wait_for_clients_gone(hub, 1)
                hub.broadcast(big_message(2))
                assert await receive_text(bystander) == (True, big_message(2).text)
            finally:
                await attacker.aclose()
                await bystander.aclose()


async def wait_for_clients_gone(hub: Hub, count: int) -> None:
    while len(hub) > count:
        await trio.testing.wait_all_tasks_blocked(cushion=0.001)


async def test_invalid_compressed_data_closes_1002() -> None:
    with trio.fail_after(LIMIT):
        async with running() as (_, server):
            raw = await RawWebSocket.connect(server.port, extensions=OFFER)
            try:
                await raw.send_frame(OP_TEXT, b"\xff\xff\xff\xff not deflate", rsv1=True)
                assert await raw.receive_close_code() == 1002
            finally:
                await raw.aclose()


async def test_rsv1_without_negotiation_closes_1002() -> None:
    with trio.fail_after(LIMIT):
        async with running() as (_, server):
            raw = await RawWebSocket.connect(server.port)  # offers nothing
            try:
                await raw.send_frame(
                    OP_TEXT, _deflate(json.dumps({"type": "x"}).encode()), rsv1=True
                )
                assert await raw.receive_close_code() == 1002
            finally:
                await raw.aclose()
