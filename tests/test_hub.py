"""The hub on in-memory connections: delivery, topics, policies, statistics, isolation."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import pytest
import trio
import trio.testing

from trio_hub import (
    BroadcastSender,
    Client,
    CloseCode,
    Hub,
    Message,
    SlowClientPolicy,
    Transport,
    open_hub,
)
from trio_hub.testing import MemoryClient, RecordingBroadcaster, TestHub, memory_connection


def connect(
    hub: Hub, *, topics: Sequence[str] = (), wire_capacity: int | float = math.inf
) -> tuple[Client, MemoryClient]:
    peer = TestHub(hub).connect(topics=topics, wire_capacity=wire_capacity)
    return peer.server_side, peer


def numbers(messages: Sequence[Message]) -> list[object]:
    return [message.payload for message in messages]


async def test_broadcast_reaches_every_client_in_order() -> None:
    async with open_hub() as hub:
        peers = [connect(hub)[1] for _ in range(3)]
        for n in range(50):
            assert hub.broadcast(Message("n", n)) == 3
        await trio.testing.wait_all_tasks_blocked()
        for peer in peers:
            assert numbers(peer.drain()) == list(range(50))


async def test_nothing_from_before_registration_or_after_leaving() -> None:
    async with open_hub() as hub:
        hub.broadcast(Message("n", 0))
        client, peer = connect(hub)
        hub.broadcast(Message("n", 1))
        client.close()
        hub.broadcast(Message("n", 2))
        await trio.testing.wait_all_tasks_blocked()
        assert numbers(peer.drain()) == [1]
        assert peer.close_code == CloseCode.NORMAL


async def test_topics_reach_only_subscribers_and_keep_order_with_broadcasts() -> None:
    async with open_hub() as hub:
        sports_client, sports = connect(hub, topics=["sports"])
        _, news = connect(hub, topics=["news"])
        _, nobody = connect(hub)
        assert hub.publish("sports", Message("t", "goal")) == 1
        assert hub.broadcast(Message("t", "all")) == 3
        assert hub.publish("news", Message("t", "headline")) == 1
        assert hub.publish("weather", Message("t", "rain")) == 0
        sports_client.subscribe("news")
        assert hub.publish("news", Message("t", "second")) == 2
        sports_client.unsubscribe("sports")
        assert hub.publish("sports", Message("t", "no one")) == 0
        await trio.testing.wait_all_tasks_blocked()
        assert numbers(sports.drain()) == ["goal", "all", "second"]
        assert numbers(news.drain()) == ["all", "headline", "second"]
        assert numbers(nobody.drain()) == ["all"]
        assert sports_client.topics == {"news"}
        assert hub.topics() == {"news"}


async def test_subscribe_edge_cases() -> None:
    async with open_hub() as hub:
        client, _ = connect(hub)
        client.subscribe("a")
        client.subscribe("a")  # twice is harmless
        client.unsubscribe("never")  # not subscribed is harmless
        assert hub.statistics().clients_per_topic == {"a": 1}
        for bad in ["", None, 3]:
            with pytest.raises(ValueError, match="non-empty str"):
                client.subscribe(bad)  # type: ignore[arg-type]
            with pytest.raises(ValueError, match="non-empty str"):
                hub.publish(bad, Message("t"))  # type: ignore[arg-type]
        await client.aclose()
        client.subscribe("b")  # a client that left stays unsubscribed
        assert hub.statistics().clients_per_topic == {}


async def test_client_send_is_ordered_with_broadcasts() -> None:
    async with open_hub() as hub:
        client, peer = connect(hub)
        hub.broadcast(Message("n", 1))
        assert client.send(Message("n", 2))
        hub.broadcast(Message("n", 3))
        await trio.testing.wait_all_tasks_blocked()
        assert numbers(peer.drain()) == [1, 2, 3]
        assert hub.statistics().messages_sent == 1


async def test_broadcast_rejects_non_messages() -> None:
    async with open_hub() as hub:
        with pytest.raises(TypeError, match=r"expected a trio_hub\.Message, got dict"):
            hub.broadcast({"type": "x"})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("queue_size", 0),
        ("max_queue_bytes", 0),
        ("ping_interval", 0),
        ("pong_timeout", -1),
        ("write_timeout", math.nan),
        ("drain_timeout", -1),
    ],
)
async def test_open_hub_rejects_bad_settings(setting: str, value: float) -> None:
    with pytest.raises(ValueError, match=setting):
        async with open_hub(**{setting: value}):  # type: ignore[arg-type]
            pass  # pragma: no cover


async def test_hub_and_client_have_no_public_constructor() -> None:
    with pytest.raises(TypeError, match="no public constructor"):
        Hub()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="no public constructor"):
        Client()  # type: ignore[call-arg]


async def test_register_rejects_what_is_not_a_connection() -> None:
    async with open_hub() as hub:
        with pytest.raises(TypeError, match=r"trio_hub\.Transport"):
            hub.register(object())  # type: ignore[arg-type]
        assert isinstance(memory_connection()[0], Transport)


# --------------------------------------------------------------- slow clients


async def test_evict_policy_closes_a_slow_client_with_4000_and_spares_the_others() -> None:
    async with open_hub(queue_size=4) as hub:
        slow_client, slow = connect(hub, wire_capacity=2)
        _, fast = connect(hub)
        for n in range(10):
            hub.broadcast(Message("n", n))
        await trio.testing.wait_all_tasks_blocked()
        assert slow_client.close_code == CloseCode.SLOW_CLIENT
        assert await slow.wait_closed() == CloseCode.SLOW_CLIENT
        received = numbers(slow.drain())
        assert received == list(range(len(received)))  # a prefix
        assert 2 <= len(received) <= 2 + 4
        assert numbers(fast.drain()) == list(range(10))
        stats = hub.statistics()
        assert stats.evictions == 1
        assert stats.clients == 1
        assert stats.drops == 0


@pytest.mark.parametrize("policy", [SlowClientPolicy.DROP_NEWEST, SlowClientPolicy.DROP_OLDEST])
async def test_drop_policies_keep_the_client_and_count_each_gap(policy: SlowClientPolicy) -> None:
    async with open_hub(queue_size=3, on_slow_client=policy) as hub:
        client, peer = connect(hub, wire_capacity=1)
        for n in range(20):
            hub.broadcast(Message("n", n))
        await trio.testing.wait_all_tasks_blocked()
        received: list[int] = []
        while len(received) < 20 - client.statistics().dropped:
            payload = (await peer.receive()).payload
            assert isinstance(payload, int)
            received.append(payload)
        assert not client.closed
        assert received == sorted(received)  # an ordered subsequence
        assert len(set(received)) == len(received)
        assert 20 - len(received) == client.statistics().dropped == hub.statistics().drops
        assert client.statistics().dropped > 0
        if policy is SlowClientPolicy.DROP_NEWEST:
            assert received[-1] != 19  # the newest were dropped
        else:
            assert received[-1] == 19  # the freshest survived


async def test_byte_bound_applies_the_policy_before_the_count_bound() -> None:
    big = Message("blob", "x" * 1000)
    async with open_hub(queue_size=100, max_queue_bytes=3 * len(big.encode())) as hub:
        client, peer = connect(hub, wire_capacity=0)
        hub.broadcast(big)  # to the writer, which blocks on the wire
        hub.broadcast(big)
        hub.broadcast(big)
        assert client.statistics().queued == 3
        assert client.statistics().queued_bytes == 3 * len(big.encode())
        assert not client.closed
        hub.broadcast(big)  # one more would exceed the byte bound
        assert client.close_code == CloseCode.SLOW_CLIENT
        assert await peer.wait_closed() == CloseCode.SLOW_CLIENT


async def test_a_message_larger_than_the_byte_bound_still_reaches_an_empty_queue() -> None:
    async with open_hub(max_queue_bytes=10) as hub:
        client, peer = connect(hub, wire_capacity=0)
        hub.broadcast(Message("big", "y" * 100))
        assert client.statistics().queued == 1
        await peer.expect("big", "y" * 100)


async def test_write_timeout_evicts_a_client_that_stops_reading(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_hub(write_timeout=10, queue_size=100, ping_interval=None) as hub:
        client, peer = connect(hub, wire_capacity=1)
        _, other = connect(hub)
        start = trio.current_time()
        hub.broadcast(Message("n", 1))  # fills the wire
        hub.broadcast(Message("n", 2))  # the writer blocks on it
        await client.wait_closed()
        assert trio.current_time() - start == pytest.approx(10)
        assert client.close_code == CloseCode.SLOW_CLIENT
        assert "write_timeout" in client.close_reason
        assert numbers(peer.drain()) == [1]
        assert numbers(other.drain()) == [1, 2]
        assert hub.statistics().evictions == 1


# ------------------------------------------------------------------- keepalive


async def test_keepalive_closes_a_client_that_never_answers_pings(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_hub(ping_interval=20, pong_timeout=5) as hub:
        client, peer = connect(hub)
        _, healthy = connect(hub)
        peer.auto_pong = False
        start = trio.current_time()
        await peer.expect_closed(CloseCode.KEEPALIVE_TIMEOUT, timeout=60)
        assert trio.current_time() - start == pytest.approx(25)
        assert client.close_code == CloseCode.KEEPALIVE_TIMEOUT
        assert hub.statistics().keepalive_timeouts == 1
        await trio.sleep(100)  # virtual time: the healthy client is pinged and stays
        assert healthy.pings >= 5
        assert healthy.close_code is None


async def test_keepalive_can_be_disabled(autojump_clock: trio.testing.MockClock) -> None:
    async with open_hub(ping_interval=None) as hub:
        _, peer = connect(hub)
        peer.auto_pong = False
        await trio.sleep(1000)
        assert peer.pings == 0
        assert peer.close_code is None


# ------------------------------------------------------------- inbound messages


async def test_inbound_messages_reach_the_handler_in_order() -> None:
    seen: list[tuple[int, Message]] = []

    async def on_message(client: Client, message: Message) -> None:
        seen.append((client.id, message))
        client.send(Message("ack", message.payload))

    async with open_hub(on_message=on_message) as hub:
        client, peer = connect(hub)
        for n in range(3):
            await peer.send(Message("hello", n))
        for n in range(3):
            await peer.expect("ack", n)
        assert seen == [(client.id, Message("hello", n)) for n in range(3)]


async def test_invalid_messages_get_an_error_reply_and_the_connection_stays() -> None:
    seen: list[Message] = []

    async def on_message(client: Client, message: Message) -> None:
        seen.append(message)

    async with open_hub(on_message=on_message) as hub:
        client, peer = connect(hub)
        await peer.send("{not json")
        reply = await peer.receive()
        assert reply.type == "error"
        assert isinstance(reply.payload, dict)
        assert reply.payload["code"] == "invalid_json"
        await peer.send('{"type": "x", "extra": 1}')
        reply = await peer.receive()
        assert isinstance(reply.payload, dict)
        assert reply.payload["code"] == "invalid_envelope"
        assert "extra" in str(reply.payload["detail"])
        await peer.send(Message("fine", 1))
        await trio.testing.wait_all_tasks_blocked()
        assert seen == [Message("fine", 1)]
        assert not client.closed


async def test_per_client_handler_overrides_the_hub_handler() -> None:
    hub_seen: list[Message] = []
    client_seen: list[Message] = []

    async def hub_handler(client: Client, message: Message) -> None:
        hub_seen.append(message)

    async def client_handler(client: Client, message: Message) -> None:
        client_seen.append(message)

    async with open_hub(on_message=hub_handler) as hub:
        transport, peer = memory_connection()
        hub.register(transport, on_message=client_handler)
        await peer.send(Message("x"))
        await trio.testing.wait_all_tasks_blocked()
        assert client_seen == [Message("x")]
        assert hub_seen == []


async def test_identity_is_attached() -> None:
    async with open_hub() as hub:
        transport, _ = memory_connection()
        client = hub.register(transport, identity={"user": "ada"})
        assert client.identity == {"user": "ada"}


# -------------------------------------------------------------------- isolation


async def test_a_raising_handler_ends_only_its_client(caplog: pytest.LogCaptureFixture) -> None:
    async def on_message(client: Client, message: Message) -> None:
        if message.type == "boom":
            raise RuntimeError("handler bug")

    async with open_hub(on_message=on_message) as hub:
        victim, bad = connect(hub)
        _, good = connect(hub)
        await bad.send(Message("boom"))
        await bad.expect_closed(CloseCode.INTERNAL_ERROR)
        hub.broadcast(Message("n", 1))
        await good.expect("n", 1)
        assert hub.statistics().errors == 1
        assert victim.close_code == CloseCode.INTERNAL_ERROR
    records = [r for r in caplog.records if r.name == "trio_hub" and r.levelno == logging.ERROR]
    assert len(records) == 1
    assert "handler raised" in records[0].getMessage()
    assert records[0].exc_info is not None
    assert "handler bug" in str(records[0].exc_info[1])


async def test_binary_frames_end_only_their_client_with_1003() -> None:
    async with open_hub() as hub:
        _, bad = connect(hub)
        _, good = connect(hub)
        await bad.send(b"\x00\x01")
        await bad.expect_closed(CloseCode.UNSUPPORTED_DATA)
        hub.broadcast(Message("n", 1))
        await good.expect("n", 1)


class BreaksMidWrite:
    """A transport whose writes fail after the first message, as a dying socket's do."""

    def __init__(self) -> None:
        self.written: list[str] = []
        self.closed_with: int | None = None

    async def receive(self) -> str | bytes:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def send_batch(self, messages: Sequence[Message]) -> None:
        for message in messages:
            if self.written:
                raise trio.BrokenResourceError("connection reset by peer")
            self.written.append(message.text)
            await trio.lowlevel.checkpoint()

    def send_nowait(self, message: Message) -> bool:
        return False

    async def ping(self) -> None:
        await trio.lowlevel.checkpoint()

    async def close(self, code: int, reason: str) -> None:
        self.closed_with = code
        await trio.lowlevel.checkpoint()

    async def abort(self) -> None:
        await self.close(CloseCode.ABNORMAL, "")


