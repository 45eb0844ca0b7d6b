"""``python -m trio_hub serve`` as deployed: the HTTP API, permissions, JWT tokens, metrics.

Every server here is a real subprocess (started as in tests/test_cli.py), every
HTTP request a real httpx request and every client a real trio-websocket
connection. The API across two nodes runs on a real redis-server.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import httpx
import jwt
import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from prometheus_client.parser import text_string_to_metric_families

from .redis_server import RedisServer, wait_for_subscribers
from .test_cli import client, close_code, receive, request, running_server, upgrade_status
from .test_cli_redis import PREFIX

LIMIT: Final = 45  # seconds, for any one test
KEY: Final = "api-key-for-tests"
AUTH: Final = {"Authorization": f"Bearer {KEY}"}
SECRET: Final = "jwt-secret-for-tests-32-bytes-long"


def base(port: int) -> str:
    return f"http://127.0.0.1:{port}"


def mint(claims: dict[str, Any], key: Any = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


def bearer(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {token}".encode())]


async def echo_ready(connection: Any) -> None:
    await request(connection, "echo", "ready")
    assert await receive(connection) == {"type": "echo", "payload": "ready"}


# ----------------------------------------------------------------- the API


@pytest.mark.parametrize("source", ["option", "environment"])
async def test_the_api_publishes_to_websocket_clients(source: str) -> None:
    args, env = (("--api-key", KEY), {}) if source == "option" else ((), {"TRIO_HUB_API_KEY": KEY})
    with trio.fail_after(LIMIT):
        async with (
            running_server(*args, env=env) as server,
            client(server.port) as browser,
            httpx.AsyncClient(base_url=base(server.port)) as http,
        ):
            await request(browser, "subscribe", {"topic": "orders"})
            # The ready server keeps history by default: topics are numbered.
            subscribed = await receive(browser)
            epoch = subscribed["payload"]["epoch"]
            assert subscribed == {
                "type": "subscribed",
                "payload": {"topic": "orders", "offset": 0, "epoch": epoch},
            }
            response = await http.post(
                "/api/publish", json={"topic": "orders", "data": {"id": 7}}, headers=AUTH
            )
            assert response.status_code == 200
            assert response.json() == {
                "topic": "orders",
                "listenerCount": 1,
                "offset": 1,
                "epoch": epoch,
            }
            assert await receive(browser) == {
                "type": "message",
                "payload": {"topic": "orders", "data": {"id": 7}, "offset": 1},
            }
            response = await http.post("/api/broadcast", json={"payload": "all"}, headers=AUTH)
            assert response.json() == {"listenerCount": 1}
            assert await receive(browser) == {"type": "broadcast", "payload": "all"}
            stats = (await http.get("/api/stats", headers=AUTH)).json()
            assert stats["clients"] == 1
            assert stats["messages_published"] == 1

            response = await http.post("/api/publish", json={"topic": "orders"})
            assert response.status_code == 401
            assert response.json()["error"] == "unauthorized"
            response = await http.post("/api/publish", content=b"{", headers=AUTH)
            assert response.status_code == 400
            assert response.json()["error"] == "invalid_json"
            # With an API key, clients may not publish by default: the backend does.
            await request(browser, "broadcast", "spam")
            reply = await receive(browser)
            assert reply["type"] == "error"
            assert reply["payload"]["code"] == "forbidden"
            await request(browser, "publish", {"topic": "orders", "data": "spam"})
            assert (await receive(browser))["payload"]["code"] == "forbidden"
            await echo_ready(browser)  # still open
    assert any(
        "may not publish (--client-publish none); HTTP API enabled" in x for x in server.lines
    )
    assert all(KEY not in line for line in server.lines)


async def test_without_a_key_the_api_is_404_and_clients_may_publish() -> None:
    with trio.fail_after(LIMIT):
        async with (
            running_server() as server,
            client(server.port) as browser,
            httpx.AsyncClient(base_url=base(server.port)) as http,
        ):
            response = await http.post("/api/publish", json={"topic": "t"}, headers=AUTH)
            assert response.status_code == 404
            assert response.json()["error"] == "api_disabled"
            # The demo and the websocket-shootout benchmark: clients broadcast.
            await request(browser, "broadcast", "hi")
            assert await receive(browser) == {"type": "broadcast", "payload": "hi"}
            assert (await receive(browser))["listenerCount"] == 1


@pytest.mark.parametrize(
    ("args", "may_publish"),
    [
        (("--client-publish", "none"), False),
        (("--client-publish", "all", "--api-key", KEY), True),
        (("--client-publish", "none", "--auth-token", "tok"), False),
    ],
)
async def test_client_publish_decides_for_websocket_clients(
    args: tuple[str, ...], may_publish: bool
) -> None:
    headers = bearer("tok") if "--auth-token" in args else None
    with trio.fail_after(LIMIT):
        async with running_server(*args) as server, client(server.port, headers=headers) as c:
            await request(c, "subscribe", {"topic": "t"})
            assert (await receive(c))["type"] == "subscribed"
            await request(c, "publish", {"topic": "t", "data": 1})
            reply = await receive(c)
            if may_publish:
                assert reply == {
                    "type": "message",
                    "payload": {"topic": "t", "data": 1, "offset": 1},
                }
                assert (await receive(c))["type"] == "publishResult"
            else:
                assert reply["type"] == "error"
                assert reply["payload"] == {
                    "code": "forbidden",
                    "detail": "this client may not publish on 't'",
                }
            await echo_ready(c)


# -------------------------------------------------------------- JWT tokens


@pytest.mark.parametrize("source", ["option", "environment"])
async def test_a_jwt_is_required_and_its_claims_apply(source: str) -> None:
    args, env = (
        (("--jwt-secret", SECRET), {})
        if source == "option"
        else ((), {"TRIO_HUB_JWT_SECRET": SECRET})
    )
    now = time.time()
    with trio.fail_after(LIMIT):
        async with running_server(*args, "--api-key", KEY, env=env) as server:
            port = server.port
            for resource, headers in [
                ("/", {}),
                ("/?token=garbage", {}),
                (f"/?token={mint({'sub': 'a', 'exp': now - 60})}", {}),  # expired
                (f"/?token={mint({'exp': now + 60})}", {}),  # no sub
                ("/", {"Authorization": "Bearer " + mint({"sub": "a"}, key="w" * 32)}),
            ]:
                assert await upgrade_status(port, resource, headers) == 401, resource
            await server.wait_for_line(r"rejected \(401\): Unauthorized: invalid token")

            token = mint({"sub": "alice", "exp": now + 600, "topics": ["room.*", "news"]})
            async with (
                client(port, f"/?token={quote(token)}") as alice,
                client(port, headers=bearer(mint({"sub": "bob"}))) as bob,
                httpx.AsyncClient(base_url=base(port)) as http,
            ):
                for topic in ("room.1", "news"):
                    await request(alice, "subscribe", {"topic": topic})
                    assert (await receive(alice))["type"] == "subscribed"
                await request(alice, "subscribe", {"topic": "secret"})
                assert (await receive(alice))["payload"] == {
                    "code": "forbidden",
                    "detail": "'alice' may not subscribe to 'secret'",
                }
                # Bob's token has no topics claim: no topic at all.
                await request(bob, "subscribe", {"topic": "news"})
                assert (await receive(bob))["payload"]["code"] == "forbidden"
                await echo_ready(alice)
                await echo_ready(bob)
                stats = (await http.get("/api/stats", headers=AUTH)).json()
                assert stats["subjects"] == {"alice": 1, "bob": 1}
                response = await http.post(
                    "/api/publish", json={"topic": "room.1", "data": "hi"}, headers=AUTH
                )
                assert response.json()["listenerCount"] == 1
                assert await receive(alice) == {
                    "type": "message",
                    "payload": {"topic": "room.1", "data": "hi", "offset": 1},
                }
            await server.wait_for_line(r"authenticated as 'alice'")
    assert all(SECRET not in line and token not in line for line in server.lines)


async def test_a_token_that_expires_closes_with_4002_unless_refreshed() -> None:
    # A short real expiry: exp 2 s from now, closed once the 1 s leeway is over.
    with trio.fail_after(LIMIT):
        async with running_server("--jwt-secret", SECRET) as server:
            exp = time.time() + 2
            async with (
                client(server.port, headers=bearer(mint({"sub": "short", "exp": exp}))) as short,
                client(server.port, headers=bearer(mint({"sub": "kept", "exp": exp}))) as kept,
            ):
                await echo_ready(short)
                fresh = mint({"sub": "kept", "exp": exp + 600})
                await request(kept, "refresh", {"token": fresh})
                assert await receive(kept) == {
                    "type": "refreshed",
                    "payload": {"expires": exp + 600, "unsubscribed": []},
                }
                assert await close_code(short) == 4002
                assert time.time() >= exp + 0.9  # the 1 s leeway, give or take clock steps
                await server.wait_for_line(r"client #1 \(short\): token expired; closing with 4002")
                await echo_ready(kept)
                await request(kept, "refresh", {"token": "garbage"})
                reply = await receive(kept)
                assert reply["payload"]["code"] == "invalid_token"
                await echo_ready(kept)  # a bad refresh leaves the connection open


def pem_pair(kind: str) -> tuple[Any, bytes]:
    private: Any = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if kind == "RS256"
        else ec.generate_private_key(ec.SECP256R1())
    )
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


@pytest.mark.parametrize("kind", ["RS256", "ES256"])
async def test_a_public_key_file_checks_rs256_or_es256_tokens(kind: str, tmp_path: Path) -> None:
    private, public = pem_pair(kind)
    key_file = tmp_path / "public.pem"
    key_file.write_bytes(public)
    with trio.fail_after(LIMIT):
        async with running_server("--jwt-public-key", str(key_file)) as server:
            good = mint({"sub": "k", "topics": ["*"]}, private, kind)
            async with client(server.port, f"/?token={good}") as connection:
                await request(connection, "subscribe", {"topic": "anything"})
                assert (await receive(connection))["type"] == "subscribed"
            hs256 = mint({"sub": "k"})
            assert await upgrade_status(server.port, f"/?token={hs256}") == 401


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (("--jwt-secret", "s", "--jwt-public-key", "f"), "exclude each other"),
        (("--jwt-secret", "s", "--auth-token", "t"), "exclude each other"),
        (("--metrics", "key"), "--metrics key needs --api-key"),
        (("--jwt-public-key", "/nonexistent.pem"), "--jwt-public-key: "),
        (("--client-publish", "some"), "invalid choice"),
        (("--metrics", "public"), "invalid choice"),
    ],
)
async def test_bad_combinations_exit_2_with_a_message(
    args: tuple[str, ...], complaint: str, tmp_path: Path
) -> None:
    import sys

    with trio.fail_after(LIMIT):
        result = await trio.run_process(
            [sys.executable, "-m", "trio_hub", "serve", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 2
    assert complaint in result.stderr.decode()
    assert b"Traceback" not in result.stderr


async def test_a_file_that_is_no_public_key_exits_2(tmp_path: Path) -> None:
    import sys

    key_file = tmp_path / "bad.pem"
    key_file.write_text("not a key\n")
    with trio.fail_after(LIMIT):
        result = await trio.run_process(
            [sys.executable, "-m", "trio_hub", "serve", "--jwt-public-key", str(key_file)],
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 2
    assert "--jwt-public-key: not a PEM public key" in result.stderr.decode()


# ----------------------------------------------------------------- metrics


async def test_metrics_from_the_cli_parse_as_prometheus_text() -> None:
    async with httpx.AsyncClient() as http:
        with trio.fail_after(LIMIT):
            async with running_server("--api-key", KEY) as server, client(server.port) as browser:
                await echo_ready(browser)
                assert (
                    await upgrade_status(server.port, headers={"Origin": "http://evil.example"})
                    == 403
                )
                response = await http.get(f"{base(server.port)}/metrics")
                assert response.status_code == 200
                families = {f.name: f for f in text_string_to_metric_families(response.text)}
                assert families["trio_hub_clients"].samples[0].value == 1
                refusals = {
                    s.labels["reason"]: s.value
                    for s in families["trio_hub_handshake_refusals"].samples
                    if s.name.endswith("_total")
                }
                assert refusals == {"origin": 1}
                expected = {
                    "trio_hub_clients",
                    "trio_hub_topics",
                    "trio_hub_messages",
                    "trio_hub_deliveries",
                    "trio_hub_drops",
                    "trio_hub_evictions",
                    "trio_hub_queued_bytes",
                    "trio_hub_backend_state",
                    "trio_hub_handshake_refusals",
                }
                assert expected <= set(families)
            async with running_server("--api-key", KEY, "--metrics", "key") as server:
                url = f"{base(server.port)}/metrics"
                assert (await http.get(url)).status_code == 401
                assert (await http.get(url, headers=AUTH)).status_code == 200
            async with running_server("--metrics", "off") as server:
                assert (await http.get(f"{base(server.port)}/metrics")).status_code == 404


async def test_metrics_can_move_to_another_address() -> None:
    async with httpx.AsyncClient() as http:
        with trio.fail_after(LIMIT):
            async with running_server(
                "--api-key", KEY, "--metrics-address", "127.0.0.1:0"
            ) as server:
                match = await server.wait_for_line(
                    r"serving /metrics on http://127\.0\.0\.1:(\d+)/metrics"
                )
                metrics_url = f"http://127.0.0.1:{match[1]}"
                response = await http.get(f"{metrics_url}/metrics")
                assert response.status_code == 200
                assert "trio_hub_clients" in response.text
                # Only the metrics there: no API, no page; and none on the main port.
                assert (await http.get(f"{metrics_url}/api/stats", headers=AUTH)).status_code == 404
                assert (await http.get(f"{metrics_url}/")).status_code == 404
                assert (await http.get(f"{base(server.port)}/metrics")).status_code == 404
                stats = await http.get(f"{base(server.port)}/api/stats", headers=AUTH)
                assert stats.status_code == 200


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (("--metrics-address", "9100"), "expected HOST:PORT"),
        (("--metrics-address", "127.0.0.1:99999"), "a port is 0 to 65535"),
        (("--metrics-address", "127.0.0.1:0", "--metrics", "off"), "excludes --metrics"),
    ],
)
async def test_bad_metrics_addresses_exit_2(args: tuple[str, ...], complaint: str) -> None:
    import sys

    with trio.fail_after(LIMIT):
        result = await trio.run_process(
            [sys.executable, "-m", "trio_hub", "serve", *args], capture_stderr=True, check=False
        )
    assert result.returncode == 2
    assert complaint in result.stderr.decode()


# ------------------------------------------------------ two nodes on Redis


async def test_the_api_of_any_node_reaches_every_node(redis_server: RedisServer) -> None:
    node = ("--redis", redis_server.url, "--redis-prefix", PREFIX, "--api-key", KEY)
    with trio.fail_after(60):
        async with (
            running_server(*node) as node_a,
            running_server(*node) as node_b,
            client(node_a.port) as on_a,
            client(node_b.port) as on_b,
            httpx.AsyncClient() as http,
        ):
            for connection in (on_a, on_b):
                await request(connection, "subscribe", {"topic": "orders"})
                assert (await receive(connection))["type"] == "subscribed"
            await wait_for_subscribers(
                redis_server.url, {f"{PREFIX}:broadcast": 2, f"{PREFIX}:topic:orders": 2}
            )
            response = await http.post(
                f"{base(node_a.port)}/api/publish",
                json={"topic": "orders", "data": 1},
                headers=AUTH,
            )
            # listenerCount counts the node's own clients, as over WebSocket;
            # the offset comes from Redis, the same for every node.
            first = response.json()
            assert first == {
                "topic": "orders",
                "listenerCount": 1,
                "offset": 1,
                "epoch": first["epoch"],
            }
            response = await http.post(
                f"{base(node_b.port)}/api/broadcast", json={"payload": "b"}, headers=AUTH
            )
            assert response.json() == {"listenerCount": 1}
            response = await http.post(
                f"{base(node_b.port)}/api/publish",
                json={"topic": "orders", "data": 2},
                headers=AUTH,
            )
            assert response.json()["offset"] == 2
            one = {"type": "message", "payload": {"topic": "orders", "data": 1, "offset": 1}}
            two = {"type": "message", "payload": {"topic": "orders", "data": 2, "offset": 2}}
            b = {"type": "broadcast", "payload": "b"}
            for connection in (on_a, on_b):
                got = [await receive(connection) for _ in range(3)]
                # Each once. Order is kept per publishing node (b before 2, both
                # from node B) and per topic (1 before 2, numbered by Redis);
                # node B's own broadcast may overtake node A's publication there.
                assert sorted(map(repr, got)) == sorted(map(repr, [one, b, two]))
                assert got.index(b) < got.index(two)
                assert got.index(one) < got.index(two)
            # Fences through Redis, from each node: nothing came twice.
            for port in (node_a.port, node_b.port):
                await http.post(f"{base(port)}/api/broadcast", json={"payload": port}, headers=AUTH)
                for connection in (on_a, on_b):
                    assert await receive(connection) == {"type": "broadcast", "payload": port}


# ------------------------------------------------- the deploy how-to's files


EXAMPLES: Final = Path(__file__).resolve().parent.parent / "docs" / "examples"


async def test_the_howto_curl_commands_publish_and_a_wrong_key_is_401() -> None:
    # docs/examples/deploy_curl.sh, shown in docs/howto/deploy.rst, run as is.
    import os

    with trio.fail_after(LIMIT):
        async with (
            running_server(env={"TRIO_HUB_API_KEY": KEY}) as server,
            client(server.port) as browser,
        ):
            await request(browser, "subscribe", {"topic": "orders"})
            assert (await receive(browser))["type"] == "subscribed"
            result = await trio.run_process(
                ["bash", "-e", str(EXAMPLES / "deploy_curl.sh")],
                capture_stdout=True,
                capture_stderr=True,
                env={**os.environ, "HUB": base(server.port), "TRIO_HUB_API_KEY": KEY},
            )
            published, broadcast, status = result.stdout.decode().splitlines()
            # The ready server keeps history: the reply says where it went.
            assert json.loads(published) == {
                "topic": "orders",
                "listenerCount": 1,
                "offset": 1,
                "epoch": json.loads(published)["epoch"],
            }
            assert (broadcast, status) == ('{"listenerCount":1}', "401")
            assert await receive(browser) == {
                "type": "message",
                "payload": {
                    "topic": "orders",
                    "data": {"id": 42, "status": "shipped"},
                    "offset": 1,
                },
            }
            assert await receive(browser) == {
                "type": "broadcast",
                "payload": "maintenance at 18:00",
            }
            await echo_ready(browser)  # and no "spam" came before this


def test_the_howto_systemd_unit_runs_a_valid_command_line() -> None:
    import shlex

    from trio_hub.__main__ import _parser

    unit = (EXAMPLES / "trio-hub.service").read_text()
    (exec_start,) = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    program, *args = shlex.split(exec_start.removeprefix("ExecStart="))
    assert program.endswith("/trio-hub")
    options = _parser().parse_args(args)
    assert options.command == "serve"
    assert options.redis == "redis://127.0.0.1:6379/0"
    # The secrets come from the environment file, never the command line.
    assert options.api_key is None
    assert options.jwt_secret is None
    assert "EnvironmentFile=" in unit


def test_the_howto_backend_mints_tokens_that_the_hub_accepts() -> None:
    # docs/examples/deploy_backend.py runs in tests/test_docs.py; here its
    # mint_token() meets the authenticator, fresh and expired.
    import importlib.util

    from trio_hub import InvalidTokenError, JWTAuthenticator

    spec = importlib.util.spec_from_file_location("deploy_backend", EXAMPLES / "deploy_backend.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    authenticator = JWTAuthenticator(secret=module.JWT_SECRET)
    grant = authenticator.verify(module.mint_token("alice", ["news"]))
    assert grant.subject == "alice"
    assert grant.topics == ("news",)
    with pytest.raises(InvalidTokenError, match="expired"):
        authenticator.verify(module.mint_token("alice", ["news"], lifetime=-10))
