"""permessage-deflate (RFC 7692): negotiation, shared frames, bounded inflate.

Everything here is sans-I/O: the frames the hub would write are fed to other
libraries' decoders (the ``websockets`` sans-I/O client, wsproto as a client),
and clients' frames are built by those libraries too, so passing means real
interoperability, not agreement with ourselves.
"""

from __future__ import annotations

import os
import random
import struct
import sys
import tracemalloc
import zlib
from collections.abc import Iterable, Sequence

import pytest
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Frame as WsFrame
from websockets.frames import Opcode as WsOpcode
from websockets.headers import build_extension_item, parse_extension
from websockets.http11 import Response
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri
from websockets.utils import accept_key
from wsproto import ConnectionType
from wsproto.connection import Connection
from wsproto.events import Message
from wsproto.extensions import PerMessageDeflate

from trio_hub import CloseCode, JSONValue
from trio_hub import Message as HubMessage
from trio_hub._compression import (
    COMPRESSION_THRESHOLD,
    CompressionCounters,
    DeflateExtension,
    DeflateParameters,
    InflateError,
    Inflater,
    deflate_frame,
    frame_for,
    negotiate_deflate,
    parse_extensions,
)
from trio_hub._stream import text_frame

TAIL = b"\x00\x00\xff\xff"
MiB = 1 << 20


def chat_message(size: int, seed: int = 0) -> HubMessage:
    """A JSON chat message of about ``size`` encoded bytes."""
    rng = random.Random(seed)
    words = ["hello", "world", "the", "price", "is", "up", "down", "ok", "see", "you", "soon"]
    lines: list[JSONValue] = []
    message = HubMessage("chat", lines)
    while len(message.encode()) < size:
        lines.append(
            {
                "user": rng.choice(["alice", "bob", "carol"]),
                "text": " ".join(rng.choice(words) for _ in range(rng.randrange(2, 9))),
            }
        )
        message = HubMessage("chat", lines)
    return message


def parse_frame(frame: bytes) -> tuple[int, bytes]:
    """The first byte and the payload of one unmasked server frame."""
    length = frame[1] & 0x7F
    offset = 2
    if length == 126:
        (length,) = struct.unpack("!H", frame[2:4])
        offset = 4
    elif length == 127:
        (length,) = struct.unpack("!Q", frame[2:10])
        offset = 10
    payload = frame[offset:]
    assert len(payload) == length
    return frame[0], payload


def inflate(payload: bytes) -> bytes:
    return zlib.decompressobj(-15).decompress(payload + TAIL)


# ----------------------------------------------------------------- negotiation


def accept(*headers: str, **config: object) -> str | None:
    parameters = negotiate_deflate(headers, **config)  # type: ignore[arg-type]
    return None if parameters is None else parameters.response()


def test_no_offer_no_compression() -> None:
    assert negotiate_deflate([]) is None
    assert accept("x-webkit-deflate-frame") is None
    assert accept("") is None


def test_bare_offer_gets_both_no_context_takeovers() -> None:
    assert accept("permessage-deflate") == (
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    )


def test_chromium_offer() -> None:
    # What Chromium sends: client_max_window_bits without a value.
    offer = "permessage-deflate; client_max_window_bits"
    assert accept(offer) == (
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    )
    assert accept(offer, client_max_window_bits=12) == (
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
        "client_max_window_bits=12"
    )


def test_client_context_takeover_when_allowed() -> None:
    parameters = negotiate_deflate(["permessage-deflate"], client_context_takeover=True)
    assert parameters == DeflateParameters(False, None, None)
    assert parameters.response() == "permessage-deflate; server_no_context_takeover"
    # ... unless the client itself offers to reset.
    assert accept(
        "permessage-deflate; client_no_context_takeover", client_context_takeover=True
    ) == ("permessage-deflate; server_no_context_takeover; client_no_context_takeover")


