"""The browser page served on ``GET /``, in a real headless Chromium.

Chromium is Debian's ``/usr/bin/chromium`` (never a browser download), driven by
Playwright's synchronous API against ``python -m trio_hub serve`` running as a
subprocess. Every wait has a time limit, and the server is always killed.
"""

from __future__ import annotations

import json
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import pytest
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright
from websockets.sync.client import connect as ws_connect

from .redis_server import RedisServer

CHROMIUM: Final = "/usr/bin/chromium"
CHROMIUM_ARGS: Final = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS: Final = 15_000  # for any one thing to appear on a page
LISTENING: Final = re.compile(r"listening on ws://127\.0\.0\.1:(\d+)/")


class ServerProcess:
    """``python -m trio_hub serve`` in a subprocess, with its stderr read by a thread."""

    def __init__(self, *args: str, port: int = 0) -> None:
        command = [sys.executable, "-m", "trio_hub", "serve", "--host", "127.0.0.1"]
        self.process = subprocess.Popen(
            [*command, "--port", str(port), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.port = int(self.wait_for_line(LISTENING)[1])

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for_line(self, pattern: re.Pattern[str] | str, timeout: float = 15) -> re.Match[str]:
        regex = re.compile(pattern)
        for line in self.lines:
            if match := regex.search(line):
                return match
        while True:
            new = self._queue.get(timeout=timeout)  # queue.Empty fails the test
            if new is None:
                raise AssertionError(f"server exited without logging {regex.pattern!r}")
            self.lines.append(new)
            if match := regex.search(new):
                return match

    def stop(self, signum: int = signal.SIGTERM) -> int:
        self.process.send_signal(signum)
        return self.process.wait(timeout=15)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=15)
        self._reader.join(timeout=15)
        assert self.process.stderr is not None
        self.process.stderr.close()


@contextmanager
def running_server(*args: str, port: int = 0) -> Iterator[ServerProcess]:
    server = ServerProcess(*args, port=port)
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, timeout=30_000
        )
        try:
            yield launched
        finally:
            launched.close()


def open_page(browser: Browser, url: str, errors: list[str]) -> Page:
    page = browser.new_page(viewport={"width": 1100, "height": 720})
    page.set_default_timeout(WAIT_MS)
    # A script error on the page fails the test.
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url)
    return page


def expect_connected(page: Page) -> None:
    expect(page.locator("#state")).to_have_attribute("data-state", "connected", timeout=WAIT_MS)


def feed_entry(page: Page, kind: str, text: str) -> None:
    entry = page.locator(f'#feed li[data-type="{kind}"] .body', has_text=text)
    expect(entry).to_have_count(1, timeout=WAIT_MS)


def subscribe(page: Page, topic: str) -> None:
    page.fill("#topic-input", topic)
    page.click("#subscribe")
    feed_entry(page, "subscribed", topic)
    expect(page.locator(f'#topics li[data-topic="{topic}"]')).to_have_count(1)


def publish(page: Page, topic: str, text: str) -> None:
    page.fill("#publish-topic", topic)
    page.fill("#publish-input", text)
    page.click("#publish-send")


def test_two_pages_broadcast_subscribe_publish_and_reconnect(
    browser: Browser, tmp_path: Path
) -> None:
    errors: list[str] = []
    server = ServerProcess()
    try:
        url = f"http://127.0.0.1:{server.port}/"
        first = open_page(browser, url, errors)
        second = open_page(browser, url, errors)
        expect_connected(first)
        expect_connected(second)
        server.wait_for_line(r"client #2 connected")

        # A broadcast from the box reaches both pages' feeds.
        first.fill("#broadcast-input", "hello from the first page")
        first.click("#broadcast-send")
        for page in (first, second):
            feed_entry(page, "broadcast", "hello from the first page")
        expect(first.locator("#listener-count")).to_contain_text("2 client(s)")
        expect(first.locator("#broadcast-input")).to_have_value("")

        # Topics: only the subscriber gets the publication.
        subscribe(second, "news")
        publish(first, "news", "headline one")
        feed_entry(second, "message", "[news] headline one")
        feed_entry(first, "publishResult", "[news] reached 1 subscriber(s)")
        expect(first.locator('#feed li[data-type="message"]')).to_have_count(0)

        screenshot = tmp_path / "page.png"
        second.screenshot(path=str(screenshot))
        assert screenshot.read_bytes().startswith(b"\x89PNG")

        # The server goes away: both pages see 1001 and say so...
        assert server.stop() == 0
        for page in (first, second):
            expect(page.locator("#state")).to_have_attribute("data-state", "disconnected")
            # The feed keeps the close code; the state line does not: the page
            # retries within a second, and each refused attempt shows 1006.
            feed_entry(page, "disconnected", "1001 server shutting down")
            expect(page.locator("#broadcast-send")).to_be_disabled()
        server.kill()

        # ...and reconnect once it is back on the same port, renewing subscriptions.
        server = ServerProcess(port=server.port)
        expect_connected(first)
        expect_connected(second)
        # Renewed by the page itself: "subscribed" is now in its feed twice.
        expect(second.locator('#feed li[data-type="subscribed"]')).to_have_count(2)
        publish(first, "news", "headline two")
        feed_entry(second, "message", "[news] headline two")
        second.click("#clear-feed")
        expect(second.locator("#feed li")).to_have_count(0)
    finally:
        server.kill()
    assert errors == []


