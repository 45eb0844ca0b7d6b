"""Property tests: the hub against a simple model, checked after every step.

Hypothesis draws a hub configuration and a sequence of operations (register,
unregister, disconnect, subscribe, unsubscribe, broadcast, publish, send, "client
reads k messages"), always ending with a shutdown. Each example runs in its own
``trio.run`` under a mock clock (hypothesis-trio is not used: it is broken against
current Hypothesis). After every step the invariants of DESIGN guarantees 1 to 3
are checked:

* ordering: what each client has read is, in order, the messages meant for it
  (a prefix under EVICT; an ordered subsequence with counted gaps under the drop
  policies), each at most once, nothing from before it registered or after it left;
* no loss for clients that keep up: a client that never had ``queue_size`` unread
  messages was never dropped from or evicted; one that had ``wire + queue_size``
  unread was;
* accounting: for every client, meant = delivered + dropped + discarded + queued;
  the hub's totals equal the sums; client and topic counts match the model;
* shutdown: every client still registered reads everything it was sent (minus
  counted drops) and is closed with 1001; no task is left behind.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from trio_hub import Client, CloseCode, Hub, Message, SlowClientPolicy, open_hub
from trio_hub.testing import MemoryClient, MemoryClientClosed, memory_connection

TOPICS = ("a", "b")
WIRES = (0, 1, 3, math.inf)


@dataclass
class Model:
    wire: float
    client: Client
    peer: MemoryClient
    topics: set[str] = field(default_factory=set)
    meant: list[int] = field(default_factory=list)
    read: list[int] = field(default_factory=list)
    registered: bool = True
    # The most messages this client ever had unread when a new one was meant
    # for it, and whether that count ever reached wire + queue_size.
    max_unread_before: int = 0
    must_have_overflowed: bool = False


Op = tuple[str, int, int]

operations = st.lists(
    st.one_of(
        st.tuples(st.just("register"), st.integers(0, len(WIRES) - 1), st.integers(0, 3)),
        st.tuples(st.just("unregister"), st.integers(0, 7), st.just(0)),
        st.tuples(st.just("disconnect"), st.integers(0, 7), st.just(0)),
        st.tuples(st.just("subscribe"), st.integers(0, 7), st.integers(0, 1)),
        st.tuples(st.just("unsubscribe"), st.integers(0, 7), st.integers(0, 1)),
        st.tuples(st.just("broadcast"), st.just(0), st.just(0)),
        st.tuples(st.just("publish"), st.integers(0, 1), st.just(0)),
        st.tuples(st.just("send"), st.integers(0, 7), st.just(0)),
        st.tuples(st.just("read"), st.integers(0, 7), st.integers(1, 6)),
    ),
    max_size=60,
)


class Runner:
    def __init__(self, hub: Hub, queue_size: int, policy: SlowClientPolicy) -> None:
        self.hub = hub
        self.queue_size = queue_size
        self.policy = policy
        self.models: list[Model] = []
        self.next_id = 0
        self.broadcasts = 0
        self.publishes = 0

    def live(self) -> list[Model]:
        return [model for model in self.models if model.registered]

    def pick(self, index: int) -> Model | None:
        live = self.live()
        return live[index % len(live)] if live else None

    def meant_for(self, models: list[Model]) -> Message:
        message = Message("n", self.next_id)
        for model in models:
            unread = len(model.meant) - len(model.read) - model.client.statistics().dropped
            model.max_unread_before = max(model.max_unread_before, unread)
            if unread >= model.wire + self.queue_size:
                model.must_have_overflowed = True
            model.meant.append(self.next_id)
        self.next_id += 1
        return message

    async def step(self, op: Op) -> None:
        kind, first, second = op
        hub = self.hub
        if kind == "register":
            transport, peer = memory_connection(wire_capacity=WIRES[first])
            topics = {topic for bit, topic in enumerate(TOPICS) if second & (1 << bit)}
            client = hub.register(transport, topics=sorted(topics))
            self.models.append(Model(WIRES[first], client, peer, topics))
        elif kind in ("broadcast", "publish"):
            if kind == "broadcast":
                targets = self.live()
                assert hub.broadcast(self.meant_for(targets)) == len(targets)
                self.broadcasts += 1
            else:
                topic = TOPICS[first]
                targets = [model for model in self.live() if topic in model.topics]
                assert hub.publish(topic, self.meant_for(targets)) == len(targets)
                self.publishes += 1
        else:
            model = self.pick(first)
            if model is None:
                return
            if kind == "unregister":
                model.registered = False
                model.client.close()
            elif kind == "disconnect":
                model.registered = False
                await model.peer.close(CloseCode.NORMAL)
            elif kind == "subscribe":
                model.client.subscribe(TOPICS[second])
                model.topics.add(TOPICS[second])
            elif kind == "unsubscribe":
                model.client.unsubscribe(TOPICS[second])
                model.topics.discard(TOPICS[second])
            elif kind == "send":
                model.client.send(self.meant_for([model]))
            elif kind == "read":
                for _ in range(second):
                    try:
                        message = model.peer.receive_nowait()
                    except (trio.WouldBlock, MemoryClientClosed):
                        break
                    assert isinstance(message.payload, int)
                    model.read.append(message.payload)
        await trio.testing.wait_all_tasks_blocked()
        self.sync_evictions()
        self.check()

    def sync_evictions(self) -> None:
        for model in self.models:
            if model.registered and model.client.closed:
                # Only the policy may remove a client the model did not remove.
                assert self.policy is SlowClientPolicy.EVICT
                assert model.client.close_code == CloseCode.SLOW_CLIENT
                model.registered = False

    def check(self) -> None:
        hub = self.hub
        totals = {"delivered": 0, "dropped": 0, "discarded": 0, "queued": 0}
        for model in self.models:
            stats = model.client.statistics()
            # Ordering: an ordered subsequence of what was meant, each once.
            assert is_subsequence(model.read, model.meant), (model.read, model.meant)
            if self.policy is SlowClientPolicy.EVICT:
                assert stats.dropped == 0
                assert model.read == model.meant[: len(model.read)]
            # Accounting, per client.
            assert stats.delivered + stats.dropped + stats.discarded + stats.queued == len(
                model.meant
            )
            assert stats.queued <= self.queue_size
            # No loss for clients that keep up; loss where it must happen.
            overflowed = stats.dropped > 0 or model.client.close_code == CloseCode.SLOW_CLIENT
            if model.max_unread_before < self.queue_size:
                assert not overflowed, model
            if model.must_have_overflowed:
                assert overflowed, model
            if model.registered:
                assert stats.topics == model.topics
                assert stats.discarded == 0
            for key in totals:
                totals[key] += getattr(stats, key)
        hub_stats = hub.statistics()
        assert hub_stats.clients == len(self.live()) == len(hub.clients)
        assert hub_stats.deliveries == totals["delivered"]
        assert hub_stats.drops == totals["dropped"]
        assert hub_stats.discarded == totals["discarded"]
        assert hub_stats.queued == totals["queued"]
        assert hub_stats.messages_broadcast == self.broadcasts
        assert hub_stats.messages_published == self.publishes
        expected_topics = {
            topic: count
            for topic in TOPICS
            if (count := sum(topic in model.topics for model in self.live()))
        }
        assert dict(hub_stats.clients_per_topic) == expected_topics
        # Presence (guarantee 12, one node) lists exactly the subscribers.
        for topic in TOPICS:
            listed = [entry.client_id for entry in hub.local_presence(topic)]
            subscribed = [str(m.client.id) for m in self.live() if topic in m.topics]
            assert sorted(listed) == sorted(subscribed), topic
        assert hub_stats.presence_entries == sum(expected_topics.values())

    async def shutdown(self) -> None:
        async def read_to_the_end(model: Model) -> None:
            while True:
                try:
                    message = await model.peer.receive(timeout=math.inf)
                except MemoryClientClosed:
                    return
                assert isinstance(message.payload, int)
                model.read.append(message.payload)

        still_registered = self.live()
        async with trio.open_nursery() as nursery:
            for model in self.models:
                nursery.start_soon(read_to_the_end, model)
            await self.hub.aclose()
        assert self.hub.statistics().clients == 0
        for model in still_registered:
            stats = model.client.statistics()
            # Everything accepted before shutdown was written before the close.
            assert model.client.close_code == CloseCode.GOING_AWAY
            assert model.peer.close_code == CloseCode.GOING_AWAY
            assert stats.discarded == 0
            assert stats.queued == 0
            assert len(model.read) == len(model.meant) - stats.dropped
            assert is_subsequence(model.read, model.meant)


def is_subsequence(read: list[int], meant: list[int]) -> bool:
    remaining = iter(meant)
    return all(any(item == candidate for candidate in remaining) for item in read)


def count_tasks() -> int:
    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(
            walk(child) for nursery in task.child_nurseries for child in nursery.child_tasks
        )

    root = trio.lowlevel.current_root_task()
    assert root is not None
    return walk(root)


@given(
    queue_size=st.integers(1, 4),
    policy=st.sampled_from(SlowClientPolicy),
    ops=operations,
)
def test_hub_matches_the_model(queue_size: int, policy: SlowClientPolicy, ops: list[Op]) -> None:
    async def main() -> None:
        baseline = count_tasks()
        # presence=True without events: it must not change what clients receive.
        async with open_hub(queue_size=queue_size, on_slow_client=policy, presence=True) as hub:
            runner = Runner(hub, queue_size, policy)
            for op in ops:
                await runner.step(op)
            await runner.shutdown()
        assert count_tasks() == baseline

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