def test_client_window_bits_with_value() -> None:
    parameters = negotiate_deflate(["permessage-deflate; client_max_window_bits=10"])
    assert parameters is not None
    assert parameters.client_max_window_bits == 10
    assert parameters.inflate_window_bits == 10
    assert "client_max_window_bits=10" in parameters.response()
    # The server may lower it, never raise it.
    lowered = negotiate_deflate(
        ["permessage-deflate; client_max_window_bits=14"], client_max_window_bits=11
    )
    assert lowered is not None
    assert lowered.client_max_window_bits == 11
    # 8: zlib inflates it with a 9-bit window (larger reads smaller).
    eight = negotiate_deflate(["permessage-deflate; client_max_window_bits=8"])
    assert eight is not None
    assert eight.client_max_window_bits == 8
    assert eight.inflate_window_bits == 9


def test_server_window_bits_accepted_and_limit_compressed_sizes() -> None:
    parameters = negotiate_deflate(["permessage-deflate; server_max_window_bits=10"])
    assert parameters is not None
    assert "server_max_window_bits=10" in parameters.response()
    assert parameters.max_compressed_length == 1024
    full = negotiate_deflate(["permessage-deflate; server_max_window_bits=15"])
    assert full is not None
    assert full.max_compressed_length == sys.maxsize


def test_server_no_context_takeover_offered() -> None:
    assert accept("permessage-deflate; server_no_context_takeover") == (
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    )


@pytest.mark.parametrize(
    "offer",
    [
        "permessage-deflate; server_max_window_bits",  # needs a value
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits=08",  # leading zero
        "permessage-deflate; server_max_window_bits=abc",
        'permessage-deflate; server_max_window_bits="1 0"',
        "permessage-deflate; client_max_window_bits=0",
        "permessage-deflate; client_max_window_bits=99",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate; client_no_context_takeover=true",
        "permessage-deflate; unknown_parameter",
        "permessage-deflate; x=1",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
        "permessage-deflate; server_max_window_bits=10; server_max_window_bits=10",
    ],
)
def test_invalid_offer_is_declined(offer: str) -> None:
    assert negotiate_deflate([offer]) is None


def test_quoted_value_is_unquoted() -> None:
    parameters = negotiate_deflate(['permessage-deflate; server_max_window_bits="10"'])
    assert parameters is not None
    assert parameters.server_max_window_bits == 10


def test_first_acceptable_offer_wins() -> None:
    offers = [
        "permessage-deflate; server_max_window_bits=99, "
        "permessage-deflate; client_max_window_bits=11, permessage-deflate"
    ]
    parameters = negotiate_deflate(offers)
    assert parameters is not None
    assert parameters.client_max_window_bits == 11


def test_offers_across_repeated_headers_and_other_extensions() -> None:
    parameters = negotiate_deflate(
        [
            "x-webkit-deflate-frame, permessage-deflate; foo",
            "permessage-deflate; server_max_window_bits=12",
        ]
    )
    assert parameters is not None
    assert parameters.server_max_window_bits == 12


def test_names_are_case_insensitive() -> None:
    parameters = negotiate_deflate(["Permessage-Deflate; Client_Max_Window_Bits=9"])
    assert parameters is not None
    assert parameters.client_max_window_bits == 9


def test_malformed_header_loses_only_its_own_offers() -> None:
    assert negotiate_deflate(['permessage-deflate; a="unterminated']) is None
    assert negotiate_deflate(["permessage-deflate;; x"]) is None
    assert negotiate_deflate(["permessage-deflate permessage-deflate"]) is None
    assert negotiate_deflate(["=,", "permessage-deflate"]) is not None


def test_parse_extensions_grammar() -> None:
    assert parse_extensions(['a; b=1 ; c="x\\"y", ,d ;e']) == [
        ("a", [("b", "1"), ("c", 'x"y')]),
        ("d", [("e", None)]),
    ]


def test_server_config_is_checked() -> None:
    with pytest.raises(ValueError, match="client_max_window_bits"):
        negotiate_deflate(["permessage-deflate"], client_max_window_bits=8)