async def test_a_transport_that_breaks_mid_write_ends_only_its_client(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with open_hub() as hub:
        broken = BreaksMidWrite()
        victim = hub.register(broken)
        _, good = connect(hub)
        for n in range(3):
            hub.broadcast(Message("n", n))
        await victim.wait_closed()
        assert victim.close_code == CloseCode.INTERNAL_ERROR
        assert broken.closed_with == CloseCode.INTERNAL_ERROR
        assert numbers(good.drain()) == [0, 1, 2]
        hub.broadcast(Message("n", 3))
        await good.expect("n", 3)
        stats = hub.statistics()
        assert stats.errors == 1
        # The failed write reports nothing as written, so its whole batch
        # counts as discarded: the counters never claim a delivery not confirmed.
        assert stats.discarded == 3
        assert stats.deliveries == 4  # the good client's
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failures) == 1
    assert "failed" in failures[0].getMessage()


class RaisesOnSendNowait(BreaksMidWrite):
    def send_nowait(self, message: Message) -> bool:
        raise OSError("bug in a transport")


async def test_a_transport_raising_in_send_nowait_does_not_break_the_broadcast() -> None:
    async with open_hub() as hub:
        _, before = connect(hub)
        victim = hub.register(RaisesOnSendNowait())
        _, after = connect(hub)
        assert hub.broadcast(Message("n", 1)) == 3
        await before.expect("n", 1)
        await after.expect("n", 1)
        await victim.wait_closed()
        assert victim.close_code == CloseCode.INTERNAL_ERROR


