"""History and recovery on one node, the memory history (DESIGN guarantee 8).

The state machine at the end drives a hub through publications on several
topics, disconnections and reconnections (with the last position, a stale one,
one from the future or another epoch), trims and the passing of the TTL, with
a model that says exactly what each client must hold. The trio loop runs in a
thread of its own under a MockClock that only moves when a rule moves it, and
each rule runs in it with trio.from_thread: Hypothesis drives, trio executes.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from unittest.mock import ANY

import pytest
import trio
import trio.lowlevel
import trio.testing
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from trio_websocket import ConnectionClosed

from trio_hub import (
    CloseCode,
    HistoryError,
    HistoryPolicy,
    HistoryResult,
    Message,
    StreamPosition,
    open_hub,
    protocol_handler,
    serve_hub,
)
from trio_hub.testing import MemoryClient, TestHub, open_test_hub

from .realws import open_client

T = TypeVar("T")


def news(n: int, topic: str = "news") -> Message:
    return Message("message", {"topic": topic, "n": n})


def offsets(messages: list[Message]) -> list[int]:
    result = []
    for message in messages:
        assert isinstance(message.payload, dict)
        offset = message.payload["offset"]
        assert isinstance(offset, int)
        result.append(offset)
    return result


async def test_a_position_of_an_empty_topic_stays_valid() -> None:
    async with open_test_hub(history_size=10) as test_hub:
        hub = test_hub.hub
        before = await hub.position("news")
        assert before.offset == 0
        hub.publish("news", news(1))
        assert (await hub.position("news")) == StreamPosition(1, before.epoch)
        client = test_hub.connect()
        result = await test_hub.recover(client, "news", before)
        assert result.recovered
        assert [p.offset for p in result.publications] == [1]
        assert offsets(await _drain(client)) == [1]


async def test_reconnect_gets_exactly_what_was_missed_then_live() -> None:
    async with open_test_hub(history_size=10) as test_hub:
        hub = test_hub.hub
        client = test_hub.connect()
        await test_hub.recover(client, "news")
        hub.publish("news", news(1))
        assert offsets(await _drain(client)) == [1]
        await client.close()
        hub.publish("news", news(2))
        hub.publish("news", news(3))
        client, results = await client.reconnect()
        assert results["news"].recovered
        hub.publish("news", news(4))
        got = await _drain(client)
        assert offsets(got) == [2, 3, 4]
        assert [m.payload["n"] for m in got] == [2, 3, 4]  # type: ignore[index, call-overload]
        statistics = hub.statistics()
        assert statistics.recoveries == 1
        assert statistics.recovery_failures == 0


async def test_the_announcement_comes_before_the_replay() -> None:
    async with open_test_hub(history_size=10) as test_hub:
        hub = test_hub.hub
        start = await hub.position("news")
        hub.publish("news", news(1))
        client = test_hub.connect()

        def announce(result: HistoryResult) -> Message:
            return Message("subscribed", {"recovered": result.recovered})

        await hub.recover(client.server_side, "news", start, announce=announce)
        await client.expect("subscribed", {"recovered": True})
        await client.expect("message", {"topic": "news", "n": 1, "offset": 1})


@pytest.mark.parametrize(
    ("case", "position"),
    [
        ("wrong epoch", lambda p: StreamPosition(p.offset - 2, p.epoch + "x")),
        ("from the future", lambda p: StreamPosition(p.offset + 1, p.epoch)),
        ("trimmed", lambda p: StreamPosition(0, p.epoch)),
    ],
)
async def test_an_unrecoverable_position_replays_nothing(
    case: str, position: Callable[[StreamPosition], StreamPosition]
) -> None:
    async with open_test_hub(history_size=3) as test_hub:
        hub = test_hub.hub
        for n in range(5):
            hub.publish("news", news(n))
        now = await hub.position("news")
        client = test_hub.connect()
        result = await test_hub.recover(client, "news", position(now))
        assert not result.recovered, case
        assert result.publications == ()
        assert result.position == now
        hub.publish("news", news(5))
        assert offsets(await _drain(client)) == [6]
        assert hub.statistics().recovery_failures == 1


async def test_the_history_keeps_the_newest_size_publications() -> None:
    async with open_test_hub(history_size=3) as test_hub:
        hub = test_hub.hub
        for n in range(5):
            hub.publish("news", news(n))
        result = await hub.history("news")
        assert [p.offset for p in result.publications] == [3, 4, 5]
        assert hub.statistics().history_sizes == {"news": 3}
        epoch = result.position.epoch
        assert (await hub.history("news", since=StreamPosition(2, epoch))).recovered
        assert not (await hub.history("news", since=StreamPosition(1, epoch))).recovered
        limited = await hub.history("news", since=StreamPosition(2, epoch), limit=2)
        assert [p.offset for p in limited.publications] == [3, 4]


async def test_publications_expire_after_the_ttl(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_hub(history_size=10, history_ttl=60) as test_hub:
        hub = test_hub.hub
        start = await hub.position("news")
        hub.publish("news", news(1))
        await trio.sleep(30)
        hub.publish("news", news(2))
        await trio.sleep(31)
        # The first expired, the second is still kept.
        result = await hub.history("news")
        assert [p.offset for p in result.publications] == [2]
        assert not (await hub.history("news", since=start)).recovered
        assert (await hub.history("news", since=StreamPosition(1, start.epoch))).recovered
        await trio.sleep(30)
        assert (await hub.history("news")).publications == ()
        assert hub.statistics().history_sizes == {"news": 0}


async def test_recovering_a_subscribed_topic_sends_nothing_twice() -> None:
    async with open_test_hub(history_size=10) as test_hub:
        hub = test_hub.hub
        client = test_hub.connect()
        start = await test_hub.recover(client, "news")
        hub.publish("news", news(1))
        await test_hub.recover(client, "news", start.position)
        hub.publish("news", news(2))
        # Subscribed once: 1 live, then 1 again as asked, then 2 once.
        assert offsets(await _drain(client)) == [1, 1, 2]


async def test_publish_with_position_and_errors() -> None:
    async with open_test_hub(history=lambda t: HistoryPolicy(5) if t != "chat" else None) as th:
        hub = th.hub
        position = await hub.publish_with_position("news", news(1))
        assert position.offset == 1
        assert hub.has_history("news")
        assert not hub.has_history("chat")
        with pytest.raises(HistoryError, match="no history"):
            await hub.publish_with_position("chat", news(1))
        with pytest.raises(HistoryError, match="no history"):
            await hub.history("chat")
        with pytest.raises(HistoryError, match="no history"):
            await hub.recover(th.connect().server_side, "chat")
        with pytest.raises(ValueError, match="object payload"):
            hub.publish("news", Message("m", [1, 2]))
        with pytest.raises(ValueError, match="'offset'"):
            hub.publish("news", Message("m", {"offset": 3}))
        # A topic without history is untouched.
        assert hub.publish("chat", Message("m", [1])) == 0


async def test_the_number_of_topics_with_history_is_bounded() -> None:
    async with open_test_hub(history_size=2, max_history_topics=2) as test_hub:
        hub = test_hub.hub
        first = await hub.publish_with_position("a", news(1, "a"))
        hub.publish("b", news(1, "b"))
        hub.publish("c", news(1, "c"))  # "a" published least recently: it goes
        assert set(hub.statistics().history_sizes) == {"b", "c"}
        again = await hub.position("a")
        assert again.epoch != first.epoch
        assert not (await hub.history("a", since=first)).recovered


async def test_subscriptions_do_not_push_out_the_history_of_busy_topics() -> None:
    async with open_test_hub(history_size=5, max_history_topics=2) as test_hub:
        hub = test_hub.hub
        busy = await hub.publish_with_position("busy", news(1, "busy"))
        client = test_hub.connect()
        for n in range(10):  # reading positions creates no history
            await test_hub.recover(client, f"quiet-{n}")
        assert set(hub.statistics().history_sizes) == {"busy"}
        assert (await hub.history("busy", since=StreamPosition(0, busy.epoch))).recovered


async def test_the_wire_protocol_recovers_and_reports() -> None:
    async with open_test_hub(on_message=protocol_handler, history_size=10) as test_hub:
        hub = test_hub.hub
        bob = test_hub.connect()
        await bob.send(Message("subscribe", {"topic": "news"}))
        subscribed = await bob.expect("subscribed", {"topic": "news", "offset": 0, "epoch": ANY})
        epoch = subscribed.payload["epoch"]  # type: ignore[call-overload, index]
        hub.publish("news", news(1))
        hub.publish("news", news(2))
        await bob.expect("message", {"topic": "news", "n": 1, "offset": 1})
        await bob.expect("message", {"topic": "news", "n": 2, "offset": 2})
        again = test_hub.connect()
        await again.send(
            Message("subscribe", {"topic": "news", "recover": {"offset": 1, "epoch": epoch}})
        )
        await again.expect(
            "subscribed", {"topic": "news", "offset": 2, "epoch": epoch, "recovered": True}
        )
        await again.expect("message", {"topic": "news", "n": 2, "offset": 2})
        await again.send(
            Message("subscribe", {"topic": "news", "recover": {"offset": 1, "epoch": "x"}})
        )
        await again.expect(
            "subscribed", {"topic": "news", "offset": 2, "epoch": epoch, "recovered": False}
        )
        hub.publish("news", news(3))
        await again.expect("message", {"topic": "news", "n": 3, "offset": 3})
        assert again.pending == 0


@pytest.mark.parametrize(
    "recover",
    [
        5,
        {"offset": 1},
        {"offset": -1, "epoch": "e"},
        {"offset": True, "epoch": "e"},
        {"offset": 1, "epoch": 2},
        {"offset": 1, "epoch": "e", "extra": 0},
    ],
)
async def test_a_malformed_recover_is_an_invalid_payload(recover: object) -> None:
    async with open_test_hub(on_message=protocol_handler, history_size=10) as test_hub:
        client = test_hub.connect()
        await client.send(Message("subscribe", {"topic": "news", "recover": recover}))  # type: ignore[dict-item]
        await client.expect("error", {"code": "invalid_payload", "detail": ANY})
        assert client.server_side.topics == frozenset()
        await client.send(Message("echo", "still open"))
        await client.expect("echo", "still open")


async def test_recover_on_a_topic_without_history_is_not_recovered() -> None:
    async with open_test_hub(on_message=protocol_handler) as test_hub:
        client = test_hub.connect()
        await client.send(
            Message("subscribe", {"topic": "news", "recover": {"offset": 3, "epoch": "e"}})
        )
        await client.expect("subscribed", {"topic": "news", "recovered": False})
        test_hub.hub.publish("news", Message("message", {"topic": "news", "data": 1}))
        await client.expect("message", {"topic": "news", "data": 1})


@pytest.mark.parametrize(
    ("settings_", "error"),
    [
        ({"history_ttl": 5}, "needs history_size"),
        ({"history_size": 0}, "history size"),
        ({"history_size": 5, "history_ttl": 0}, "ttl"),
        ({"history_size": 5, "history": lambda t: None}, "not both"),
        ({"history_size": 5, "max_history_topics": 0}, "max_history_topics"),
    ],
)
async def test_bad_history_settings(settings_: dict[str, Any], error: str) -> None:
    with pytest.raises((ValueError, TypeError), match=error):
        async with open_hub(**settings_):
            pass  # pragma: no cover


def test_stream_position_checks_its_fields() -> None:
    with pytest.raises(ValueError, match="offset"):
        StreamPosition(-1, "e")
    with pytest.raises(ValueError, match="offset"):
        StreamPosition(True, "e")
    with pytest.raises(TypeError, match="epoch"):
        StreamPosition(1, 5)  # type: ignore[arg-type]


async def _drain(client: MemoryClient) -> list[Message]:
    await trio.testing.wait_all_tasks_blocked()
    return client.drain()


# ------------------------------------------------------------- state machine

TOPICS = ("a", "b")
SIZE = 4
TTL = 100.0
MAX_CLIENTS = 3


class _TrioThread:
    """A trio loop in a thread, with a test hub, that runs what it is given."""

    def __init__(self) -> None:
        self.clock = trio.testing.MockClock(rate=0)
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "the trio thread did not start"

    def _run(self) -> None:
        trio.run(self._main, clock=self.clock)

    async def _main(self) -> None:
        self._stop = trio.Event()
        self.token = trio.lowlevel.current_trio_token()
        async with open_test_hub(history_size=SIZE, history_ttl=TTL) as test_hub:
            self.test_hub = test_hub
            self._ready.set()
            await self._stop.wait()

    def run(self, function: Callable[..., Awaitable[T]], *args: object) -> T:
        return trio.from_thread.run(function, *args, trio_token=self.token)

    def close(self) -> None:
        trio.from_thread.run_sync(self._stop.set, trio_token=self.token)
        self._thread.join(10)
        assert not self._thread.is_alive()


class _ClientModel:
    def __init__(self) -> None:
        self.connection: MemoryClient | None = None
        # Every offset received on each topic, across connections, in order.
        self.feed: dict[str, list[int]] = {topic: [] for topic in TOPICS}
        self.expected: dict[str, list[int]] = {topic: [] for topic in TOPICS}


class MemoryRecovery(RuleBasedStateMachine):
    """Publish, disconnect, reconnect, trim, expire: each client holds what the model says."""

    def __init__(self) -> None:
        super().__init__()
        self.trio = _TrioThread()
        self.test_hub: TestHub = self.trio.test_hub
        self.published: dict[str, int] = dict.fromkeys(TOPICS, 0)
        # The oldest offset the history still holds, per topic.
        self.oldest: dict[str, int] = dict.fromkeys(TOPICS, 1)
        self.epochs: dict[str, str] = {}
        self.clients: list[_ClientModel] = []

    def teardown(self) -> None:
        self.trio.close()

    # ------------------------------------------------------------- rules

    @precondition(lambda self: len(self.clients) < MAX_CLIENTS)
    @rule()
    def connect(self) -> None:
        model = _ClientModel()

        async def connect() -> None:
            connection = self.test_hub.connect(wire_capacity=math.inf)
            for topic in TOPICS:
                result = await self.test_hub.recover(connection, topic)
                self.epochs.setdefault(topic, result.position.epoch)
                assert result.position == StreamPosition(self.published[topic], self.epochs[topic])
            model.connection = connection

        self.trio.run(connect)
        self.clients.append(model)

    @rule(topic=st.sampled_from(TOPICS), count=st.integers(1, 3))
    def publish(self, topic: str, count: int) -> None:
        async def publish() -> None:
            for _ in range(count):
                self.test_hub.hub.publish(topic, news(self.published[topic] + 1, topic))
                self.published[topic] += 1
                self.oldest[topic] = max(self.oldest[topic], self.published[topic] - SIZE + 1)
                for model in self.clients:
                    if model.connection is not None:
                        model.expected[topic].append(self.published[topic])
            await trio.lowlevel.checkpoint()

        self.trio.run(publish)

    @rule(data=st.data())
    def disconnect(self, data: st.DataObject) -> None:
        connected = [m for m in self.clients if m.connection is not None]
        if not connected:
            return
        model = data.draw(st.sampled_from(connected))
        assert model.connection is not None
        self.trio.run(model.connection.close)
        model.connection = None

    @rule(
        data=st.data(),
        kind=st.sampled_from(["last", "stale", "future", "wrong epoch"]),
        back=st.integers(1, 6),
    )
    def reconnect(self, data: st.DataObject, kind: str, back: int) -> None:
        gone = [m for m in self.clients if m.connection is None and any(m.feed.values())]
        gone += [m for m in self.clients if m.connection is None and not any(m.feed.values())]
        if not gone:
            return
        model = data.draw(st.sampled_from(gone))

        async def reconnect() -> None:
            connection = self.test_hub.connect(wire_capacity=math.inf)
            for topic in TOPICS:
                last = model.feed[topic][-1] if model.feed[topic] else 0
                epoch = self.epochs[topic]
                if kind == "stale":
                    position = StreamPosition(max(last - back, 0), epoch)
                elif kind == "future":
                    position = StreamPosition(self.published[topic] + back, epoch)
                elif kind == "wrong epoch":
                    position = StreamPosition(last, epoch + "!")
                else:
                    position = StreamPosition(last, epoch)
                top = self.published[topic]
                recoverable = (
                    position.epoch == epoch
                    and position.offset <= top
                    and (position.offset == top or self.oldest[topic] <= position.offset + 1)
                )
                result = await self.test_hub.recover(connection, topic, position)
                assert result.recovered == recoverable, (topic, position, self.oldest)
                assert result.position == StreamPosition(top, epoch)
                replay = list(range(position.offset + 1, top + 1)) if recoverable else []
                assert [p.offset for p in result.publications] == replay
                model.expected[topic].extend(replay)
            model.connection = connection

        self.trio.run(reconnect)

    @rule(topic=st.sampled_from(TOPICS), keep=st.integers(0, SIZE))
    def trim(self, topic: str, keep: int) -> None:
        async def trim() -> None:
            history = self.test_hub.hub._history
            assert history is not None
            history.trim(topic, keep)
            await trio.lowlevel.checkpoint()

        self.trio.run(trim)
        self.oldest[topic] = max(self.oldest[topic], self.published[topic] - keep + 1)

    @rule()
    def expire(self) -> None:
        self.trio.clock.jump(TTL)
        for topic in TOPICS:
            self.oldest[topic] = self.published[topic] + 1

    # -------------------------------------------------------- invariants

    @invariant()
    def every_client_holds_exactly_what_it_should(self) -> None:
        async def drain() -> None:
            await trio.testing.wait_all_tasks_blocked()
            for model in self.clients:
                if model.connection is None:
                    continue
                for message in model.connection.drain():
                    payload = message.payload
                    assert isinstance(payload, dict)
                    topic, offset = payload["topic"], payload["offset"]
                    assert isinstance(topic, str)
                    assert isinstance(offset, int)
                    assert payload["n"] == offset  # the right publication
                    model.feed[topic].append(offset)

        self.trio.run(drain)
        for model in self.clients:
            assert model.feed == model.expected


TestMemoryRecovery = MemoryRecovery.TestCase
TestMemoryRecovery.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)


# ------------------------------------------------------------- real sockets


async def test_a_client_that_reconnects_during_a_burst_gets_everything_once() -> None:
    """Over real sockets: the wire protocol's recover, mid-burst, twice."""
    total = 600
    with trio.fail_after(30):
        async with (
            open_hub(on_message=protocol_handler, history_size=total) as hub,
            trio.open_nursery() as nursery,
        ):
            server = await nursery.start(serve_hub, hub, "127.0.0.1", 0)
            received: list[int] = []
            position: dict[str, Any] | None = None
            burst_started = trio.Event()
            burst_done = trio.Event()
            missed = 0  # publications made while the client was away

            published = 0

            def publish() -> None:
                nonlocal published
                if published < total:
                    published += 1
                    hub.publish("news", Message("message", {"topic": "news", "data": published}))

            # The burst runs at most 40 publications ahead of the reader, so
            # that some are still to come whenever the connection drops.
            credit_send, credit_receive = trio.open_memory_channel[None](math.inf)
            for _ in range(40):
                credit_send.send_nowait(None)

            async def burst() -> None:
                await burst_started.wait()
                while published < total:
                    await credit_receive.receive()
                    publish()
                burst_done.set()

            nursery.start_soon(burst)
            for session in range(3):
                async with open_client(server.port) as connection:
                    payload: dict[str, Any] = {"topic": "news"}
                    if position is not None:
                        payload["recover"] = position
                    await connection.send_message(
                        json.dumps({"type": "subscribe", "payload": payload})
                    )
                    subscribed = json.loads(await connection.get_message())
                    assert subscribed["type"] == "subscribed"
                    if position is not None:
                        assert subscribed["payload"]["recovered"] is True
                        missed += subscribed["payload"]["offset"] - position["offset"]
                    epoch = subscribed["payload"]["epoch"]
                    burst_started.set()
                    # Read a part, then the server drops the connection with
                    # frames queued and in flight; read what still arrives.
                    want = total if session == 2 else (session + 1) * total // 4
                    try:
                        while not received or received[-1] < total:
                            if session < 2 and received and received[-1] >= want:
                                for client in hub.clients:
                                    client.close(CloseCode.INTERNAL_ERROR, "killed")
                                # The burst goes on while the client is away.
                                for _ in range(20):
                                    publish()
                            frame = json.loads(await connection.get_message())
                            assert frame["type"] == "message"
                            assert frame["payload"]["offset"] == frame["payload"]["data"]
                            received.append(frame["payload"]["data"])
                            credit_send.send_nowait(None)
                    except ConnectionClosed:
                        assert session < 2
                    position = {"offset": received[-1], "epoch": epoch}
            await burst_done.wait()
            assert received == list(range(1, total + 1))
            assert hub.statistics().recoveries == 2
            assert missed > 0
            await server.aclose()


async def test_only_messages_are_published_on_a_topic_with_history() -> None:
    async with open_test_hub(history_size=5) as test_hub:
        with pytest.raises(TypeError, match="Message"):
            test_hub.hub.publish("news", {"not": "a message"})  # type: ignore[arg-type]
