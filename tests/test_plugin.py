"""The pytest plugin, and the how-to's example test, each run in a fresh pytest session.

``pytester`` runs pytest in a temporary directory, in a new process, as a user's
suite runs (in this process trio_hub is already imported, which would defeat the
inner session's assertion rewriting). The plugin must load from the ``pytest11``
entry point alone: the inner sessions have no conftest that mentions it.
"""

from __future__ import annotations

import importlib.metadata
import inspect
from pathlib import Path
from typing import Final

import pytest

from trio_hub import testing

pytest_plugins = ["pytester"]

EXAMPLES: Final = Path(__file__).resolve().parent.parent / "docs" / "examples"

INI: Final = """
[pytest]
trio_mode = true
filterwarnings = error
xfail_strict = true
"""


@pytest.fixture
def session(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(INI)
    return pytester


def test_the_plugin_is_registered_through_the_pytest11_entry_point() -> None:
    (entry_point,) = [
        entry
        for entry in importlib.metadata.entry_points(group="pytest11")
        if entry.name == "trio_hub"
    ]
    assert entry_point.value == "trio_hub._pytest_plugin"


def test_hub_client_factory_matches_connect() -> None:
    # The fixture is TestHub.connect; its declared type must say the same.
    factory = inspect.signature(testing.HubClientFactory.__call__).parameters
    connect = inspect.signature(testing.TestHub.connect).parameters
    assert [(p.name, p.kind, p.default) for p in factory.values()] == [
        (p.name, p.kind, p.default) for p in connect.values()
    ]


def test_the_fixtures_work_in_a_fresh_session(session: pytest.Pytester) -> None:
    session.makepyfile(
        """
        import math

        from trio_hub import CloseCode, Hub, Message
        from trio_hub.testing import MemoryClient

        left_open: list[MemoryClient] = []

        async def test_hub_client_connects_to_hub(hub: Hub, hub_client) -> None:
            news = hub_client(topics=["news"], identity="ada")
            everyone = hub_client(wire_capacity=math.inf)
            assert hub.clients == (news.server_side, everyone.server_side)
            assert news.server_side.identity == "ada"
            hub.publish("news", Message("headline", 1))
            hub.broadcast(Message("all", 2))
            await news.expect("headline", 1)
            await news.expect("all", 2)
            await everyone.expect("all", 2)
            left_open.append(everyone)

        async def test_the_hub_was_shut_down_after_the_test() -> None:
            (everyone,) = left_open
            assert await everyone.expect_closed() == CloseCode.GOING_AWAY

        async def test_each_test_gets_its_own_hub(hub: Hub) -> None:
            assert len(hub) == 0
            assert hub.statistics().registrations == 0

        def test_recording_broadcaster(recording_broadcaster) -> None:
            recording_broadcaster.broadcast(Message("a", 1))
            recording_broadcaster.assert_broadcast("a", 1)
        """
    )
    result = session.runpytest_subprocess()
    result.assert_outcomes(passed=4)


def test_hub_settings_configure_the_hub_fixture(session: pytest.Pytester) -> None:
    session.makepyfile(
        """
        import pytest

        from trio_hub import CloseCode, Hub, Message, SlowClientPolicy

        async def shout(client, message):
            client.send(Message("heard", message.payload))

        @pytest.fixture
        def hub_settings():
            return {"on_message": shout, "queue_size": 1}

        async def test_settings_reach_the_hub(hub: Hub, hub_client) -> None:
            browser = hub_client()
            await browser.send(Message("say", "hi"))
            await browser.expect("heard", "hi")
            slow = hub_client(wire_capacity=0)
            hub.broadcast(Message("n", 1))  # queued: the wire holds nothing
            hub.broadcast(Message("n", 2))  # queue_size=1 is full: evicted
            assert slow.server_side.close_code == CloseCode.SLOW_CLIENT
        """
    )
    session.runpytest_subprocess().assert_outcomes(passed=1)


def test_a_failing_expectation_reads_well_in_pytest_output(session: pytest.Pytester) -> None:
    session.makepyfile(
        """
        from trio_hub import Message

        async def test_wrong_message(hub, hub_client) -> None:
            browser = hub_client()
            hub.broadcast(Message("price", {"eur": 3}))
            await browser.expect("price", {"eur": 4})
        """
    )
    result = session.runpytest_subprocess()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*AssertionError: received the wrong message",
            "*expected: Message('price', {'eur': 4})",
            "*received: Message('price', {'eur': 3})",
        ]
    )


def test_the_plugin_can_be_switched_off(session: pytest.Pytester) -> None:
    session.makepyfile(
        """
        def test_uses_a_fixture(recording_broadcaster) -> None:
            pass
        """
    )
    result = session.runpytest_subprocess("-p", "no:trio_hub")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'recording_broadcaster' not found*"])


def copy_examples(session: pytest.Pytester) -> None:
    for name in ("chat_app.py", "test_chat_app.py"):
        (session.path / name).write_text((EXAMPLES / name).read_text(encoding="utf-8"))


def test_the_how_to_example_passes(session: pytest.Pytester) -> None:
    copy_examples(session)
    result = session.runpytest_subprocess()
    result.assert_outcomes(passed=6)


def test_the_how_to_example_catches_a_broken_app(session: pytest.Pytester) -> None:
    # The example's tests are worth showing only if they fail when the app is
    # wrong: here "say" goes to everyone instead of the room.
    copy_examples(session)
    app = session.path / "chat_app.py"
    source = app.read_text()
    broken = source.replace(
        'client.hub.publish(room_topic(room), Message("said", said))',
        'client.hub.broadcast(Message("said", said))',
    )
    assert broken != source
    app.write_text(broken)
    result = session.runpytest_subprocess()
    result.assert_outcomes(passed=5, failed=1)
    result.stdout.fnmatch_lines(["*test_a_message_reaches_everyone_in_the_room_and_no_one_else*"])