@pytest.mark.parametrize(
    "factory",
    [
        ClientPerMessageDeflateFactory(),
        ClientPerMessageDeflateFactory(client_max_window_bits=None),
        ClientPerMessageDeflateFactory(client_max_window_bits=10),
        ClientPerMessageDeflateFactory(server_max_window_bits=9),
        ClientPerMessageDeflateFactory(server_no_context_takeover=True),
        ClientPerMessageDeflateFactory(client_no_context_takeover=True),
    ],
)
def test_websockets_client_accepts_our_response(factory: ClientPerMessageDeflateFactory) -> None:
    offer = build_extension_item(factory.name, factory.get_request_params())
    parameters = negotiate_deflate([offer], client_max_window_bits=12)
    assert parameters is not None
    [(_, params)] = parse_extension(parameters.response())
    extension = factory.process_response_params(params, [])
    assert extension.remote_no_context_takeover  # the server resets per message
    assert extension.local_no_context_takeover == parameters.client_no_context_takeover


# ------------------------------------------------------------------- outbound


def test_small_message_shares_the_plain_frame() -> None:
    counters = CompressionCounters()
    message = HubMessage("t", "x" * 10)
    assert len(message.encode()) < COMPRESSION_THRESHOLD
    frame = deflate_frame(message, counters)
    assert frame is text_frame(message)
    assert frame[0] == 0x81  # RSV1 clear
    assert counters.snapshot().messages_uncompressed == 1


def test_large_message_is_compressed_once_with_rsv1() -> None:
    counters = CompressionCounters()
    message = chat_message(2000)
    frame = deflate_frame(message, counters)
    first, payload = parse_frame(frame)
    assert first == 0xC1  # FIN, RSV1, text
    assert inflate(payload) == message.encode()
    assert not payload.endswith(TAIL)
    assert len(frame) < len(text_frame(message)) / 2
    # Built once: the same object, counted once.
    assert deflate_frame(message, counters) is frame
    statistics = counters.snapshot()
    assert statistics.messages_compressed == 1
    assert statistics.bytes_before == len(text_frame(message))
    assert statistics.bytes_after == len(frame)
    assert statistics.deliveries_compressed == 0


def test_threshold_boundary() -> None:
    below = HubMessage("t", "a" * (COMPRESSION_THRESHOLD - 26))
    at = HubMessage("t", "a" * (COMPRESSION_THRESHOLD - 25))
    assert len(below.encode()) == COMPRESSION_THRESHOLD - 1
    assert len(at.encode()) == COMPRESSION_THRESHOLD
    assert deflate_frame(below)[0] == 0x81
    assert deflate_frame(at)[0] == 0xC1


def test_incompressible_message_is_sent_plain() -> None:
    counters = CompressionCounters()
    message = HubMessage._trusted("t", None, os.urandom(4000))
    assert deflate_frame(message, counters) is text_frame(message)
    assert counters.snapshot().messages_uncompressed == 1


def test_shared_compressor_matches_a_fresh_one() -> None:
    # The claim behind the shared compressor: after a full flush its output
    # for the next message is exactly a fresh compressor's.
    rng = random.Random(7)
    for index in range(60):
        message = chat_message(rng.choice([200, 700, 3000, 20000, 70000]), seed=index)
        _, payload = parse_frame(deflate_frame(message))
        compressor = zlib.compressobj(1, zlib.DEFLATED, -15, 8)
        fresh = compressor.compress(message.encode()) + compressor.flush(zlib.Z_SYNC_FLUSH)
        assert payload == fresh[:-4]


@pytest.mark.parametrize("size", [200, 70_000, 300_000])
def test_frame_length_encodings(size: int) -> None:
    rng = random.Random(size)
    # Hex digits: compresses to about half, so 300 kB stays over 64 KiB.
    message = HubMessage("t", "".join(rng.choice("0123456789abcdef") for _ in range(size)))
    first, payload = parse_frame(deflate_frame(message))
    assert first == 0xC1
    assert inflate(payload) == message.encode()


