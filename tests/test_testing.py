"""trio_hub.testing: the kit that applications test against.

Time-based behaviour (keepalive, write timeout) runs in virtual time under
``autojump_clock``, which is the point of an in-memory transport.
"""

from __future__ import annotations

import inspect
import math
import re
from unittest.mock import ANY

import pytest
import trio
import trio.testing

from trio_hub import (
    CloseCode,
    Hub,
    HubClosedError,
    Message,
    SlowClientPolicy,
    open_hub,
)
from trio_hub.testing import (
    HubClientFactory,
    HubSettings,
    MemoryClientClosed,
    RecordingBroadcaster,
    SentMessage,
    TestHub,
    memory_connection,
    open_test_hub,
)


def payloads(messages: list[Message]) -> list[object]:
    return [message.payload for message in messages]


# ------------------------------------------------------------- open_test_hub


def test_hub_settings_name_every_keyword_of_open_hub() -> None:
    # open_test_hub forwards HubSettings to open_hub: a setting added to one and
    # not the other must fail here.
    keywords = {
        name
        for name, parameter in inspect.signature(open_hub).parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    }
    assert set(HubSettings.__annotations__) == keywords


async def test_open_test_hub_forwards_settings_and_connects_clients() -> None:
    async with open_test_hub(queue_size=2, ping_interval=None) as test_hub:
        assert isinstance(test_hub.hub, Hub)
        news = test_hub.connect(topics=["news"], identity="ada", wire_capacity=1)
        other = test_hub.connect(wire_capacity=math.inf)
        assert news.server_side.identity == "ada"
        assert news.server_side.topics == {"news"}
        assert test_hub.hub.clients == (news.server_side, other.server_side)
        # wire 1 + queue_size 2: the fourth message finds the queue full.
        for n in range(3):
            test_hub.hub.publish("news", Message("n", n))
        assert not news.server_side.closed
        test_hub.hub.publish("news", Message("n", 3))
        assert news.server_side.close_code == CloseCode.SLOW_CLIENT
        assert "TestHub" in repr(test_hub)
    # Leaving the block shut the hub down; the fast client got 1001.
    assert await other.expect_closed(CloseCode.GOING_AWAY) == CloseCode.GOING_AWAY
    with pytest.raises(HubClosedError):
        test_hub.connect()


async def test_a_per_client_handler_is_forwarded() -> None:
    async def echo(client: object, message: Message) -> None:
        assert client is peer.server_side
        peer.server_side.send(Message("echo", message.payload))

    async with open_test_hub() as test_hub:
        peer = test_hub.connect(on_message=echo)
        await peer.send(Message("say", "hi"))
        await peer.expect("echo", "hi")


async def test_test_hub_wraps_a_hub_the_app_opened_itself() -> None:
    async with open_hub() as hub:
        peer = TestHub(hub).connect()
        hub.broadcast(Message("hello"))
        await peer.expect("hello")


async def test_server_side_needs_a_client_made_by_connect() -> None:
    async with open_hub() as hub:
        transport, peer = memory_connection()
        hub.register(transport)
        with pytest.raises(RuntimeError, match=r"TestHub\.connect"):
            peer.server_side  # noqa: B018


# -------------------------------------------------------- time, virtually


async def test_keepalive_timeout_closes_with_4001_in_virtual_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_hub(ping_interval=10, pong_timeout=3) as test_hub:
        dead = test_hub.connect()
        healthy = test_hub.connect()
        dead.auto_pong = False
        start = trio.current_time()
        await dead.expect_closed(CloseCode.KEEPALIVE_TIMEOUT, timeout=100)
        # The first ping goes out after ping_interval; pong_timeout later it is over.
        assert trio.current_time() - start == pytest.approx(10 + 3)
        assert dead.pings == 1
        assert dead.server_side.close_code == CloseCode.KEEPALIVE_TIMEOUT
        # Virtual time: no real time passes. (Stop between two pings: a ping due
        # at the very moment the sleep ends may run before or after it.)
        await trio.sleep_until(start + 1005)
        assert healthy.pings == 100
        assert healthy.close_code is None
        stats = test_hub.hub.statistics()
        assert stats.keepalive_timeouts == 1
        assert stats.clients == 1


