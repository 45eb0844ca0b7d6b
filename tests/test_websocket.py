"""The hub over real trio-websocket connections on 127.0.0.1 (port 0).

Every test here has a time limit (``trio.fail_after``): the network is real, so the
clock is too, and a hang must fail rather than stall the suite.
"""

from __future__ import annotations

import json

import pytest
import trio
import trio.testing
from trio_websocket import WebSocketConnection

from trio_hub import Client, CloseCode, Message

from .rawws import OP_BINARY, OP_TEXT, RawWebSocket
from .realws import open_client, read_until_closed, serving, wait_for_clients

LIMIT = 20  # seconds, for any one test


async def read_numbers(connection: WebSocketConnection, count: int) -> list[object]:
    received = []
    for _ in range(count):
        received.append(json.loads(await connection.get_message())["payload"])
    return received


async def test_ordering_across_broadcasts_and_publishes_over_real_sockets() -> None:
    with trio.fail_after(LIMIT):
        async with (
            serving() as (hub, port),
            open_client(port, "/a") as on_a,
            open_client(port, "/b") as on_b,
            open_client(port, "/") as on_none,
        ):
            await wait_for_clients(hub, 3)
            expected: dict[str, list[int]] = {"a": [], "b": [], "none": []}
            for n in range(300):
                if n % 3 == 0:
                    hub.broadcast(Message("n", n))
                    for key in expected:
                        expected[key].append(n)
                else:
                    topic = "a" if n % 3 == 1 else "b"
                    hub.publish(topic, Message("n", n))
                    expected[topic].append(n)
            assert await read_numbers(on_a, len(expected["a"])) == expected["a"]
            assert await read_numbers(on_b, len(expected["b"])) == expected["b"]
            assert await read_numbers(on_none, len(expected["none"])) == expected["none"]


async def test_a_stuck_reader_is_evicted_within_write_timeout_and_others_lose_nothing() -> None:
    # 200 messages of 64 KiB are far more than loopback's socket buffers hold, so
    # the stuck client's write blocks; the queue is large enough that only the
    # write timeout can evict it.
    blob = "x" * 65536
    count = 200
    with trio.fail_after(LIMIT):
        async with (
            serving(queue_size=1000, write_timeout=1.0, close_timeout=0.5, ping_interval=None) as (
                hub,
                port,
            ),
            open_client(port, "/?stuck") as stuck,
            open_client(port, "/") as good_1,
            open_client(port, "/") as good_2,
        ):
            await wait_for_clients(hub, 3)
            (stuck_client,) = [c for c in hub.clients if c.identity == "/?stuck"]
            received: dict[str, list[object]] = {}

            async def read_all(name: str, connection: WebSocketConnection) -> None:
                messages = [json.loads(await connection.get_message()) for _ in range(count)]
                received[name] = [message["payload"]["n"] for message in messages]

            async with trio.open_nursery() as readers:
                readers.start_soon(read_all, "good_1", good_1)
                readers.start_soon(read_all, "good_2", good_2)
                start = trio.current_time()
                for n in range(count):
                    hub.broadcast(Message("blob", {"n": n, "blob": blob}))
                await stuck_client.wait_closed()
                evicted_after = trio.current_time() - start
            assert stuck_client.close_code == CloseCode.SLOW_CLIENT
            # write_timeout, then close_timeout for the close frame that cannot
            # get through either, plus slack for a loaded CI machine.
            assert evicted_after < 1.0 + 0.5 + 2.0
            assert received["good_1"] == list(range(count))
            assert received["good_2"] == list(range(count))
            assert hub.statistics().evictions == 1
            del stuck


async def test_queue_overflow_evicts_with_4000_over_real_sockets() -> None:
    blob = "y" * 65536
    with trio.fail_after(LIMIT):
        async with (
            serving(queue_size=4, ping_interval=None) as (hub, port),
            open_client(port, "/") as stuck,
        ):
            await wait_for_clients(hub, 1)
            (client,) = hub.clients
            n = 0
            while not client.closed and n < 1000:
                hub.broadcast(Message("blob", {"n": n, "blob": blob}))
                n += 1
                await trio.testing.wait_all_tasks_blocked(cushion=0.001)
            assert client.close_code == CloseCode.SLOW_CLIENT
            # The client still reads a prefix, then the close code.
            seen, code = await read_until_closed(stuck, "n")
            assert seen == list(range(len(seen)))
            assert code == CloseCode.SLOW_CLIENT


async def test_inbound_messages_and_garbage_over_real_sockets() -> None:
    seen: list[Message] = []

    async def on_message(client: Client, message: Message) -> None:
        seen.append(message)
        client.send(Message("ack", message.payload))

    with trio.fail_after(LIMIT):
        async with (
            serving(on_message=on_message) as (hub, port),
            open_client(port, "/") as bystander,
        ):
            await wait_for_clients(hub, 1)
            # Valid, then invalid JSON: an error reply, and the connection stays.
            async with open_client(port, "/") as chatty:
                await chatty.send_message(Message("hi", 1).text)
                assert json.loads(await chatty.get_message()) == {"type": "ack", "payload": 1}
                await chatty.send_message("{garbage")
                reply = json.loads(await chatty.get_message())
                assert reply["type"] == "error"
                assert reply["payload"]["code"] == "invalid_json"
                await chatty.send_message(Message("hi", 2).text)
                assert json.loads(await chatty.get_message()) == {"type": "ack", "payload": 2}

            # A binary frame: closed with 1003.
            raw = await RawWebSocket.connect(port)
            await raw.send_frame(OP_BINARY, b"\x00\xff")
            assert await raw.receive_close_code() == CloseCode.UNSUPPORTED_DATA
            await raw.aclose()

            # Invalid UTF-8 in a text frame ends that client with 1007. (Plain
            # trio-websocket drops the TCP connection without a close frame
            # here; serve_hub sends the 1007 frame, see test_server.py.)
            raw = await RawWebSocket.connect(port, "/?utf8")
            await wait_for_clients(hub, 2)
            (bad,) = [c for c in hub.clients if c.identity == "/?utf8"]
            await raw.send_frame(OP_TEXT, b'{"type":"\xff"}')
            await bad.wait_closed()
            assert bad.close_code == CloseCode.INVALID_PAYLOAD
            with pytest.raises(EOFError):
                await raw.receive_close_code()
            await raw.aclose()

            # The bystander lost nothing.
            hub.broadcast(Message("still", "here"))
            assert json.loads(await bystander.get_message()) == {
                "type": "still",
                "payload": "here",
            }
            assert seen == [Message("hi", 1), Message("hi", 2)]
            assert hub.statistics().errors == 0


async def test_shutdown_closes_real_clients_with_1001_after_flushing() -> None:
    with trio.fail_after(LIMIT):
        async with serving() as (hub, port), open_client(port, "/") as connection:
            await wait_for_clients(hub, 1)
            for n in range(100):
                hub.broadcast(Message("n", n))
            outcome: list[tuple[list[object], int]] = []

            async def read() -> None:
                outcome.append(await read_until_closed(connection))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                await hub.aclose()
            assert outcome == [(list(range(100)), CloseCode.GOING_AWAY)]


async def test_a_client_that_disconnects_leaves_the_hub() -> None:
    with trio.fail_after(LIMIT):
        async with serving() as (hub, port):
            async with open_client(port, "/"):
                await wait_for_clients(hub, 1)
                (client,) = hub.clients
            await client.wait_closed()
            assert client.close_code == CloseCode.NORMAL
            assert len(hub) == 0
