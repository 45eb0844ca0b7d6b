"""The HTTP side of serve_hub: the publish API, /api/stats and /metrics, over real sockets.

Each test runs a hub and :func:`serve_hub` in-process on 127.0.0.1, port 0,
and sends real HTTP requests with httpx (or raw bytes, for what httpx will not
send), while a real WebSocket client stays connected and checks that it gets
exactly what was published, and that bad requests harm nobody.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import WebSocketConnection, open_websocket_url

from trio_hub import Hub, HubServer, open_hub, protocol_handler, serve_hub

LIMIT: Final = 20  # seconds, for any one test
KEY: Final = "the-api-key"
AUTH: Final = {"Authorization": f"Bearer {KEY}"}


@dataclass
class Running:
    server: HubServer
    http: httpx.AsyncClient

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"


@asynccontextmanager
async def running(**options: Any) -> AsyncIterator[Running]:
    options.setdefault("api_key", KEY)
    options.setdefault("metrics", "open")
    async with (
        open_hub(on_message=protocol_handler) as hub,
        trio.open_nursery() as nursery,
    ):
        server = await nursery.start(partial(serve_hub, hub, "127.0.0.1", 0, **options))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
            yield Running(server, http)
        await server.aclose()


@asynccontextmanager
async def subscriber(server: HubServer, *topics: str) -> AsyncIterator[WebSocketConnection]:
    async with open_websocket_url(server.url) as connection:
        for topic in topics:
            await send(connection, "subscribe", {"topic": topic})
            assert await receive(connection) == {"type": "subscribed", "payload": {"topic": topic}}
        if not topics:
            await send(connection, "echo", "ready")
            assert await receive(connection) == {"type": "echo", "payload": "ready"}
        try:
            yield connection
        finally:
            await trio.aclose_forcefully(connection._stream)


async def send(connection: WebSocketConnection, type: str, payload: Any = None) -> None:
    await connection.send_message(json.dumps({"type": type, "payload": payload}))


async def receive(connection: WebSocketConnection) -> Any:
    return json.loads(await connection.get_message())


async def raw(port: int, data: bytes, *, then: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """Send ``data`` as is; read the answer to EOF. ``then`` is sent after a 100 Continue."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        response = b""
        while data := await stream.receive_some():
            response += data
            if then and response.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"):
                response = response[len(b"HTTP/1.1 100 Continue\r\n\r\n") :]
                await stream.send_all(then)
                then = b""
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def post(path: str, body: bytes, *headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: x", f"Authorization: Bearer {KEY}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def error_of(response: httpx.Response) -> str:
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error", "detail"}
    assert body["detail"]
    code: str = body["error"]
    return code


# --------------------------------------------------------------------- API


async def test_publish_and_broadcast_reach_websocket_clients() -> None:
    with trio.fail_after(LIMIT):
        async with (
            running() as hub,
            subscriber(hub.server, "news") as reader,
            subscriber(hub.server) as other,
        ):
            response = await hub.http.post(
                "/api/publish", json={"topic": "news", "data": {"id": 1}}, headers=AUTH
            )
            assert response.status_code == 200
            assert response.headers["content-type"] == "application/json"
            assert response.json() == {"topic": "news", "listenerCount": 1}
            assert await receive(reader) == {
                "type": "message",
                "payload": {"topic": "news", "data": {"id": 1}},
            }
            # data may be left out, as in the wire protocol's publish.
            response = await hub.http.post("/api/publish", json={"topic": "none"}, headers=AUTH)
            assert response.json() == {"topic": "none", "listenerCount": 0}

            response = await hub.http.post(
                "/api/broadcast", json={"payload": [1, "é"]}, headers=AUTH
            )
            assert response.status_code == 200
            assert response.json() == {"listenerCount": 2}
            for connection in (reader, other):
                assert await receive(connection) == {"type": "broadcast", "payload": [1, "é"]}
            response = await hub.http.post("/api/broadcast", json={}, headers=AUTH)
            assert response.json() == {"listenerCount": 2}
            for connection in (reader, other):
                assert await receive(connection) == {"type": "broadcast", "payload": None}


async def test_stats_is_the_statistics_snapshot() -> None:
    with trio.fail_after(LIMIT):
        async with running() as hub, subscriber(hub.server, "a", "b"):
            await hub.http.post("/api/publish", json={"topic": "a", "data": 1}, headers=AUTH)
            response = await hub.http.get("/api/stats", headers=AUTH)
            assert response.status_code == 200
            stats = response.json()
            assert stats["clients"] == 1
            assert stats["clients_per_topic"] == {"a": 1, "b": 1}
            assert stats["messages_published"] == 1
            assert stats["backend"]["name"] == "memory"
            assert stats["backend"]["state"] == "local"
            assert stats["subjects"] == {}
            assert stats["handshake_refusals"] == {}
            assert stats["connections"] >= 2
            expected = set(type(hub.server.hub.statistics()).__dataclass_fields__)
            assert expected <= set(stats)


async def test_a_missing_or_wrong_key_is_401_and_publishes_nothing() -> None:
    with trio.fail_after(LIMIT):
        async with running() as hub, subscriber(hub.server, "t") as reader:
            for headers in [
                {},
                {"Authorization": "Bearer wrong"},
                {"Authorization": f"Basic {KEY}"},
                {"Authorization": f"Bearer{KEY}"},
                {"Authorization": f"Bearer {KEY}x"},
            ]:
                for path, body in [("/api/publish", {"topic": "t"}), ("/api/broadcast", {})]:
                    response = await hub.http.post(path, json=body, headers=headers)
                    assert response.status_code == 401, (path, headers)
                    assert error_of(response) == "unauthorized"
                    assert response.headers["www-authenticate"].startswith("Bearer")
                response = await hub.http.get("/api/stats", headers=headers)
                assert response.status_code == 401
            # The key is not taken from the URL, where logs would keep it.
            response = await hub.http.post(f"/api/publish?token={KEY}", json={"topic": "t"})
            assert response.status_code == 401
            assert hub.server.hub.statistics().messages_published == 0
            assert hub.server.hub.statistics().messages_broadcast == 0
            await send(reader, "echo", "unharmed")
            assert await receive(reader) == {"type": "echo", "payload": "unharmed"}


@pytest.mark.parametrize(
    ("path", "body", "code", "detail"),
    [
        ("/api/publish", b"{not json", "invalid_json", "invalid JSON"),
        ("/api/publish", b"", "invalid_json", "invalid JSON"),
        ("/api/publish", b"\xff\xfe", "invalid_json", "invalid JSON"),
        ("/api/publish", b"[1]", "invalid_payload", "must be an object"),
        ("/api/publish", b'{"data": 1}', "invalid_payload", "needs a 'topic'"),
        ("/api/publish", b'{"topic": 5}', "invalid_payload", "'topic' must be a string"),
        ("/api/publish", b'{"topic": ""}', "invalid_payload", "must not be empty"),
        ("/api/publish", b'{"topic": "' + b"x" * 200 + b'"}', "invalid_payload", "at most 128"),
        ("/api/publish", b'{"topic": "t", "payload": 1}', "invalid_payload", "unknown field"),
        ("/api/broadcast", b'"hello"', "invalid_payload", "must be an object"),
        ("/api/broadcast", b'{"data": 1}', "invalid_payload", "unknown field"),
        ("/api/broadcast", b"{", "invalid_json", "invalid JSON"),
    ],
)
async def test_bad_json_or_shape_is_400_with_a_json_error(
    path: str, body: bytes, code: str, detail: str
) -> None:
    with trio.fail_after(LIMIT):
        async with running() as hub, subscriber(hub.server, "t") as reader:
            response = await hub.http.post(
                path, content=body, headers={**AUTH, "Content-Type": "application/json"}
            )
            assert response.status_code == 400
            assert error_of(response) == code
            assert detail in response.json()["detail"]
            # Nothing went out, and the WebSocket client is unharmed.
            statistics = hub.server.hub.statistics()
            assert statistics.messages_published == statistics.messages_broadcast == 0
            await send(reader, "echo", "unharmed")
            assert await receive(reader) == {"type": "echo", "payload": "unharmed"}


async def test_wrong_methods_are_405_with_allow_and_unknown_paths_404() -> None:
    with trio.fail_after(LIMIT):
        async with running() as hub:
            for method, path, allow in [
                ("GET", "/api/publish", "POST"),
                ("PUT", "/api/broadcast", "POST"),
                ("POST", "/api/stats", "GET, HEAD"),
                ("DELETE", "/metrics", "GET, HEAD"),
                ("POST", "/", "GET, HEAD"),
            ]:
                response = await hub.http.request(method, path, headers=AUTH)
                assert response.status_code == 405, (method, path)
                assert response.headers["allow"] == allow
                assert error_of(response) == "method_not_allowed"
            response = await hub.http.get("/api/nothing", headers=AUTH)
            assert response.status_code == 404
            assert error_of(response) == "not_found"
            response = await hub.http.get("/nothing")
            assert response.status_code == 404
            assert response.text == "Not found\n"


async def test_without_a_key_the_api_is_disabled_404() -> None:
    with trio.fail_after(LIMIT):
        async with running(api_key=None) as hub:
            for method, path in [
                ("POST", "/api/publish"),
                ("POST", "/api/broadcast"),
                ("GET", "/api/stats"),
            ]:
                response = await hub.http.request(method, path, json={}, headers=AUTH)
                assert response.status_code == 404
                assert error_of(response) == "api_disabled"
                assert "--api-key" in response.json()["detail"]
            assert hub.server.hub.statistics().messages_broadcast == 0
            # The page and the metrics are still served.
            assert (await hub.http.get("/")).status_code == 200
            assert (await hub.http.get("/metrics")).status_code == 200


async def test_body_size_length_and_type_are_checked() -> None:
    with trio.fail_after(LIMIT):
        async with running(max_message_size=1000) as hub, subscriber(hub.server, "t") as reader:
            port = hub.server.port
            response = await hub.http.post(
                "/api/publish", json={"topic": "t", "data": "x" * 2000}, headers=AUTH
            )
            assert response.status_code == 413
            assert error_of(response) == "too_large"
            # Exactly at the limit is fine.
            body = json.dumps({"topic": "t", "data": "x" * (1000 - 26)}).encode()
            assert len(body) == 1000
            response = await hub.http.post(
                "/api/publish", content=body, headers={**AUTH, "Content-Type": "application/json"}
            )
            assert response.status_code == 200
            assert (await receive(reader))["type"] == "message"

            async def chunks() -> AsyncIterator[bytes]:
                yield b'{"topic": "t"}'

            response = await hub.http.post("/api/publish", content=chunks(), headers=AUTH)
            assert response.request.headers["transfer-encoding"] == "chunked"
            assert response.status_code == 411
            assert error_of(response) == "length_required"
            assert "chunked" in response.json()["detail"]

            status, _, body = await raw(port, post("/api/publish", b""))
            assert status == 411
            assert json.loads(body)["error"] == "length_required"
            for length in ("abc", "-1", "1, 2", "1e3"):
                status, _, body = await raw(
                    port, post("/api/publish", b"{}", f"Content-Length: {length}")
                )
                assert status == 400, length
                assert json.loads(body)["error"] == "bad_request"
            # The client says more than it sends, then closes.
            status, _, body = await raw(
                port, post("/api/publish", b'{"topic"', "Content-Length: 50")
            )
            assert status in (400, 408)
            response = await hub.http.post(
                "/api/publish",
                content=b'{"topic": "t"}',
                headers={**AUTH, "Content-Type": "text/plain"},
            )
            assert response.status_code == 415
            assert error_of(response) == "unsupported_media_type"
            # No more messages than the one accepted above.
            await send(reader, "echo", "unharmed")
            assert await receive(reader) == {"type": "echo", "payload": "unharmed"}
            assert hub.server.hub.statistics().messages_published == 1


async def test_a_body_that_never_comes_is_408_within_the_handshake_timeout() -> None:
    with trio.fail_after(LIMIT):
        async with running(handshake_timeout=0.5) as hub:
            stream = await trio.open_tcp_stream("127.0.0.1", hub.server.port)
            async with stream:
                await stream.send_all(post("/api/publish", b'{"to', "Content-Length: 20"))
                response = b""
                while data := await stream.receive_some():
                    response += data
            assert response.startswith(b"HTTP/1.1 408 ")
            assert b'"error":"timeout"' in response


async def test_expect_100_continue_is_answered() -> None:
    # curl sends "Expect: 100-continue" before a body over 1 kB.
    with trio.fail_after(LIMIT):
        async with running() as hub, subscriber(hub.server, "t") as reader:
            body = json.dumps({"topic": "t", "data": "x" * 2000}).encode()
            status, _, answer = await raw(
                hub.server.port,
                post(
                    "/api/publish",
                    b"",
                    f"Content-Length: {len(body)}",
                    "Content-Type: application/json",
                    "Expect: 100-continue",
                ),
                then=body,
            )
            assert status == 200
            assert json.loads(answer) == {"topic": "t", "listenerCount": 1}
            assert (await receive(reader))["payload"]["data"] == "x" * 2000


async def test_an_early_answer_to_a_big_body_is_read_by_the_client() -> None:
    # The server answers 401 without reading the body; it reads and discards
    # the rest before closing, so that the client sees the answer, not a reset.
    with trio.fail_after(LIMIT):
        async with running() as hub:
            big = b"x" * 3_000_000
            status, _, body = await raw(
                hub.server.port,
                b"POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 3000000\r\n\r\n" + big,
            )
            assert status == 401
            assert json.loads(body)["error"] == "unauthorized"


async def test_a_plain_request_on_a_shutting_down_hub_is_503() -> None:
    with trio.fail_after(LIMIT):
        async with running() as hub:
            # A request whose body is late, while the hub starts to close.
            stream = await trio.open_tcp_stream("127.0.0.1", hub.server.port)
            async with stream:
                body = b'{"payload": 1}'
                await stream.send_all(post("/api/broadcast", b"", f"Content-Length: {len(body)}"))
                await trio.testing.wait_all_tasks_blocked()
                hub.server.hub._closing = True  # what aclose() sets first
                try:
                    await stream.send_all(body)
                    response = b""
                    while data := await stream.receive_some():
                        response += data
                finally:
                    hub.server.hub._closing = False
            assert response.startswith(b"HTTP/1.1 503 ")
            assert b'"error":"shutting_down"' in response


# ----------------------------------------------------------------- metrics


def families(text: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(family: Any, **labels: str) -> float:
    for sample in family.samples:
        if sample.name.endswith("_created"):
            continue
        if all(sample.labels.get(name) == wanted for name, wanted in labels.items()):
            return float(sample.value)
    raise AssertionError(f"no sample with {labels} in {family}")


async def test_metrics_are_prometheus_text_read_at_scrape_time() -> None:
    with trio.fail_after(LIMIT):
        async with running() as hub, subscriber(hub.server, "a") as reader:
            await hub.http.post("/api/publish", json={"topic": "a", "data": 1}, headers=AUTH)
            await hub.http.post("/api/broadcast", json={"payload": 2}, headers=AUTH)
            for _ in range(2):
                await receive(reader)
            # A refused handshake, counted by reason.
            origin = await raw(
                hub.server.port,
                b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Origin: http://evil.example\r\n\r\n",
            )
            assert origin[0] == 403
            await raw(hub.server.port, b"garbage\r\n\r\n")

            response = await hub.http.get("/metrics")  # no key needed by default
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
            metrics = families(response.text)
            assert all(name.startswith("trio_hub_") for name in metrics)
            assert value(metrics["trio_hub_clients"]) == 1
            assert value(metrics["trio_hub_topics"]) == 1
            assert value(metrics["trio_hub_messages"], kind="published") == 1
            assert value(metrics["trio_hub_messages"], kind="broadcast") == 1
            assert value(metrics["trio_hub_deliveries"]) == 3  # subscribed + 2 messages
            for name in (
                "trio_hub_drops",
                "trio_hub_evictions",
                "trio_hub_queued_bytes",
                "trio_hub_queued_messages",
                "trio_hub_unsent_bytes",
                "trio_hub_intake_paused",
                "trio_hub_intake_pauses",
                "trio_hub_keepalive_timeouts",
            ):
                assert value(metrics[name]) == 0, name
            assert metrics["trio_hub_drops"].type == "counter"
            assert metrics["trio_hub_queued_bytes"].type == "gauge"
            assert value(metrics["trio_hub_backend_state"], backend="memory", state="local") == 1
            assert (
                value(metrics["trio_hub_backend_state"], backend="memory", state="connected") == 0
            )
            refusals = metrics["trio_hub_handshake_refusals"]
            assert value(refusals, reason="origin") == 1
            assert value(refusals, reason="bad_request") == 1
            requests = metrics["trio_hub_http_requests"]
            assert value(requests, endpoint="/api/publish", status="200") == 1
            assert dict(hub.server.refusals) == {"origin": 1, "bad_request": 1}

            # Read at scrape time: a second scrape sees the change.
            await hub.http.post("/api/broadcast", json={"payload": 3}, headers=AUTH)
            metrics = families((await hub.http.get("/metrics")).text)
            assert value(metrics["trio_hub_messages"], kind="broadcast") == 2


async def test_metrics_can_require_the_key_or_be_off() -> None:
    with trio.fail_after(LIMIT):
        async with running(metrics="key") as hub:
            response = await hub.http.get("/metrics")
            assert response.status_code == 401
            assert error_of(response) == "unauthorized"
            response = await hub.http.get("/metrics", headers=AUTH)
            assert response.status_code == 200
            assert "trio_hub_clients" in families(response.text)
        async with running(metrics="off") as hub:
            assert (await hub.http.get("/metrics")).status_code == 404


async def test_each_server_has_its_own_registry() -> None:
    from prometheus_client import REGISTRY

    with trio.fail_after(LIMIT):
        async with running() as first, running() as second:
            assert first.server.metrics_registry is not second.server.metrics_registry
            await first.http.post("/api/broadcast", json={}, headers=AUTH)
            one = families((await first.http.get("/metrics")).text)
            other = families((await second.http.get("/metrics")).text)
            assert value(one["trio_hub_messages"], kind="broadcast") == 1
            assert value(other["trio_hub_messages"], kind="broadcast") == 0
    assert REGISTRY.get_sample_value("trio_hub_clients") is None


def test_serve_hub_checks_the_new_options() -> None:
    async def start(**options: Any) -> None:
        async with open_hub() as hub:
            await serve_hub(hub, "127.0.0.1", 0, **options)

    for options, complaint in [
        ({"metrics": "public"}, "metrics must be one of"),
        ({"api_key": ""}, "must not be empty"),
        ({"metrics": "key"}, "needs an api_key"),
    ]:
        with pytest.raises(ValueError, match=complaint):
            trio.run(partial(start, **options))


async def test_the_library_serves_no_metrics_unless_asked() -> None:
    with trio.fail_after(LIMIT):
        async with open_hub() as hub, trio.open_nursery() as nursery:
            server = await nursery.start(serve_hub, hub, "127.0.0.1", 0)
            async with httpx.AsyncClient() as http:
                response = await http.get(f"http://127.0.0.1:{server.port}/metrics")
                assert response.status_code == 404
            await server.aclose()


async def test_a_bug_behind_an_endpoint_is_a_logged_500_for_that_request_alone(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(LIMIT):
        async with running() as hub, subscriber(hub.server, "t") as reader:

            def broken(self: Hub) -> None:
                raise RuntimeError("boom")

            monkeypatch.setattr(Hub, "statistics", broken)
            response = await hub.http.get("/api/stats", headers=AUTH)
            assert response.status_code == 500
            assert error_of(response) == "internal_error"
            assert "boom" not in response.text
            assert "error while answering GET /api/stats" in caplog.text
            monkeypatch.undo()
            response = await hub.http.post("/api/publish", json={"topic": "t"}, headers=AUTH)
            assert response.status_code == 200
            assert (await receive(reader))["type"] == "message"