def test_per_delivery_counters_and_window_limit() -> None:
    counters = CompressionCounters()
    small_window = negotiate_deflate(["permessage-deflate; server_max_window_bits=9"])
    full_window = negotiate_deflate(["permessage-deflate"])
    assert small_window is not None
    assert full_window is not None
    fits = chat_message(400)
    too_big = chat_message(2000)
    assert fits.encode().__len__() <= 512 < len(too_big.encode())
    assert small_window.frame(fits, counters) is deflate_frame(fits)
    assert small_window.frame(too_big, counters) is text_frame(too_big)
    assert full_window.frame(too_big, counters) is deflate_frame(too_big)
    tiny = HubMessage("t", 1)
    assert full_window.frame(tiny, counters) is text_frame(tiny)
    statistics = counters.snapshot()
    assert statistics.deliveries_compressed == 2
    assert statistics.delivered_bytes_before == len(text_frame(fits)) + len(text_frame(too_big))
    assert statistics.delivered_bytes_after == len(deflate_frame(fits)) + len(
        deflate_frame(too_big)
    )


# ------------------------------------------- interop: other libraries decode us


def _websockets_client(
    factory: ClientPerMessageDeflateFactory,
    *,
    client_max_window_bits: int = 15,
    client_context_takeover: bool = False,
) -> tuple[ClientProtocol, DeflateParameters]:
    """A websockets sans-I/O client after a handshake negotiated by our code."""
    protocol = ClientProtocol(parse_uri("ws://127.0.0.1/"), extensions=[factory])
    request = protocol.connect()
    protocol.send_request(request)
    parameters = negotiate_deflate(
        request.headers.get_all("Sec-WebSocket-Extensions"),
        client_max_window_bits=client_max_window_bits,
        client_context_takeover=client_context_takeover,
    )
    assert parameters is not None
    response = (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept_key(request.headers['Sec-WebSocket-Key'])}\r\n"
        f"Sec-WebSocket-Extensions: {parameters.response()}\r\n\r\n"
    )
    protocol.receive_data(response.encode())
    [event] = protocol.events_received()
    assert isinstance(event, Response)
    assert protocol.handshake_exc is None
    protocol.data_to_send()  # the request, sent
    return protocol, parameters


def _texts(protocol: ClientProtocol, frames: Sequence[bytes]) -> list[str]:
    protocol.receive_data(b"".join(frames))
    assert protocol.parser_exc is None
    received = protocol.events_received()
    assert all(isinstance(frame, WsFrame) for frame in received)
    return [bytes(frame.data).decode() for frame in received if isinstance(frame, WsFrame)]


@pytest.mark.parametrize(
    "factory",
    [
        ClientPerMessageDeflateFactory(),
        ClientPerMessageDeflateFactory(server_no_context_takeover=True),
        ClientPerMessageDeflateFactory(server_max_window_bits=9),
        ClientPerMessageDeflateFactory(server_max_window_bits=12),
    ],
)
def test_websockets_client_decodes_our_frames(factory: ClientPerMessageDeflateFactory) -> None:
    protocol, parameters = _websockets_client(factory)
    messages = [chat_message(size, seed) for seed, size in enumerate([30, 200, 600, 5000, 40000])]
    frames = [parameters.frame(message) for message in messages]
    # The shared frames go in any order, to any client, and still decode:
    # no message depends on an earlier one.
    frames.reverse()
    assert _texts(protocol, frames) == [message.text for message in reversed(messages)]


def test_same_frames_decode_for_plain_and_compressing_clients() -> None:
    plain = ClientProtocol(parse_uri("ws://127.0.0.1/"))
    request = plain.connect()
    plain.send_request(request)
    plain.receive_data(
        (
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept_key(request.headers['Sec-WebSocket-Key'])}\r\n\r\n"
        ).encode()
    )
    plain.events_received()
    compressing, parameters = _websockets_client(ClientPerMessageDeflateFactory())
    messages = [chat_message(size, seed) for seed, size in enumerate([50, 300, 3000])]
    assert _texts(plain, [text_frame(m) for m in messages]) == [m.text for m in messages]
    assert _texts(compressing, [parameters.frame(m) for m in messages]) == [
        m.text for m in messages
    ]


def _join_messages(events: Iterable[object]) -> list[str | bytes]:
    out: list[str | bytes] = []
    parts: list[str] = []
    for event in events:
        assert isinstance(event, Message)
        parts.append(event.data)
        if event.message_finished:
            out.append("".join(parts))
            parts = []
    return out


