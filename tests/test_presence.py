"""Presence on one node (DESIGN guarantee 12): entries, join/leave events, the wire protocol.

The multi-node half, on real redis-server processes, is tests/test_presence_redis.py.
"""

from __future__ import annotations

import sys
from functools import partial
from unittest.mock import ANY

import pytest
import trio
import trio.testing
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from trio_websocket import open_websocket_url

from trio_hub import (
    MAX_PRESENCE_INFO_SIZE,
    Admission,
    Client,
    HandshakeRequest,
    Message,
    PresenceInfo,
    open_hub,
    protocol_handler,
    serve_hub,
)
from trio_hub.testing import MemoryClient, open_test_hub

from .test_cli import LIMIT, client, receive, request, running_server

# ------------------------------------------------------------------ library


async def test_presence_lists_one_entry_per_connection_with_identity_and_info() -> None:
    async with open_test_hub(presence=True) as test_hub:
        hub = test_hub.hub
        alice = test_hub.connect(identity="alice", info={"name": "Alice"}, topics=["room"])
        test_hub.connect(identity="alice", topics=["room"])  # her second tab
        test_hub.connect(identity=object(), topics=["room"])  # not a str: not shown
        test_hub.connect(topics=["elsewhere"])
        entries = await hub.presence("room")
        assert [(entry.identity, entry.info) for entry in entries] == [
            ("alice", {"name": "Alice"}),
            ("alice", None),
            (None, None),
        ]
        assert entries[0].client_id == str(alice.server_side.id)
        assert len({entry.client_id for entry in entries}) == 3
        assert hub.local_presence("room") == entries
        assert await hub.presence("nobody-here") == []
        statistics = hub.statistics()
        assert statistics.presence_entries == 4
        assert statistics.presence_joins == 4
        assert statistics.presence_leaves == 0


async def test_an_identity_with_a_subject_shows_its_subject() -> None:
    class Grant:  # what connection tokens attach: the token's sub as .subject
        subject = "alice"

    class NoSubject:
        subject = 42

    async with open_test_hub(presence=True) as test_hub:
        test_hub.connect(identity=Grant(), topics=["room"])
        test_hub.connect(identity=NoSubject(), topics=["room"])
        await test_hub.assert_present("room", "alice", None)


async def test_subscribing_twice_is_one_entry_and_one_join() -> None:
    async with open_test_hub(presence_events=True) as test_hub:
        watcher = test_hub.connect(topics=["room"])
        bob = test_hub.connect(identity="bob")
        bob.server_side.subscribe("room")
        bob.server_side.subscribe("room")
        await watcher.expect_join("room", identity="bob")
        await test_hub.assert_present("room", None, "bob")
        bob.server_side.unsubscribe("room")
        bob.server_side.unsubscribe("room")
        await watcher.expect_leave("room", identity="bob")
        await test_hub.assert_present("room", None)
        await trio.testing.wait_all_tasks_blocked()
        assert watcher.drain() == []
        assert bob.drain() == []  # no event about itself
        assert test_hub.hub.statistics().presence_joins == 2


async def test_join_and_leave_reach_the_other_subscribers_of_that_topic_only() -> None:
    async with open_test_hub(presence_events=True) as test_hub:
        alice = test_hub.connect(identity="alice", topics=["room"])
        outsider = test_hub.connect(identity="carol", topics=["lobby"])
        bob = test_hub.connect(identity="bob", info=["b"], topics=["room"])
        entry = await alice.expect_join("room", identity="bob", info=["b"])
        assert entry.client_id == str(bob.server_side.id)
        await bob.close()
        assert await alice.expect_leave("room", identity="bob") == entry
        await trio.testing.wait_all_tasks_blocked()
        assert outsider.drain() == []
        assert test_hub.hub.statistics().presence_leaves == 1