async def test_a_slow_reader_fills_its_wire_and_queue_then_is_evicted_with_4000(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wire, queue = 3, 4
    async with open_test_hub(queue_size=queue, ping_interval=None) as test_hub:
        slow = test_hub.connect(wire_capacity=wire)
        fast = test_hub.connect(wire_capacity=math.inf)
        await trio.testing.wait_all_tasks_blocked()  # the clients' tasks run
        for n in range(wire + queue):
            test_hub.hub.broadcast(Message("n", n))
        assert slow.pending == wire
        assert slow.server_side.statistics().queued == queue
        assert not slow.server_side.closed
        test_hub.hub.broadcast(Message("n", wire + queue))  # finds the queue full
        assert slow.server_side.close_code == CloseCode.SLOW_CLIENT
        await trio.sleep(5)  # the slow client dawdles (virtually), then reads
        messages, code = await slow.receive_until_closed()
        # The broadcasts came in one go, so no write had started when the queue
        # overflowed: the client holds what was on the wire, in order, then the
        # close code. The queue, and the message that found it full, are lost.
        assert payloads(messages) == list(range(wire))
        assert code == CloseCode.SLOW_CLIENT
        assert payloads(fast.drain()) == list(range(wire + queue + 1))
        stats = test_hub.hub.statistics()
        assert stats.evictions == 1
        assert stats.discarded == queue + 1
        assert stats.clients == 1


async def test_a_reader_that_never_reads_again_is_cut_off_after_write_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_hub(queue_size=100, write_timeout=7, ping_interval=None) as test_hub:
        stuck = test_hub.connect(wire_capacity=2)
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        for n in range(5):
            test_hub.hub.broadcast(Message("n", n))
        await stuck.server_side.wait_closed()
        assert trio.current_time() - start == pytest.approx(7)
        assert stuck.server_side.close_code == CloseCode.SLOW_CLIENT
        assert "write_timeout" in stuck.server_side.close_reason
        # The write was cut short, so the hub aborted rather than sending a close
        # frame after half a frame: the client reads what got through, then 1006,
        # as a real client sees a dropped TCP connection.
        messages, code = await stuck.receive_until_closed()
        assert payloads(messages) == [0, 1]
        assert code == CloseCode.ABNORMAL
        assert test_hub.hub.statistics().evictions == 1


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        # Wire 2, queue 3: 0-1 go on the wire, 2-4 are queued, 5-9 find it full.
        (SlowClientPolicy.DROP_NEWEST, [0, 1, 2, 3, 4]),
        # No write has taken any of the queue yet (the broadcasts came in one
        # go); each newcomer pushes out the oldest waiting, so the freshest
        # three (7, 8, 9) survive.
        (SlowClientPolicy.DROP_OLDEST, [0, 1, 7, 8, 9]),
    ],
)
async def test_drop_policies_keep_the_client_and_count_exactly_the_gap(
    autojump_clock: trio.testing.MockClock, policy: SlowClientPolicy, expected: list[int]
) -> None:
    async with open_test_hub(queue_size=3, on_slow_client=policy, ping_interval=None) as test_hub:
        peer = test_hub.connect(wire_capacity=2)
        await trio.testing.wait_all_tasks_blocked()
        for n in range(10):
            test_hub.hub.broadcast(Message("n", n))
        received = [(await peer.receive()).payload for _ in expected]
        assert received == expected
        assert peer.server_side.statistics().dropped == 10 - len(expected)
        assert test_hub.hub.statistics().drops == 10 - len(expected)
        assert test_hub.hub.statistics().evictions == 0
        # Still connected, and caught up.
        test_hub.hub.broadcast(Message("n", 10))
        await peer.expect("n", 10)
        assert peer.close_code is None


# ---------------------------------------------------------- the test client


async def test_expect_reports_expected_and_received() -> None:
    async with open_test_hub() as test_hub:
        peer = test_hub.connect()
        test_hub.hub.broadcast(Message("n", 1))
        test_hub.hub.broadcast(Message("n", 2))
        message = (
            "received the wrong message\n"
            "  expected: Message('n', 5)\n"
            "  received: Message('n', 1)\n"
            "  (1 more unread)"
        )
        with pytest.raises(AssertionError, match=re.escape(message)):
            await peer.expect("n", 5)
        with pytest.raises(AssertionError, match=r"expected: Message\('m', 2\)"):
            await peer.expect("m", 2)


async def test_expect_matches_any_where_asked() -> None:
    async with open_test_hub() as test_hub:
        peer = test_hub.connect()
        await peer.send("{not json")
        reply = await peer.expect("error", {"code": "invalid_json", "detail": ANY})
        assert isinstance(reply.payload, dict)
        assert reply.payload["detail"]
        await peer.send("[1]")
        with pytest.raises(AssertionError, match="invalid_json"):
            await peer.expect("error", {"code": "invalid_json", "detail": ANY})


async def test_expect_reports_a_timeout_in_virtual_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_hub() as test_hub:
        peer = test_hub.connect()
        start = trio.current_time()
        with pytest.raises(
            AssertionError,
            match=re.escape("expected Message('n', 1) within 3s, but nothing arrived"),
        ):
            await peer.expect("n", 1, timeout=3)
        assert trio.current_time() - start == pytest.approx(3)
        with pytest.raises(trio.TooSlowError, match="nothing received within 2s"):
            await peer.receive(timeout=2)