async def test_peer_close_is_reported_with_its_code() -> None:
    async with open_hub() as hub:
        client, peer = connect(hub)
        await peer.close(4321, "bye")
        await client.wait_closed()
        assert client.close_code == 4321
        assert client.close_reason == "bye"
        assert hub.statistics().clients == 0
        assert hub.statistics().errors == 0


# ----------------------------------------------------------------- statistics


async def test_statistics_add_up(autojump_clock: trio.testing.MockClock) -> None:
    async with open_hub(queue_size=2, on_slow_client=SlowClientPolicy.DROP_NEWEST) as hub:
        _, a = connect(hub, topics=["x"])
        _, b = connect(hub, wire_capacity=0)
        for n in range(5):
            hub.broadcast(Message("n", n))
        hub.publish("x", Message("p", 0))
        await trio.testing.wait_all_tasks_blocked()
        stats = hub.statistics()
        assert stats.messages_broadcast == 5
        assert stats.messages_published == 1
        meant = 5 * 2 + 1
        assert stats.deliveries + stats.drops + stats.queued + stats.discarded == meant
        assert stats.clients_per_topic == {"x": 1}
        assert stats.registrations == 2
        with pytest.raises(AttributeError):
            stats.clients = 3  # type: ignore[misc]
        with pytest.raises(TypeError):
            stats.clients_per_topic["y"] = 1  # type: ignore[index]
        del a, b


# --------------------------------------------------------------- BroadcastSender


def notify_all(sender: BroadcastSender, text: str) -> int:
    """Application code that only needs to broadcast."""
    return sender.broadcast(Message("notice", text)) + sender.publish("ops", Message("n", text))


async def test_hub_and_recording_broadcaster_are_broadcast_senders() -> None:
    recorder = RecordingBroadcaster(listeners=2)
    assert isinstance(recorder, BroadcastSender)
    assert notify_all(recorder, "hi") == 4
    recorder.assert_broadcast("notice", "hi")
    recorder.assert_published("ops", "n", "hi")
    async with open_hub() as hub:
        assert isinstance(hub, BroadcastSender)
        _, peer = connect(hub, topics=["ops"])
        assert notify_all(hub, "hi") == 2
        await peer.expect("notice", "hi")
        await peer.expect("n", "hi")