def test_the_page_passes_its_token_on(browser: Browser) -> None:
    errors: list[str] = []
    with running_server("--auth-token", "letmein") as server:
        base = f"http://127.0.0.1:{server.port}/"
        refused = open_page(browser, base, errors)
        expect(refused.locator("#state")).to_have_attribute("data-state", "disconnected")
        server.wait_for_line(r"rejected \(401\)")

        admitted = open_page(browser, base + "?token=letmein", errors)
        expect_connected(admitted)
        admitted.fill("#broadcast-input", "<b>not bold</b>")
        admitted.press("#broadcast-input", "Enter")
        # Shown as text, never as markup: messages from others are data.
        feed_entry(admitted, "broadcast", "<b>not bold</b>")
        expect(admitted.locator("#feed b")).to_have_count(0)
        # The token is not shown on the page.
        expect(admitted.locator("body")).not_to_contain_text("letmein")
    assert errors == []


def test_a_forbidden_broadcast_is_shown_plainly_and_a_jwt_page_connects(
    browser: Browser,
) -> None:
    # A deployed server (an API key, a JWT secret): clients may not publish, and
    # the page says so in its feed, still connected; its token comes in ?token=.
    import jwt

    secret = "browser-test-secret-32-bytes-long!"
    token = jwt.encode({"sub": "pat", "topics": ["news"]}, secret, algorithm="HS256")
    errors: list[str] = []
    with running_server("--api-key", "k", "--jwt-secret", secret) as server:
        page = open_page(browser, f"http://127.0.0.1:{server.port}/?token={token}", errors)
        expect_connected(page)
        page.fill("#broadcast-input", "hello")
        page.click("#broadcast-send")
        feed_entry(page, "error", "forbidden: 'pat' may not broadcast on this server")
        subscribe(page, "news")
        expect_connected(page)


def publish_from_python(port: int, topic: str, numbers: range) -> None:
    """Publish each number on ``topic`` through the wire protocol, in order."""
    with ws_connect(f"ws://127.0.0.1:{port}/", open_timeout=15, close_timeout=5) as connection:
        for number in numbers:
            connection.send(
                json.dumps({"type": "publish", "payload": {"topic": topic, "data": number}})
            )
            assert json.loads(connection.recv(timeout=15))["type"] == "publishResult"


def shown_messages(page: Page) -> list[str]:
    return page.locator('#feed li[data-type="message"] .body').all_text_contents()


def test_the_page_recovers_what_it_missed_while_the_server_was_down(browser: Browser) -> None:
    """The server is killed mid-stream; the page reconnects and recovers from Redis."""
    errors: list[str] = []
    with RedisServer() as redis:
        args = ("--redis", redis.url, "--redis-prefix", "browser")
        server = ServerProcess(*args)
        try:
            page = open_page(browser, f"http://127.0.0.1:{server.port}/", errors)
            expect_connected(page)
            subscribe(page, "ticks")
            publish_from_python(server.port, "ticks", range(1, 41))
            expect(page.locator('#feed li[data-type="message"]')).to_have_count(40)
            # Killed without a goodbye: the page sees the connection drop.
            server.stop(signal.SIGKILL)
            server.kill()
            expect(page.locator("#state")).to_have_attribute("data-state", "disconnected")
            server = ServerProcess(*args, port=server.port)
            # Published while the page is still away (its backoff has not run out).
            publish_from_python(server.port, "ticks", range(41, 81))
            expect_connected(page)
            publish_from_python(server.port, "ticks", range(81, 101))
            expect(page.locator('#feed li[data-type="message"]')).to_have_count(100)
            # Every message once, in order, and no gap.
            assert shown_messages(page) == [f"[ticks] {n}" for n in range(1, 101)]
            expect(page.locator('#feed li[data-type="gap"]')).to_have_count(0)
            feed_entry(page, "subscribed", "recovered")
        finally:
            server.kill()
    assert errors == []


