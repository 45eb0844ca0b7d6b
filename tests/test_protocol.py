"""The wire protocol handler, on in-memory connections: every message type and every error."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from trio_hub import (
    MAX_TOPIC_LENGTH,
    MAX_TOPICS_PER_CLIENT,
    Client,
    Hub,
    Message,
    open_hub,
    protocol_handler,
)
from trio_hub.testing import MemoryClient, memory_connection


@asynccontextmanager
async def protocol_hub() -> AsyncIterator[Hub]:
    async with open_hub(on_message=protocol_handler) as hub:
        yield hub


def connect(hub: Hub) -> tuple[Client, MemoryClient]:
    # An unbounded wire: these tests are about the protocol, not slow clients.
    transport, peer = memory_connection(wire_capacity=math.inf)
    return hub.register(transport), peer


async def send(peer: MemoryClient, frame: Any) -> None:
    await peer.send(json.dumps(frame))


async def receive(peer: MemoryClient) -> Any:
    # Raw JSON, not Message.decode(): broadcastResult carries a field beside the
    # payload that the strict envelope decoder rightly refuses.
    return json.loads(await peer.receive_text())


async def frames(peer: MemoryClient) -> list[Any]:
    """Everything the peer has been sent once the hub has settled."""
    await trio.testing.wait_all_tasks_blocked()
    received = []
    while peer.pending:
        received.append(await receive(peer))
    return received


async def request(peer: MemoryClient, frame: Any) -> list[Any]:
    await send(peer, frame)
    return await frames(peer)


def error(code: str) -> dict[str, str]:
    return {"type": "error", "code": code}


def summarize(frame: Any) -> Any:
    """An error frame without its free-text detail, which tests check separately."""
    if frame["type"] == "error":
        return error(frame["payload"]["code"])
    return frame


# ------------------------------------------------------------------- echo


@pytest.mark.parametrize(
    "payload",
    [None, 0, -1.5, 2**70, "", "héllo ☃", True, [], [1, [2, {"a": None}]], {"k": {"n": [1]}}],
)
async def test_echo_returns_the_payload_to_the_sender_alone(payload: Any) -> None:
    async with protocol_hub() as hub:
        _, sender = connect(hub)
        _, other = connect(hub)
        assert await request(sender, {"type": "echo", "payload": payload}) == [
            {"type": "echo", "payload": payload}
        ]
        assert await frames(other) == []


async def test_echo_without_a_payload_echoes_null() -> None:
    async with protocol_hub() as hub:
        _, peer = connect(hub)
        assert await request(peer, {"type": "echo"}) == [{"type": "echo", "payload": None}]


# -------------------------------------------------------------- broadcast


async def test_broadcast_reaches_everyone_then_the_sender_gets_broadcast_result() -> None:
    async with protocol_hub() as hub:
        _, sender = connect(hub)
        others = [connect(hub)[1] for _ in range(2)]
        payload = {"text": "hi", "n": [1, 2]}
        await send(sender, {"type": "broadcast", "payload": payload})
        # The sender gets its own broadcast first, then the result (shootout order).
        assert await frames(sender) == [
            {"type": "broadcast", "payload": payload},
            {"type": "broadcastResult", "payload": payload, "listenerCount": 3},
        ]
        for other in others:
            assert await frames(other) == [{"type": "broadcast", "payload": payload}]


async def test_broadcast_result_is_shootout_shaped_on_the_wire() -> None:
    # websocket-shootout load tools read listenerCount at the top level.
    async with protocol_hub() as hub:
        _, sender = connect(hub)
        await send(sender, {"type": "broadcast", "payload": 7})
        assert await sender.receive_text() == '{"type":"broadcast","payload":7}'
        assert (
            await sender.receive_text()
            == '{"type":"broadcastResult","payload":7,"listenerCount":1}'
        )


async def test_broadcast_listener_count_follows_the_clients() -> None:
    async with protocol_hub() as hub:
        _, sender = connect(hub)
        leaver, _ = connect(hub)
        leaver.close()
        await send(sender, {"type": "broadcast", "payload": None})
        assert (await frames(sender))[-1]["listenerCount"] == 1


# ----------------------------------------------------------------- topics


async def test_subscribe_publish_unsubscribe() -> None:
    async with protocol_hub() as hub:
        subscriber_client, subscriber = connect(hub)
        _, publisher = connect(hub)
        _, bystander = connect(hub)

        assert await request(subscriber, {"type": "subscribe", "payload": {"topic": "news"}}) == [
            {"type": "subscribed", "payload": {"topic": "news"}}
        ]
        assert subscriber_client.topics == {"news"}

        data = {"headline": "hello", "id": 1}
        await send(publisher, {"type": "publish", "payload": {"topic": "news", "data": data}})
        assert await frames(publisher) == [
            {"type": "publishResult", "payload": {"topic": "news", "listenerCount": 1}}
        ]
        assert await frames(subscriber) == [
            {"type": "message", "payload": {"topic": "news", "data": data}}
        ]
        assert await frames(bystander) == []

        assert await request(subscriber, {"type": "unsubscribe", "payload": {"topic": "news"}}) == [
            {"type": "unsubscribed", "payload": {"topic": "news"}}
        ]
        assert subscriber_client.topics == set()
        assert await request(
            publisher, {"type": "publish", "payload": {"topic": "news", "data": 2}}
        ) == [{"type": "publishResult", "payload": {"topic": "news", "listenerCount": 0}}]
        assert await frames(subscriber) == []


async def test_a_subscribed_publisher_gets_its_own_message_before_the_result() -> None:
    async with protocol_hub() as hub:
        _, peer = connect(hub)
        await request(peer, {"type": "subscribe", "payload": {"topic": "t"}})
        assert await request(peer, {"type": "publish", "payload": {"topic": "t", "data": 1}}) == [
            {"type": "message", "payload": {"topic": "t", "data": 1}},
            {"type": "publishResult", "payload": {"topic": "t", "listenerCount": 1}},
        ]


async def test_publish_without_data_publishes_null() -> None:
    async with protocol_hub() as hub:
        _, peer = connect(hub)
        await request(peer, {"type": "subscribe", "payload": {"topic": "t"}})
        assert (await request(peer, {"type": "publish", "payload": {"topic": "t"}}))[0] == {
            "type": "message",
            "payload": {"topic": "t", "data": None},
        }


async def test_subscribing_twice_and_unsubscribing_when_not_subscribed_are_harmless() -> None:
    async with protocol_hub() as hub:
        client, peer = connect(hub)
        for _ in range(2):
            assert await request(peer, {"type": "subscribe", "payload": {"topic": "t"}}) == [
                {"type": "subscribed", "payload": {"topic": "t"}}
            ]
        assert hub.publish("t", Message("once", None)) == 1
        assert await request(peer, {"type": "unsubscribe", "payload": {"topic": "other"}}) == [
            {"type": "once", "payload": None},
            {"type": "unsubscribed", "payload": {"topic": "other"}},
        ]
        assert client.topics == {"t"}


async def test_topic_names_up_to_the_limit_are_accepted() -> None:
    topic = "é" * MAX_TOPIC_LENGTH  # the limit counts characters, not bytes
    async with protocol_hub() as hub:
        _, peer = connect(hub)
        assert await request(peer, {"type": "subscribe", "payload": {"topic": topic}}) == [
            {"type": "subscribed", "payload": {"topic": topic}}
        ]


async def test_subscriptions_per_client_are_capped() -> None:
    async with protocol_hub() as hub:
        client, peer = connect(hub)
        for n in range(MAX_TOPICS_PER_CLIENT):
            await send(peer, {"type": "subscribe", "payload": {"topic": f"t{n}"}})
        assert len(await frames(peer)) == MAX_TOPICS_PER_CLIENT

        [reply] = await request(peer, {"type": "subscribe", "payload": {"topic": "one-too-many"}})
        assert summarize(reply) == error("limit_exceeded")
        assert str(MAX_TOPICS_PER_CLIENT) in reply["payload"]["detail"]
        assert "one-too-many" not in client.topics
        assert "one-too-many" not in hub.topics()

        # Re-subscribing to a topic it holds is not "one more".
        assert await request(peer, {"type": "subscribe", "payload": {"topic": "t0"}}) == [
            {"type": "subscribed", "payload": {"topic": "t0"}}
        ]
        await request(peer, {"type": "unsubscribe", "payload": {"topic": "t0"}})
        assert await request(peer, {"type": "subscribe", "payload": {"topic": "new"}}) == [
            {"type": "subscribed", "payload": {"topic": "new"}}
        ]


# ----------------------------------------------------------------- errors

TOO_LONG = "x" * (MAX_TOPIC_LENGTH + 1)

BAD_TOPIC_PAYLOADS: list[tuple[Any, str]] = [
    (None, "got null"),
    (5, "got a number"),
    ("news", "got a string"),
    (["news"], "got an array"),
    (True, "got a boolean"),
    ({}, "needs a 'topic'"),
    ({"name": "t"}, "unknown field(s) ['name']"),
    ({"topic": None}, "'topic' must be a string, got null"),
    ({"topic": 3}, "'topic' must be a string, got a number"),
    ({"topic": ["a"]}, "'topic' must be a string, got an array"),
    ({"topic": {"a": 1}}, "'topic' must be a string, got an object"),
    ({"topic": ""}, "must not be empty"),
    ({"topic": TOO_LONG}, f"{MAX_TOPIC_LENGTH + 1} characters long"),
    ({"topic": "t", "topics": ["t"]}, "unknown field(s) ['topics']"),
]


@pytest.mark.parametrize("message_type", ["subscribe", "unsubscribe", "publish"])
@pytest.mark.parametrize(("payload", "detail"), BAD_TOPIC_PAYLOADS)
async def test_a_bad_topic_payload_gets_invalid_payload_and_changes_nothing(
    message_type: str, payload: Any, detail: str
) -> None:
    async with protocol_hub() as hub:
        client, peer = connect(hub)
        _, subscriber = connect(hub)
        await request(subscriber, {"type": "subscribe", "payload": {"topic": "t"}})
        [reply] = await request(peer, {"type": message_type, "payload": payload})
        assert summarize(reply) == error("invalid_payload")
        assert detail in reply["payload"]["detail"]
        assert client.topics == set()
        assert hub.topics() == {"t"}
        assert await frames(subscriber) == []
        assert hub.statistics().messages_published == 0


async def test_publish_rejects_unknown_fields_but_allows_data() -> None:
    async with protocol_hub() as hub:
        _, peer = connect(hub)
        [reply] = await request(
            peer, {"type": "publish", "payload": {"topic": "t", "data": 1, "dta": 2}}
        )
        assert summarize(reply) == error("invalid_payload")
        assert "unknown field(s) ['dta']" in reply["payload"]["detail"]
        assert "'topic' and 'data'" in reply["payload"]["detail"]


async def test_subscribe_rejects_data() -> None:
    async with protocol_hub() as hub:
        _, peer = connect(hub)
        [reply] = await request(peer, {"type": "subscribe", "payload": {"topic": "t", "data": 1}})
        assert summarize(reply) == error("invalid_payload")
        assert "only 'topic' and 'recover' allowed" in reply["payload"]["detail"]


@pytest.mark.parametrize(
    "message_type",
    ["chat", "Echo", "message", "error", "broadcastResult", "publishResult", "subscribed"],
)
async def test_an_unknown_type_gets_unknown_type(message_type: str) -> None:
    async with protocol_hub() as hub:
        _, peer = connect(hub)
        [reply] = await request(peer, {"type": message_type, "payload": 1})
        assert summarize(reply) == error("unknown_type")
        detail = reply["payload"]["detail"]
        assert repr(message_type) in detail
        for known in ("echo", "broadcast", "subscribe", "unsubscribe", "publish"):
            assert repr(known) in detail


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", "invalid_json"),
        ("[1, 2]", "invalid_envelope"),
        ('{"payload": 1}', "invalid_envelope"),
        ('{"type": "echo", "payload": 1, "listenerCount": 1}', "invalid_envelope"),
    ],
)
async def test_frames_that_are_not_envelopes_are_answered_by_the_hub(frame: str, code: str) -> None:
    async with protocol_hub() as hub:
        _, peer = connect(hub)
        await peer.send(frame)
        assert [summarize(reply) for reply in await frames(peer)] == [error(code)]


async def test_after_every_kind_of_error_the_connection_stays_and_others_lose_nothing() -> None:
    bad_frames = [
        "{not json",
        '{"type": 1}',
        json.dumps({"type": "nope", "payload": None}),
        json.dumps({"type": "subscribe", "payload": None}),
        json.dumps({"type": "unsubscribe", "payload": {"topic": ""}}),
        json.dumps({"type": "publish", "payload": {"topic": TOO_LONG, "data": 1}}),
    ]
    async with protocol_hub() as hub:
        offender_client, offender = connect(hub)
        _, bystander = connect(hub)
        _, subscriber = connect(hub)
        await request(subscriber, {"type": "subscribe", "payload": {"topic": "t"}})
        expected_bystander: list[Any] = []
        expected_subscriber: list[Any] = []
        for n, frame in enumerate(bad_frames):
            # Interleave the bad frames with traffic that others must all receive.
            await offender.send(frame)
            await send(offender, {"type": "broadcast", "payload": n})
            await send(offender, {"type": "publish", "payload": {"topic": "t", "data": n}})
            expected_bystander.append({"type": "broadcast", "payload": n})
            expected_subscriber += [
                {"type": "broadcast", "payload": n},
                {"type": "message", "payload": {"topic": "t", "data": n}},
            ]
        assert await frames(bystander) == expected_bystander
        assert await frames(subscriber) == expected_subscriber
        received = await frames(offender)
        errors = [frame for frame in received if frame["type"] == "error"]
        assert len(errors) == len(bad_frames)
        assert [frame["type"] for frame in received if frame["type"] != "error"] == [
            "broadcast",
            "broadcastResult",
            "publishResult",
        ] * len(bad_frames)
        assert await request(offender, {"type": "echo", "payload": "still here"}) == [
            {"type": "echo", "payload": "still here"}
        ]
        assert not offender_client.closed
        assert hub.statistics().errors == 0


async def test_replies_keep_the_order_of_requests() -> None:
    async with protocol_hub() as hub:
        _, peer = connect(hub)
        for n in range(20):
            await send(peer, {"type": "echo", "payload": n})
            await send(peer, {"type": "nope", "payload": n})
        replies = await frames(peer)
        assert [reply["type"] for reply in replies] == ["echo", "error"] * 20
        assert [reply["payload"] for reply in replies[::2]] == list(range(20))


async def test_a_slow_sender_only_slows_itself(autojump_clock: trio.testing.MockClock) -> None:
    # The handler never waits for a client: a broadcast from a client whose own
    # connection is full still reaches the others at once.
    async with open_hub(on_message=protocol_handler, queue_size=1000) as hub:
        transport, stuck = memory_connection(wire_capacity=0)
        stuck_client = hub.register(transport)
        _, reader = connect(hub)
        for n in range(10):
            await send(stuck, {"type": "broadcast", "payload": n})
        assert await frames(reader) == [{"type": "broadcast", "payload": n} for n in range(10)]
        # Its own 10 broadcasts and 10 results wait in its queue.
        assert stuck_client.statistics().queued == 20


async def test_the_handler_can_be_called_from_an_application_handler() -> None:
    async def on_message(client: Client, message: Message) -> None:
        if message.type == "shout":
            client.send(Message("shouted", str(message.payload).upper()))
        else:
            await protocol_handler(client, message)

    async with open_hub(on_message=on_message) as hub:
        transport, peer = memory_connection(wire_capacity=math.inf)
        hub.register(transport)
        assert await request(peer, {"type": "shout", "payload": "hi"}) == [
            {"type": "shouted", "payload": "HI"}
        ]
        assert await request(peer, {"type": "echo", "payload": "hi"}) == [
            {"type": "echo", "payload": "hi"}
        ]