def test_wsproto_client_decodes_our_frames() -> None:
    parameters = negotiate_deflate(["permessage-deflate; client_max_window_bits"])
    assert parameters is not None
    extension = PerMessageDeflate()
    extension.finalize(parameters.response())
    client = Connection(ConnectionType.CLIENT, extensions=[extension])
    messages = [chat_message(size, seed) for seed, size in enumerate([20, 400, 9000, 30000])]
    client.receive_data(b"".join(parameters.frame(m) for m in messages))
    received = _join_messages(client.events())
    assert received == [m.text for m in messages]


# -------------------------------------------------------------------- inbound


def _client_compress(data: bytes, compressor: zlib._Compress | None = None) -> bytes:
    compressor = compressor or zlib.compressobj(6, zlib.DEFLATED, -15)
    out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(TAIL)
    return out[:-4]


def _inflate_all(inflater: Inflater, payload: bytes, piece: int = 1000) -> bytes:
    out = b"".join(
        inflater.feed(payload[start : start + piece]) for start in range(0, len(payload), piece)
    )
    return out + inflater.finish()


def test_inflate_in_pieces_without_context() -> None:
    counters = CompressionCounters()
    inflater = Inflater(
        window_bits=15, no_context_takeover=True, max_message_size=MiB, counters=counters
    )
    for seed in range(5):
        data = chat_message(5000, seed).encode()
        payload = _client_compress(data)
        assert _inflate_all(inflater, payload, piece=7) == data
        assert not inflater.holds_context
    statistics = counters.snapshot()
    assert statistics.inbound_messages == 5
    assert statistics.inbound_bytes_after == sum(
        len(chat_message(5000, seed).encode()) for seed in range(5)
    )
    assert 0 < statistics.inbound_bytes_before < statistics.inbound_bytes_after


def test_inflate_with_client_context_takeover() -> None:
    # The client keeps its window: later messages refer to earlier ones, and
    # decode only with a kept decompressor.
    inflater = Inflater(window_bits=15, no_context_takeover=False, max_message_size=MiB)
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    data = chat_message(3000).encode()
    first = _client_compress(data, compressor)
    second = _client_compress(data, compressor)
    assert len(second) < len(first) / 10  # it is all back-references
    assert _inflate_all(inflater, first) == data
    assert inflater.holds_context
    assert _inflate_all(inflater, second) == data
    # Without context, the second message cannot be decoded.
    fresh = Inflater(window_bits=15, no_context_takeover=True, max_message_size=MiB)
    with pytest.raises(InflateError) as caught:
        _inflate_all(fresh, second)
    assert caught.value.code == 1002  # protocol error


def test_small_client_window() -> None:
    parameters = negotiate_deflate(["permessage-deflate; client_max_window_bits=9"])
    assert parameters is not None
    inflater = Inflater.for_parameters(parameters, MiB)
    data = chat_message(5000).encode()
    payload = _client_compress(data, zlib.compressobj(6, zlib.DEFLATED, -9))
    assert _inflate_all(inflater, payload) == data


@pytest.mark.parametrize("piece", [1, 100, 1 << 30])
def test_limit_is_exact(piece: int) -> None:
    data = b"a" * 5000
    payload = _client_compress(data)
    exact = Inflater(window_bits=15, no_context_takeover=True, max_message_size=5000)
    assert _inflate_all(exact, payload, piece) == data
    over = Inflater(window_bits=15, no_context_takeover=True, max_message_size=4999)
    with pytest.raises(InflateError) as caught:
        _inflate_all(over, payload, piece)
    assert caught.value.code == CloseCode.MESSAGE_TOO_BIG


