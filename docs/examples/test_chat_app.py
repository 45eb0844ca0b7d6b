"""Tests of chat_app.py, written with trio_hub's testing kit (see docs/howto/testing.rst).

They need pytest-trio, with ``trio_mode = true`` in the pytest configuration.
"""

from __future__ import annotations

from unittest.mock import ANY

import chat_app
import pytest
import trio
import trio.testing

from trio_hub import CloseCode, Hub, Message
from trio_hub.testing import (
    HubClientFactory,
    HubSettings,
    RecordingBroadcaster,
    open_test_hub,
)


@pytest.fixture
def hub_settings() -> HubSettings:
    # Configures the ``hub`` fixture: the app's handler, and the open_hub
    # settings the app uses in production.
    return {"on_message": chat_app.on_message, "queue_size": 16}


async def test_a_message_reaches_everyone_in_the_room_and_no_one_else(
    hub_client: HubClientFactory,
) -> None:
    ada = hub_client(identity="ada")
    bob = hub_client(identity="bob")
    eve = hub_client(identity="eve")
    for browser in (ada, bob):
        await browser.send(Message("join", "lobby"))
        await browser.expect("joined", "lobby")
    await eve.send(Message("join", "attic"))
    await eve.expect("joined", "attic")

    await ada.send(Message("say", {"room": "lobby", "text": "hi"}))
    said = {"room": "lobby", "user": "ada", "text": "hi"}
    await ada.expect("said", said)
    await bob.expect("said", said)
    assert eve.drain() == []


async def test_saying_something_outside_a_room_is_an_error(hub_client: HubClientFactory) -> None:
    browser = hub_client()
    await browser.send(Message("say", {"room": "lobby", "text": "hi"}))
    await browser.expect("error", {"code": "not_in_room", "detail": ANY})
    await browser.send("{not json")  # the hub itself answers invalid JSON
    await browser.expect("error", {"code": "invalid_json", "detail": ANY})


async def test_announcements_reach_every_browser(hub: Hub, hub_client: HubClientFactory) -> None:
    browsers = [hub_client() for _ in range(3)]
    assert chat_app.announce(hub, "maintenance at noon") == 3
    for browser in browsers:
        await browser.expect("announcement", "maintenance at noon")


def test_announce_with_a_recording_broadcaster(
    recording_broadcaster: RecordingBroadcaster,
) -> None:
    # No hub at all: code that only broadcasts takes a BroadcastSender.
    chat_app.announce(recording_broadcaster, "hello")
    recording_broadcaster.assert_broadcast("announcement", "hello")


async def test_a_browser_that_stops_reading_is_evicted_and_the_room_goes_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # open_test_hub gives a hub of its own, with other settings than the
    # fixture's; autojump_clock makes any waiting take no real time.
    async with open_test_hub(on_message=chat_app.on_message, queue_size=4) as test_hub:
        reader = test_hub.connect(identity="reader")
        stuck = test_hub.connect(identity="stuck", wire_capacity=2)
        for browser in (reader, stuck):
            await browser.send(Message("join", "lobby"))
            await browser.expect("joined", "lobby")
        for n in range(10):
            await reader.send(Message("say", {"room": "lobby", "text": n}))
            await reader.expect("said", {"room": "lobby", "user": "reader", "text": n})
        # The stuck browser holds a prefix of what was said: what fit on its wire
        # (2 frames) and what the hub was writing when it was evicted. Then it
        # sees why it was cut off.
        held, code = await stuck.receive_until_closed()
        said = [{"room": "lobby", "user": "reader", "text": n} for n in range(10)]
        assert len(held) >= 2
        assert [message.payload for message in held] == said[: len(held)]
        assert code == CloseCode.SLOW_CLIENT
        assert test_hub.hub.statistics().evictions == 1


async def test_a_browser_that_stops_answering_pings_is_closed_with_4001(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_hub(ping_interval=20, pong_timeout=10) as test_hub:
        browser = test_hub.connect()
        browser.auto_pong = False  # as a browser whose network went away
        start = trio.current_time()
        await browser.expect_closed(CloseCode.KEEPALIVE_TIMEOUT, timeout=60)
        # The first ping after 20 s, unanswered for 10 s: 30 s, none of it real.
        assert trio.current_time() - start == pytest.approx(30)