async def test_every_way_of_leaving_sends_a_leave(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Virtual time: the evicted client's close waits for close_timeout.
    async with open_test_hub(presence_events=True, queue_size=1) as test_hub:
        hub = test_hub.hub
        watcher = test_hub.connect(topics=["room"], wire_capacity=1000)
        removed = test_hub.connect(identity="removed", topics=["room"])
        slow = test_hub.connect(identity="slow", topics=["room"], wire_capacity=0)
        for _ in range(2):
            await watcher.expect_join("room")
        removed.server_side.close()
        await watcher.expect_leave("room", identity="removed")
        # The slow client reads nothing, and its queue holds one message (the
        # leave above): the next publication evicts it, and it leaves.
        hub.publish("room", Message("one"))
        await watcher.expect("one")
        await watcher.expect_leave("room", identity="slow")
        assert slow.server_side.closed
        await test_hub.assert_present("room", None)


async def test_a_join_that_evicts_the_last_other_subscriber_keeps_the_topic(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Virtual time: the evicted client's close waits for close_timeout.
    async with open_test_hub(presence_events=True, queue_size=1) as test_hub:
        hub = test_hub.hub
        slow = test_hub.connect(topics=["room"], wire_capacity=0)
        await trio.testing.wait_all_tasks_blocked()
        hub.publish("room", Message("fills the queue"))
        newcomer = test_hub.connect(identity="new", topics=["room"])  # its join evicts slow
        assert slow.server_side.closed
        assert hub.topics() == {"room"}
        hub.publish("room", Message("hello"))
        await newcomer.expect("hello")
        await test_hub.assert_present("room", "new")


async def test_a_leave_that_evicts_the_last_subscriber_removes_the_topic_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Virtual time: the evicted client's close waits for close_timeout.
    async with open_test_hub(presence_events=True, queue_size=1) as test_hub:
        hub = test_hub.hub
        leaving = test_hub.connect(identity="leaving", topics=["room"])
        slow = test_hub.connect(topics=["room"], wire_capacity=0)
        await trio.testing.wait_all_tasks_blocked()
        await leaving.expect_join("room")
        hub.publish("room", Message("fills the slow queue"))
        await leaving.expect("fills the slow queue")
        leaving.server_side.unsubscribe("room")  # its leave evicts slow
        assert slow.server_side.closed
        assert hub.topics() == frozenset()
        await test_hub.assert_present("room")
        assert hub.statistics().clients_per_topic == {}


async def test_presence_events_can_be_chosen_per_topic() -> None:
    async with open_test_hub(presence_events=lambda topic: topic.startswith("room:")) as test_hub:
        watcher = test_hub.connect(topics=["room:1", "news"])
        test_hub.connect(identity="bob", topics=["room:1", "news"])
        await watcher.expect_join("room:1", identity="bob")
        await trio.testing.wait_all_tasks_blocked()
        assert watcher.drain() == []
        # Presence itself is tracked for every topic.
        await test_hub.assert_present("news", None, "bob")


async def test_a_raising_events_predicate_is_logged_and_sends_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def events(topic: str) -> bool:
        raise RuntimeError("boom")

    async with open_test_hub(presence_events=events) as test_hub:
        watcher = test_hub.connect(topics=["room"])
        bob = test_hub.connect(identity="bob", topics=["room"])
        await bob.close()
        await bob.wait_closed()
        await trio.testing.wait_all_tasks_blocked()
        assert watcher.drain() == []
        assert not watcher.server_side.closed
        await test_hub.assert_present("room", None)
        assert test_hub.hub.statistics().errors == 0  # logged; no client ended
    assert "presence_events predicate raised" in caplog.text


async def test_presence_is_off_unless_asked_for() -> None:
    async with open_test_hub() as test_hub:
        assert not test_hub.hub.presence_enabled
        with pytest.raises(RuntimeError, match="presence=True"):
            await test_hub.hub.presence("room")
        with pytest.raises(RuntimeError, match="presence=True"):
            test_hub.hub.local_presence("room")
        with pytest.raises(TypeError, match="presence_events"):
            async with open_hub(presence_events="yes"):  # type: ignore[arg-type]
                pass


async def test_bad_info_and_topics_are_refused() -> None:
    async with open_test_hub(presence=True) as test_hub:
        with pytest.raises(ValueError, match="at most 1024"):
            test_hub.connect(info="x" * MAX_PRESENCE_INFO_SIZE)
        with pytest.raises(ValueError, match="JSON"):
            test_hub.connect(info={"n": float("nan")})
        assert len(test_hub.hub) == 0
        with pytest.raises(ValueError, match="non-empty"):
            await test_hub.hub.presence("")


async def test_shutdown_sends_no_leave_events_to_departing_clients() -> None:
    async with open_test_hub(presence_events=True) as test_hub:
        alice = test_hub.connect(identity="alice", topics=["room"])
        test_hub.connect(identity="bob", topics=["room"])
        await alice.expect_join("room", identity="bob")
    messages, code = await alice.receive_until_closed()
    assert (messages, code) == ([], 1001)
    assert test_hub.hub.statistics().presence_entries == 0


def test_presence_info_round_trips_through_json() -> None:
    entry = PresenceInfo("7", "alice", {"name": "Alice"})
    assert entry.to_json() == {"id": "7", "identity": "alice", "info": {"name": "Alice"}}
    assert PresenceInfo._from_json(entry.to_json()) == entry
    for bad in (None, {"id": 7}, {"id": "7", "identity": 3}):
        with pytest.raises(ValueError, match="not a presence entry"):
            PresenceInfo._from_json(bad)  # type: ignore[arg-type]


# ----------------------------------------------------- a model of one node


class OneNodePresence(RuleBasedStateMachine):
    """Subscribe, unsubscribe and disconnect at random; presence and events follow a model.

    The model: who is on each topic (client index -> identity), and for each
    connected client, the events it must have received since the last check.
    """

    TOPICS = ("a", "b")

    def __init__(self) -> None:
        super().__init__()
        self.clients: dict[int, MemoryClient] = {}
        self.identities: dict[int, str] = {}
        self.members: dict[str, set[int]] = {topic: set() for topic in self.TOPICS}
        self.expected: dict[int, list[tuple[str, str, str]]] = {}
        self.steps: list[tuple[str, int, str | None]] = []

    @rule(identity=st.sampled_from(["alice", "bob"]))
    def connect(self, identity: str) -> None:
        index = len(self.identities)
        self.identities[index] = identity
        self.steps.append(("connect", index, identity))
        self.expected[index] = []

    @precondition(lambda self: self.expected)
    @rule(data=st.data(), topic=st.sampled_from(TOPICS))
    def subscribe(self, data: st.DataObject, topic: str) -> None:
        index = data.draw(st.sampled_from(sorted(self.expected)))
        self.steps.append(("subscribe", index, topic))
        if index not in self.members[topic]:
            self._event("join", topic, index)
            self.members[topic].add(index)

    @precondition(lambda self: self.expected)
    @rule(data=st.data(), topic=st.sampled_from(TOPICS))
    def unsubscribe(self, data: st.DataObject, topic: str) -> None:
        index = data.draw(st.sampled_from(sorted(self.expected)))
        self.steps.append(("unsubscribe", index, topic))
        if index in self.members[topic]:
            self.members[topic].discard(index)
            self._event("leave", topic, index)

    @precondition(lambda self: self.expected)
    @rule(data=st.data())
    def disconnect(self, data: st.DataObject) -> None:
        index = data.draw(st.sampled_from(sorted(self.expected)))
        self.steps.append(("disconnect", index, None))
        del self.expected[index]
        for topic in self.TOPICS:
            if index in self.members[topic]:
                self.members[topic].discard(index)
                self._event("leave", topic, index)

    def _event(self, kind: str, topic: str, index: int) -> None:
        for other in self.members[topic]:
            if other != index and other in self.expected:
                self.expected[other].append((kind, topic, self.identities[index]))

    @invariant()
    def replay_matches_the_model(self) -> None:
        # Replaying every step on a fresh hub keeps each example independent
        # and deterministic (no shared event loop between Hypothesis steps).
        trio.run(self._replay)

    async def _replay(self) -> None:
        async with open_test_hub(presence_events=True, ping_interval=None) as test_hub:
            clients: dict[int, MemoryClient] = {}
            received: dict[int, list[tuple[str, str, str]]] = {}
            for action, index, argument in self.steps:
                if action == "connect":
                    clients[index] = test_hub.connect(identity=argument, wire_capacity=1000)
                    received[index] = []
                elif action == "subscribe":
                    assert argument is not None
                    clients[index].server_side.subscribe(argument)
                elif action == "unsubscribe":
                    assert argument is not None
                    clients[index].server_side.unsubscribe(argument)
                else:
                    await clients[index].close()
                    await clients[index].server_side.wait_closed()
            await trio.testing.wait_all_tasks_blocked()
            for index, client in clients.items():
                if index not in self.expected:
                    continue
                for message in client.drain():
                    payload = message.payload
                    assert isinstance(payload, dict)
                    entry = payload["client"]
                    assert isinstance(entry, dict)
                    received[index].append(
                        (message.type, str(payload["topic"]), str(entry["identity"]))
                    )
            # Everything a client must have seen, and nothing else, in order.
            for index, events in self.expected.items():
                assert received[index] == events, (index, self.steps)
            for topic, members in self.members.items():
                await test_hub.assert_present(topic, *(self.identities[i] for i in members))
                ids = {entry.client_id for entry in await test_hub.hub.presence(topic)}
                assert ids == {str(clients[i].server_side.id) for i in members}


def test_one_node_presence_follows_the_model() -> None:
    run_state_machine_as_test(
        OneNodePresence, settings=settings(max_examples=40, stateful_step_count=12, deadline=None)
    )


# ------------------------------------------------------------ wire protocol


async def test_the_wire_protocol_answers_presence_and_sends_events() -> None:
    async with open_test_hub(on_message=protocol_handler, presence_events=True) as test_hub:
        alice = test_hub.connect(identity="alice", info={"name": "Alice"})
        await alice.send(Message("subscribe", {"topic": "room"}))
        await alice.expect("subscribed", {"topic": "room"})
        bob = test_hub.connect(identity="bob")
        await bob.send(Message("subscribe", {"topic": "room"}))
        await bob.expect("subscribed", {"topic": "room"})
        bob_entry = {"id": str(bob.server_side.id), "identity": "bob", "info": None}
        await alice.expect("join", {"topic": "room", "client": bob_entry})
        await bob.send(Message("presence", {"topic": "room"}))
        await bob.expect(
            "presence",
            {
                "topic": "room",
                "clients": [
                    {"id": ANY, "identity": "alice", "info": {"name": "Alice"}},
                    bob_entry,
                ],
            },
        )
        await bob.send(Message("unsubscribe", {"topic": "room"}))
        await bob.expect("unsubscribed", {"topic": "room"})
        await alice.expect("leave", {"topic": "room", "client": bob_entry})


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"topic": "elsewhere"}, "not_subscribed"),
        ({"topic": ""}, "invalid_payload"),
        ({"topic": "room", "extra": 1}, "invalid_payload"),
        ("room", "invalid_payload"),
    ],
)
async def test_bad_presence_requests_get_an_error_and_the_connection_stays(
    payload: object, code: str
) -> None:
    async with open_test_hub(on_message=protocol_handler, presence=True) as test_hub:
        client = test_hub.connect(topics=["room"])
        await client.send(Message("presence", payload))  # type: ignore[arg-type]
        await client.expect("error", {"code": code, "detail": ANY})
        await client.send(Message("echo", 1))
        await client.expect("echo", 1)