def test_bomb_costs_bounded_memory() -> None:
    # 200 MiB of zeros deflates to ~200 KiB (zlib's ratio tops out near
    # 1000:1). Inflating it past a 1 MiB limit must allocate about 1 MiB.
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(MiB)
    bomb = b"".join(compressor.compress(chunk) for _ in range(200))
    bomb += compressor.flush(zlib.Z_SYNC_FLUSH)[:-4]
    assert len(bomb) < 250_000
    inflater = Inflater(window_bits=15, no_context_takeover=True, max_message_size=MiB)
    produced = 0
    tracemalloc.start()
    try:
        with pytest.raises(InflateError) as caught:  # noqa: PT012  (the error may come from any feed)
            for start in range(0, len(bomb), 65536):  # as a socket delivers it
                produced += len(inflater.feed(bomb[start : start + 65536]))
            inflater.finish()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.code == CloseCode.MESSAGE_TOO_BIG
    assert produced <= MiB
    assert peak < 3 * MiB
    assert not inflater.holds_context


def test_invalid_deflate_data() -> None:
    inflater = Inflater(window_bits=15, no_context_takeover=False, max_message_size=MiB)
    with pytest.raises(InflateError) as caught:
        _inflate_all(inflater, b"\xff\xff\xff\xff garbage")
    assert caught.value.code == 1002  # protocol error
    assert not inflater.holds_context
    # The inflater is usable again (for a connection that would not close).
    data = chat_message(500).encode()
    assert _inflate_all(inflater, _client_compress(data)) == data


def test_final_block_ends_the_stream() -> None:
    # RFC 7692 section 7.2.3.3: a sender may end a message with BFINAL set.
    inflater = Inflater(window_bits=15, no_context_takeover=False, max_message_size=MiB)
    data = chat_message(800).encode()
    payload = zlib.compress(data, 6, -15)  # a complete raw stream, BFINAL set
    assert _inflate_all(inflater, payload) == data
    assert not inflater.holds_context  # the next message starts a new stream
    assert _inflate_all(inflater, zlib.compress(data, 6, -15)) == data


# ------------------------------------- the engine's extension (websockets' sans-I/O)


def _engine_pair(
    max_message_size: int = MiB,
    factory: ClientPerMessageDeflateFactory | None = None,
    counters: CompressionCounters | None = None,
    *,
    client_context_takeover: bool = False,
) -> tuple[ServerProtocol, ClientProtocol]:
    """A served connection's engine, as trio_hub sets it up, and a websockets client."""
    client, parameters = _websockets_client(
        factory or ClientPerMessageDeflateFactory(), client_context_takeover=client_context_takeover
    )
    server = ServerProtocol(max_size=max_message_size, state=State.OPEN)
    server.extensions = [DeflateExtension(parameters, max_message_size, counters)]
    return server, client


def _server_receives(server: ServerProtocol, data: bytes) -> list[str | bytes]:
    server.receive_data(data)
    texts: list[str | bytes] = []
    parts: list[bytes] = []
    for frame in server.events_received():
        assert isinstance(frame, WsFrame)
        if frame.opcode in (WsOpcode.TEXT, WsOpcode.CONT):
            parts.append(bytes(frame.data))
            if frame.fin:
                texts.append(b"".join(parts).decode())
                parts = []
    return texts


def test_engine_inflates_client_messages() -> None:
    counters = CompressionCounters()
    server, client = _engine_pair(counters=counters)
    texts = [chat_message(size, seed).text for seed, size in enumerate([10, 300, 20000])]
    for text in texts:
        client.send_text(text.encode())
    # Fragmented, with a ping between the fragments.
    client.send_text(texts[1][:100].encode(), fin=False)
    client.send_ping(b"x")
    client.send_continuation(texts[1][100:].encode(), fin=True)
    data = b"".join(client.data_to_send())
    received: list[str | bytes] = []
    for start in range(0, len(data), 333):
        received += _server_receives(server, data[start : start + 333])
    assert received == [*texts, texts[1]]
    assert server.close_sent is None
    statistics = counters.snapshot()
    assert statistics.inbound_messages == 4
    assert statistics.inbound_bytes_after == sum(len(t) for t in texts) + len(texts[1])


def test_engine_with_client_context_takeover() -> None:
    server, client = _engine_pair(client_context_takeover=True)
    [extension] = server.extensions
    assert isinstance(extension, DeflateExtension)
    assert not extension.parameters.client_no_context_takeover
    text = chat_message(3000).text
    for _ in range(3):
        client.send_text(text.encode())
    frames = client.data_to_send()
    assert len(frames[2]) < len(frames[0]) / 5  # the client refers to earlier messages
    assert _server_receives(server, b"".join(frames)) == [text] * 3