def test_the_page_shows_a_gap_it_cannot_recover(browser: Browser) -> None:
    """A memory hub restarted loses its history: the page says so plainly."""
    errors: list[str] = []
    server = ServerProcess()
    try:
        page = open_page(browser, f"http://127.0.0.1:{server.port}/", errors)
        expect_connected(page)
        subscribe(page, "ticks")
        publish_from_python(server.port, "ticks", range(1, 4))
        expect(page.locator('#feed li[data-type="message"]')).to_have_count(3)
        server.stop(signal.SIGKILL)
        server.kill()
        server = ServerProcess(port=server.port)
        publish_from_python(server.port, "ticks", range(4, 6))  # missed for good
        expect_connected(page)
        feed_entry(page, "gap", "cannot be recovered")
        publish_from_python(server.port, "ticks", range(6, 7))
        feed_entry(page, "message", "[ticks] 6")
        assert shown_messages(page) == [f"[ticks] {n}" for n in (1, 2, 3, 6)]
    finally:
        server.kill()


def presence_of(page: Page, topic: str) -> Locator:
    return page.locator(f'#presence > li[data-topic="{topic}"]')


def test_the_page_shows_who_is_on_each_subscribed_topic(browser: Browser) -> None:
    errors: list[str] = []
    with running_server("--presence") as server:
        url = f"http://127.0.0.1:{server.port}/"
        first = open_page(browser, url, errors)
        expect_connected(first)
        subscribe(first, "news")
        expect(presence_of(first, "news").locator(".count")).to_have_text("1 here")

        second = open_page(browser, url, errors)
        expect_connected(second)
        subscribe(second, "news")
        subscribe(second, "sport")
        # The second page asked; the first heard a join.
        for page in (first, second):
            expect(presence_of(page, "news").locator(".count")).to_have_text("2 here")
            expect(presence_of(page, "news").locator(".member")).to_have_count(2)
        feed_entry(first, "join", "[news] anonymous #")
        expect(presence_of(second, "sport").locator(".count")).to_have_text("1 here")
        expect(presence_of(first, "sport")).to_have_count(0)  # not subscribed there

        # Unsubscribing removes the topic from one's own list, and leaves the others'.
        second.fill("#topic-input", "news")
        second.click("#unsubscribe")
        expect(presence_of(second, "news")).to_have_count(0)
        expect(presence_of(first, "news").locator(".count")).to_have_text("1 here")
        # Closing the page is a leave too.
        second.click("#clear-feed")
        subscribe(second, "news")
        expect(presence_of(first, "news").locator(".count")).to_have_text("2 here")
        first.click("#clear-feed")
        second.close()
        expect(presence_of(first, "news").locator(".count")).to_have_text("1 here")
        feed_entry(first, "leave", "[news] anonymous #")
    assert errors == []


def test_the_page_says_when_the_server_does_not_track_presence(browser: Browser) -> None:
    errors: list[str] = []
    with running_server() as server:
        page = open_page(browser, f"http://127.0.0.1:{server.port}/", errors)
        expect_connected(page)
        subscribe(page, "news")
        expect(page.locator("#presence-section")).to_have_attribute("data-presence", "off")
        expect(page.locator('#feed li[data-type="error"]')).to_have_count(0)


BROADCAST_FROM_PAGE: Final = """
async ([url, payload]) => {
    const ws = new WebSocket(url);
    await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
    const received = new Promise((resolve) => {
        ws.onmessage = (event) => {
            const message = JSON.parse(event.data);
            if (message.type === "broadcast") resolve(message.payload);
        };
    });
    ws.send(JSON.stringify({type: "broadcast", payload: payload}));
    const echoed = await received;
    ws.close();
    return {extensions: ws.extensions, same: JSON.stringify(echoed) === JSON.stringify(payload)};
}
"""


def test_chromium_negotiates_compression_beside_plain_clients(browser: Browser) -> None:
    from websockets.sync.client import connect

    errors: list[str] = []
    payload = {"lines": [{"user": f"u{n % 5}", "text": f"line {n} of the page"} for n in range(80)]}
    with running_server() as server:
        url = f"ws://127.0.0.1:{server.port}/"
        with (
            connect(url, compression=None, proxy=None, open_timeout=10) as plain,
            connect(url, proxy=None, open_timeout=10) as compressing,
        ):
            for client in (plain, compressing):  # registered once answered
                client.send('{"type":"echo"}')
                client.recv(timeout=WAIT_MS / 1000)
            page = open_page(browser, f"http://127.0.0.1:{server.port}/", errors)
            result = page.evaluate(BROADCAST_FROM_PAGE, [url, payload])
            # Chromium always offers permessage-deflate; the hub accepted it.
            assert result["extensions"].startswith("permessage-deflate")
            assert "server_no_context_takeover" in result["extensions"]
            assert result["same"] is True
            expected = {"type": "broadcast", "payload": payload}
            assert json.loads(plain.recv(timeout=WAIT_MS / 1000)) == expected
            assert json.loads(compressing.recv(timeout=WAIT_MS / 1000)) == expected
            assert plain.protocol.extensions == []
            assert [e.name for e in compressing.protocol.extensions] == ["permessage-deflate"]
    assert errors == []