async def test_expect_reports_a_close_with_its_code_and_reason() -> None:
    async with open_test_hub() as test_hub:
        peer = test_hub.connect()
        peer.server_side.close(CloseCode.POLICY_VIOLATION, "no spam")
        with pytest.raises(
            AssertionError,
            match=re.escape(
                "expected Message('n', 1), but the connection closed first "
                "(code 1008 POLICY_VIOLATION, reason 'no spam')"
            ),
        ):
            await peer.expect("n", 1)


async def test_expect_closed_passes_only_for_the_close_with_the_right_code(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_hub() as test_hub:
        peer = test_hub.connect()
        with pytest.raises(AssertionError, match="within 1s, but it is open"):
            await peer.expect_closed(timeout=1)
        test_hub.hub.broadcast(Message("late"))
        peer.server_side.close(4321, "custom")
        with pytest.raises(
            AssertionError,
            match=re.escape("closed with code 1000 NORMAL, but received Message('late', None)"),
        ):
            await peer.expect_closed(CloseCode.NORMAL)
        with pytest.raises(
            AssertionError,
            match=re.escape("but it was closed with code 4321, reason 'custom'"),
        ):
            await peer.expect_closed(CloseCode.NORMAL)
        assert await peer.expect_closed() == 4321


async def test_the_client_reads_up_to_the_close_then_sees_the_code() -> None:
    async with open_test_hub() as test_hub:
        peer = test_hub.connect()
        for n in range(3):
            test_hub.hub.broadcast(Message("n", n))
        await trio.testing.wait_all_tasks_blocked()
        peer.server_side.close(CloseCode.NORMAL, "bye")
        assert await peer.wait_closed() == CloseCode.NORMAL
        assert peer.close_reason == "bye"
        assert payloads(peer.drain()) == [0, 1, 2]  # still readable after the close
        with pytest.raises(MemoryClientClosed, match=r"code 1000 NORMAL, reason 'bye'") as info:
            peer.receive_nowait()
        assert info.value.code == CloseCode.NORMAL
        with pytest.raises(MemoryClientClosed):
            await peer.send(Message("too late"))
        with pytest.raises(trio.WouldBlock):
            test_hub.connect().receive_nowait()


async def test_a_client_close_reaches_the_hub_and_discards_unread_messages() -> None:
    async with open_test_hub() as test_hub:
        peer = test_hub.connect()
        test_hub.hub.broadcast(Message("unread"))
        await trio.testing.wait_all_tasks_blocked()
        await peer.close(4100, "leaving")
        await peer.server_side.wait_closed()
        assert peer.server_side.close_code == 4100
        assert peer.server_side.close_reason == "leaving"
        # As with trio-websocket: after a local close, unread messages are gone.
        with pytest.raises(MemoryClientClosed) as info:
            await peer.receive()
        assert info.value.code == 4100
        assert test_hub.hub.statistics().clients == 0
        assert "close_code=4100" in repr(peer)


async def test_binary_frames_are_closed_with_1003() -> None:
    async with open_test_hub() as test_hub:
        peer = test_hub.connect()
        await peer.send(b"\x00\x01")
        await peer.expect_closed(CloseCode.UNSUPPORTED_DATA)


@pytest.mark.parametrize("capacity", [-1, 1.5, "3"])
def test_memory_connection_rejects_bad_capacities(capacity: object) -> None:
    with pytest.raises(ValueError, match=r"wire_capacity must be an int >= 0 or math\.inf"):
        memory_connection(wire_capacity=capacity)  # type: ignore[arg-type]


# ------------------------------------------------------ RecordingBroadcaster


def test_recording_broadcaster_records_in_order_and_matches_any() -> None:
    recorder = RecordingBroadcaster(listeners=3)
    assert recorder.broadcast(Message("a", {"id": 1, "at": 12.5})) == 3
    assert recorder.publish("room", Message("b", 2)) == 3
    recorder.assert_broadcast("a", {"id": 1, "at": ANY})
    recorder.assert_published("room", "b", 2)
    recorder.assert_sent_exactly(
        SentMessage(None, Message("a", {"id": 1, "at": 12.5})),
        SentMessage("room", Message("b", 2)),
    )
    assert recorder.broadcasts == [Message("a", {"id": 1, "at": 12.5})]
    assert recorder.published("room") == [Message("b", 2)]
    assert "2 recorded" in repr(recorder)
    recorder.clear()
    recorder.assert_nothing_sent()


def test_recording_broadcaster_failures_show_what_was_sent() -> None:
    recorder = RecordingBroadcaster()
    with pytest.raises(AssertionError, match="nothing was sent"):
        recorder.assert_broadcast("a")
    recorder.broadcast(Message("a", 1))
    recorder.publish("room", Message("b", 2))
    sent = "sent were:\n  1. broadcast Message('a', 1)\n  2. publish on 'room' Message('b', 2)"
    with pytest.raises(AssertionError, match=re.escape("a broadcast of Message('a', 2); " + sent)):
        recorder.assert_broadcast("a", 2)
    with pytest.raises(AssertionError, match=re.escape("Message('a', 1) published on 'room'")):
        recorder.assert_published("room", "a", 1)  # it was broadcast, not published
    with pytest.raises(AssertionError, match=re.escape("expected nothing sent; " + sent)):
        recorder.assert_nothing_sent()
    with pytest.raises(
        AssertionError,
        match=re.escape("expected exactly:\n  1. broadcast Message('a', 1)\n" + sent),
    ):
        recorder.assert_sent_exactly(SentMessage(None, Message("a", 1)))


def test_the_assertions_take_a_message_as_a_newcomer_writes_it() -> None:
    recorder = RecordingBroadcaster()
    recorder.broadcast(Message("announcement", "up"))
    recorder.publish("news", Message("headline", {"id": 7}))
    recorder.assert_broadcast(Message("announcement", "up"))
    recorder.assert_published("news", Message("headline", {"id": 7}))
    recorder.assert_sent_exactly(
        Message("announcement", "up"), SentMessage("news", Message("headline", {"id": 7}))
    )
    # A Message that was not sent fails as its type-and-payload twin does.
    with pytest.raises(
        AssertionError, match=re.escape("a broadcast of Message('announcement', 'down')")
    ):
        recorder.assert_broadcast(Message("announcement", "down"))
    with pytest.raises(
        AssertionError, match=re.escape("Message('headline', {'id': 8}) published on 'news'")
    ):
        recorder.assert_published("news", Message("headline", {"id": 8}))
    with pytest.raises(
        AssertionError, match=re.escape("2. broadcast Message('headline', {'id': 7})\nsent were")
    ):
        recorder.assert_sent_exactly(Message("announcement", "up"), Message("headline", {"id": 7}))


def test_the_assertions_refuse_a_mixed_call_and_show_the_right_one() -> None:
    recorder = RecordingBroadcaster()
    recorder.broadcast(Message("announcement", "up"))
    right = (
        "assert_broadcast(Message('announcement', 'up')) or assert_broadcast('announcement', 'up')"
    )
    with pytest.raises(TypeError, match=re.escape(right)):
        recorder.assert_broadcast(Message("announcement", "up"), "up")
    with pytest.raises(TypeError, match=re.escape("assert_published('news', Message('a', 1))")):
        recorder.assert_published("news", Message("a", 1), 1)
    with pytest.raises(
        TypeError, match=re.escape("assert_broadcast(Message('announcement', 'up'))")
    ):
        recorder.assert_broadcast({"type": "announcement"})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"SentMessage\(topic, message\)"):
        recorder.assert_sent_exactly(("news", Message("a")))  # type: ignore[arg-type]