async def test_presence_requests_on_a_hub_without_presence_get_an_error() -> None:
    async with open_test_hub(on_message=protocol_handler) as test_hub:
        client = test_hub.connect(topics=["room"])
        await client.send(Message("presence", {"topic": "room"}))
        await client.expect("error", {"code": "presence_disabled", "detail": ANY})


async def test_serve_hub_attaches_info_from_an_admission() -> None:
    async def authenticate(request: HandshakeRequest) -> Admission:
        return Admission(request.query["user"], {"name": request.query["user"].title()})

    arrived: list[Client] = []
    hello = trio.Event()

    async def on_message(client: Client, message: Message) -> None:
        arrived.append(client)
        hello.set()

    with trio.fail_after(10):
        async with (
            open_hub(presence=True, on_message=on_message) as hub,
            trio.open_nursery() as nursery,
        ):
            server = await nursery.start(
                partial(serve_hub, hub, "127.0.0.1", 0, authenticate=authenticate)
            )
            async with open_websocket_url(f"{server.url}?user=alice") as connection:
                await connection.send_message(Message("hello").text)
                await hello.wait()
                [client] = arrived
                assert client.identity == "alice"
                assert client.info == {"name": "Alice"}
                hub.subscribe(client, "room")
                assert [entry.to_json() for entry in await hub.presence("room")] == [
                    {"id": str(client.id), "identity": "alice", "info": {"name": "Alice"}}
                ]
            await server.aclose()