def _failed_with(server: ServerProtocol) -> int:
    assert server.close_sent is not None
    return server.close_sent.code


def test_engine_closes_a_bomb_with_1009_in_bounded_memory() -> None:
    server, client = _engine_pair(max_message_size=MiB)
    client.send_text(b"a" * (64 * MiB))
    [bomb] = client.data_to_send()
    assert len(bomb) < 128 * 1024
    tracemalloc.start()
    try:
        received = _server_receives(server, bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert received == []
    assert _failed_with(server) == CloseCode.MESSAGE_TOO_BIG
    assert peak < 4 * MiB


def test_engine_limit_counts_all_fragments() -> None:
    server, client = _engine_pair(max_message_size=1000)
    client.send_text(b"a" * 600, fin=False)
    client.send_continuation(b"a" * 600, fin=True)
    assert _server_receives(server, b"".join(client.data_to_send())) == []
    assert _failed_with(server) == CloseCode.MESSAGE_TOO_BIG


def test_engine_message_at_the_limit_passes() -> None:
    server, client = _engine_pair(max_message_size=1000)
    client.send_text(b"a" * 1000)
    assert _server_receives(server, b"".join(client.data_to_send())) == ["a" * 1000]


def _masked(first_byte: int, payload: bytes) -> bytes:
    assert len(payload) < 126
    return bytes([first_byte, 0x80 | len(payload)]) + b"\x00\x00\x00\x00" + payload


@pytest.mark.parametrize(
    "data",
    [
        _masked(0xC1, b"\xff\xff\xff\xff garbage"),  # not deflate data
        _masked(0xC9, b""),  # a ping with RSV1
        _masked(0x41, b"J\xcb\xcf\x07\x00") + _masked(0xC0, b"\x00"),  # RSV1 on CONT
    ],
    ids=["invalid-deflate", "rsv1-ping", "rsv1-continuation"],
)
def test_engine_protocol_errors_close_1002(data: bytes) -> None:
    server, _ = _engine_pair()
    _server_receives(server, data)
    assert _failed_with(server) == 1002


def test_engine_without_the_extension_refuses_rsv1() -> None:
    server = ServerProtocol(max_size=MiB, state=State.OPEN)
    _server_receives(server, _masked(0xC1, b"J\xcb\xcf\x07\x00"))
    assert _failed_with(server) == 1002


def test_engine_uncompressed_messages_pass() -> None:
    server, _ = _engine_pair()
    # A client may send any message uncompressed (RSV1 clear).
    assert _server_receives(server, _masked(0x81, b"hello")) == ["hello"]


def test_engine_outbound() -> None:
    server, client = _engine_pair()
    texts = [chat_message(size, seed).text for seed, size in enumerate([500, 5000])]
    for text in texts:
        server.send_text(text.encode())
    server.send_text(texts[1][:1000].encode(), fin=False)
    server.send_continuation(texts[1][1000:].encode(), fin=True)
    data = server.data_to_send()
    assert data[0][0] & 0x40  # RSV1
    assert _texts(client, data) == [*texts, texts[1][:1000], texts[1][1000:]]


def test_delivery_tally_folds_interleaved_messages() -> None:
    counters = CompressionCounters()
    first, second = chat_message(1000, 1), chat_message(3000, 2)
    for message in (first, first, second, first, second, second):
        frame_for(message, sys.maxsize, counters)
    statistics = counters.snapshot()
    assert statistics.deliveries_compressed == 6
    assert statistics.delivered_bytes_before == 3 * len(text_frame(first)) + 3 * len(
        text_frame(second)
    )
    assert statistics.delivered_bytes_after == 3 * len(deflate_frame(first)) + 3 * len(
        deflate_frame(second)
    )
    # A snapshot folds the tally in, and counts nothing twice.
    frame_for(second, sys.maxsize, counters)
    assert counters.snapshot().deliveries_compressed == 7
    assert counters.snapshot().deliveries_compressed == 7