async def test_expect_takes_a_message_too() -> None:
    with trio.fail_after(5):
        async with open_test_hub() as test_hub:
            client = test_hub.connect()
            test_hub.hub.broadcast(Message("price", {"eur": 3}))
            test_hub.hub.broadcast(Message("price", {"eur": 4}))
            assert await client.expect(Message("price", {"eur": 3})) == Message("price", {"eur": 3})
            with pytest.raises(
                AssertionError, match=re.escape("expected: Message('price', {'eur': 5})")
            ):
                await client.expect(Message("price", {"eur": 5}))
            with pytest.raises(TypeError, match=re.escape("expect(Message('price', 1))")):
                await client.expect(Message("price", 1), 1)


def test_recording_broadcaster_rejects_what_a_hub_rejects() -> None:
    recorder = RecordingBroadcaster()
    with pytest.raises(TypeError, match=r"expected a trio_hub\.Message, got dict"):
        recorder.broadcast({"type": "a"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty str"):
        recorder.publish("", Message("a"))
    recorder.assert_nothing_sent()


# ------------------------------------------------------------ the fixtures


async def test_the_fixtures_in_this_suite(
    hub: Hub, hub_client: HubClientFactory, recording_broadcaster: RecordingBroadcaster
) -> None:
    # The plugin is active here too, through the entry point (see test_plugin.py).
    reader = hub_client(topics=["t"], identity="me")
    assert hub.clients == (reader.server_side,)
    assert hub.publish("t", Message("m", 1)) == 1
    await reader.expect("m", 1)
    recording_broadcaster.publish("t", Message("m", 1))
    recording_broadcaster.assert_published("t", "m", 1)
