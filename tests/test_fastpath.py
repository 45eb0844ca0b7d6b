"""Property tests of the fast write path over real sockets.

serve_hub writes a frame straight from ``broadcast()`` when the client's socket is
idle, keeps what the socket did not take as a remainder that goes out first, and
queues for the writer task otherwise. Hypothesis draws message sizes (from tiny to
far over the socket buffers) and reading patterns; after every step, and at the
end, the client must hold exactly the messages sent, in order, each once, and the
counters must add up. Real sockets on 127.0.0.1 (messages of up to 300 KB overflow
the socket's buffers, which forces partial writes), a real WebSocket handshake, and
a time limit on every example.
"""

from __future__ import annotations

import json
from functools import partial

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_hub import Message, open_hub, serve_hub

from .rawws import OP_TEXT, RawWebSocket

Op = tuple[str, int]

operations = st.lists(
    st.one_of(
        st.tuples(st.just("broadcast"), st.sampled_from([1, 100, 3000, 70_000, 300_000])),
        st.tuples(st.just("read"), st.integers(1, 5)),
        st.tuples(st.just("settle"), st.just(0)),
    ),
    min_size=1,
    max_size=25,
)


async def read_message(raw: RawWebSocket) -> int:
    opcode, payload = await raw.receive_frame()
    assert opcode == OP_TEXT
    message = json.loads(payload)
    assert message["type"] == "n"
    number = message["payload"]["n"]
    assert isinstance(number, int)
    assert len(message["payload"]["pad"]) == message["payload"]["size"]
    return number


@settings(max_examples=25, deadline=None)
@given(ops=operations)
def test_direct_and_queued_writes_keep_every_message_in_order(ops: list[Op]) -> None:
    async def main() -> None:
        with trio.fail_after(60):
            async with (
                open_hub(queue_size=10_000, ping_interval=None) as hub,
                trio.open_nursery() as nursery,
            ):
                server = await nursery.start(partial(serve_hub, hub, "127.0.0.1", 0))
                raw = await RawWebSocket.connect(server.port)
                try:
                    while len(hub) < 1:
                        await trio.testing.wait_all_tasks_blocked(cushion=0.001)
                    (client,) = hub.clients
                    sent = 0
                    received: list[int] = []
                    for kind, amount in ops:
                        if kind == "broadcast":
                            hub.broadcast(
                                Message("n", {"n": sent, "size": amount, "pad": "p" * amount})
                            )
                            sent += 1
                        elif kind == "read":
                            for _ in range(min(amount, sent - len(received))):
                                received.append(await read_message(raw))
                        else:
                            await trio.testing.wait_all_tasks_blocked(cushion=0.001)
                        stats = client.statistics()
                        assert stats.delivered + stats.queued == sent
                        assert stats.dropped == stats.discarded == 0
                        assert received == list(range(len(received)))
                    while len(received) < sent:
                        received.append(await read_message(raw))
                    assert received == list(range(sent))
                    assert not client.closed
                finally:
                    await raw.aclose()
                await server.aclose()

    trio.run(main)