# --------------------------------------------------------------------- CLI


async def test_the_cli_tracks_presence_with_the_presence_flag() -> None:
    with trio.fail_after(LIMIT):
        async with (
            running_server("--presence") as server,
            client(server.port) as alice,
            client(server.port) as bob,
        ):
            await request(alice, "subscribe", {"topic": "room"})
            subscribed = await receive(alice)
            assert (subscribed["type"], subscribed["payload"]["topic"]) == ("subscribed", "room")
            await request(bob, "subscribe", {"topic": "room"})
            subscribed = await receive(bob)
            assert (subscribed["type"], subscribed["payload"]["topic"]) == ("subscribed", "room")
            join = await receive(alice)
            assert join["type"] == "join"
            bob_entry = join["payload"]["client"]
            assert bob_entry == {"id": ANY, "identity": None, "info": None}
            await request(bob, "presence", {"topic": "room"})
            reply = await receive(bob)
            assert reply["type"] == "presence"
            assert len(reply["payload"]["clients"]) == 2
            assert bob_entry in reply["payload"]["clients"]
        # Without the flag, the server says so.
        async with running_server() as server, client(server.port) as alice:
            await request(alice, "subscribe", {"topic": "room"})
            await receive(alice)
            await request(alice, "presence", {"topic": "room"})
            assert (await receive(alice))["payload"]["code"] == "presence_disabled"


async def test_the_cli_help_documents_the_presence_options() -> None:
    with trio.fail_after(30):
        result = await trio.run_process(
            [sys.executable, "-m", "trio_hub", "serve", "--help"], capture_stdout=True
        )
    text = " ".join(result.stdout.decode().split())
    assert "--presence track who is subscribed" in text
    assert "--redis-presence-ttl SECONDS" in text
    assert "(default: 10.0)" in text[text.index("--redis-presence-ttl SECONDS with") :]
