"""Connection tokens and permissions, on in-memory clients: every claim, refresh and expiry.

Expiry runs in virtual time (``autojump_clock``): the authenticator's wall clock
is tied to Trio's clock, so that a token "expires" when Trio's clock says so.
tests/test_cli_auth.py has the real-time run against ``python -m trio_hub serve``.
"""

from __future__ import annotations

import math
import types
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import jwt
import pytest
import trio
import trio.testing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from trio_hub import (
    CloseCode,
    Grant,
    HandshakeRejection,
    HandshakeRequest,
    InvalidTokenError,
    JWTAuthenticator,
    Message,
    protocol_handler,
    token_of,
)
from trio_hub.testing import MemoryClient, TestHub, open_test_hub

SECRET = "test-secret-of-at-least-32-bytes!!"
START = 1_800_000_000.0  # the Unix time at which Trio's clock reads 0 in these tests


def wall_clock() -> float:
    return START + trio.current_time()


def mint(claims: dict[str, Any], key: Any = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


def handshake(
    *, query: dict[str, str] | None = None, headers: dict[str, str] | None = None
) -> HandshakeRequest:
    return HandshakeRequest(
        path="/",
        query=types.MappingProxyType(query or {}),
        headers=types.MappingProxyType(headers or {}),
        remote=("127.0.0.1", 1),
    )


@asynccontextmanager
async def token_hub(
    authenticator: JWTAuthenticator,
) -> AsyncIterator[TestHub]:
    async with (
        open_test_hub(on_message=protocol_handler) as test_hub,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(authenticator.close_expired, test_hub.hub)
        yield test_hub
        nursery.cancel_scope.cancel()


async def admit(test_hub: TestHub, authenticator: JWTAuthenticator, token: str) -> MemoryClient:
    grant = await authenticator(handshake(query={"token": token}))
    return test_hub.connect(identity=grant, wire_capacity=math.inf)


async def ask(peer: MemoryClient, type: str, payload: Any = None) -> Message:
    await peer.send(Message(type, payload))
    return await peer.receive()


# ---------------------------------------------------------------- the grant


def test_grant_topics_are_names_or_trailing_star_patterns() -> None:
    grant = Grant(subject="alice", topics=["news", "user.alice.*", "chat*"])
    assert grant.may_subscribe("news")
    assert grant.may_subscribe("user.alice.inbox")
    assert grant.may_subscribe("user.alice.")
    assert grant.may_subscribe("chat")
    assert grant.may_subscribe("chatroom")
    assert not grant.may_subscribe("new")
    assert not grant.may_subscribe("news2")
    assert not grant.may_subscribe("user.bob.inbox")
    assert not grant.may_subscribe("user.alice")
    # "*" alone allows every topic; () none; None (no restriction) every topic.
    assert Grant(topics=["*"]).may_subscribe("anything")
    assert not Grant(topics=()).may_subscribe("anything")
    assert Grant().may_subscribe("anything")
    assert Grant(topics=["a", "b*"]).topics == ("a", "b*")
    assert Grant().topics is None
    assert str(grant) == "alice"
    assert str(Grant()) == "anonymous"


def test_grant_publish_covers_broadcast_and_publish() -> None:
    assert Grant().may_publish(None)
    assert Grant().may_publish("t")
    assert not Grant(publish=False).may_publish(None)
    assert not Grant(publish=False).may_publish("t")


# ----------------------------------------------------------- token checks


def test_token_comes_from_the_bearer_header_or_the_query() -> None:
    assert token_of(handshake(headers={"authorization": "Bearer abc"})) == "abc"
    assert token_of(handshake(headers={"authorization": "bearer  abc "})) == "abc"
    assert token_of(handshake(query={"token": "q"})) == "q"
    # The header wins over the query; other schemes are not tokens.
    assert token_of(handshake(headers={"authorization": "Bearer h"}, query={"token": "q"})) == "h"
    assert token_of(handshake(headers={"authorization": "Basic abc"})) is None
    assert token_of(handshake(query={"token": ""})) is None
    assert token_of(handshake()) is None


async def test_each_claim_is_checked() -> None:
    authenticator = JWTAuthenticator(secret=SECRET, wall_clock=wall_clock)
    now = wall_clock()
    grant = authenticator.verify(mint({"sub": "alice", "exp": now + 60, "topics": ["a", "b*"]}))
    assert grant.subject == "alice"
    assert grant.topics == ("a", "b*")
    assert grant.expires == now + 60
    assert grant.publish
    # No exp: a token that never expires. No topics: no topic at all.
    forever = authenticator.verify(mint({"sub": "bob"}))
    assert forever.expires is None
    assert not forever.may_subscribe("a")

    bad: dict[str, tuple[dict[str, Any], str]] = {
        "no sub": ({"exp": now + 60}, "sub"),
        "sub not a string": ({"sub": 7}, "[Ss]ubject must be a string"),
        "expired": ({"sub": "a", "exp": now - 5}, "expired"),
        "exp not a number": ({"sub": "a", "exp": "soon"}, "exp"),
        "topics not a list": ({"sub": "a", "topics": "news"}, "'topics' must be a list"),
        "topics not strings": ({"sub": "a", "topics": ["a", 1]}, "'topics' must be a list"),
        "not yet valid": ({"sub": "a", "nbf": now + 3600}, "not yet valid"),
    }
    for claims, complaint in bad.values():
        with pytest.raises(InvalidTokenError, match=complaint):
            authenticator.verify(mint(claims))
    with pytest.raises(InvalidTokenError, match="Signature verification failed"):
        authenticator.verify(mint({"sub": "a"}, key="another-secret-of-at-least-32-bytes"))
    with pytest.raises(InvalidTokenError):
        authenticator.verify("not.a.token")
    unsigned = jwt.encode({"sub": "a"}, None, algorithm="none")  # type: ignore[arg-type]
    with pytest.raises(InvalidTokenError, match="alg"):
        authenticator.verify(unsigned)


async def test_exp_has_the_leeway_and_no_more() -> None:
    authenticator = JWTAuthenticator(secret=SECRET, leeway=1.0, wall_clock=wall_clock)
    now = wall_clock()
    assert authenticator.verify(mint({"sub": "a", "exp": now - 0.5})).subject == "a"
    with pytest.raises(InvalidTokenError, match="expired"):
        authenticator.verify(mint({"sub": "a", "exp": now - 1.0}))
    with pytest.raises(ValueError, match="leeway"):
        JWTAuthenticator(secret=SECRET, leeway=2.5)
    with pytest.raises(ValueError, match="not both"):
        JWTAuthenticator(secret=SECRET, public_key=b"x")
    with pytest.raises(ValueError, match="not both"):
        JWTAuthenticator()
    with pytest.raises(ValueError, match="empty"):
        JWTAuthenticator(secret="")


def pem(public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.mark.parametrize("kind", ["RS256", "ES256"])
def test_public_key_tokens_and_no_algorithm_confusion(kind: str) -> None:
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if kind == "RS256"
        else ec.generate_private_key(ec.SECP256R1())
    )
    public = pem(private.public_key())
    authenticator = JWTAuthenticator(public_key=public)
    assert authenticator.algorithms == (kind,)
    assert authenticator.verify(mint({"sub": "k"}, private, kind)).subject == "k"
    # One algorithm per key: an HS256 token (say, signed with the public key as
    # its secret) is refused whatever its signature.
    with pytest.raises(InvalidTokenError, match="alg"):
        authenticator.verify(mint({"sub": "k"}, SECRET, "HS256"))
    other = ec.generate_private_key(ec.SECP256R1()) if kind == "ES256" else None
    if other is not None:
        with pytest.raises(InvalidTokenError):
            authenticator.verify(mint({"sub": "k"}, other, "ES256"))
    with pytest.raises(ValueError, match="PEM"):
        JWTAuthenticator(public_key=b"-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")


async def test_the_hook_refuses_with_401_and_admits_with_a_grant() -> None:
    authenticator = JWTAuthenticator(secret=SECRET, publish=False, wall_clock=wall_clock)
    for request in [
        handshake(),
        handshake(query={"token": "garbage"}),
        handshake(query={"token": mint({"sub": "a", "exp": wall_clock() - 10})}),
        handshake(headers={"authorization": "Bearer " + mint({"sub": "a"}, key="x" * 32)}),
    ]:
        with pytest.raises(HandshakeRejection) as refused:
            await authenticator(request)
        assert refused.value.status == 401
    grant = await authenticator(
        handshake(headers={"authorization": "Bearer " + mint({"sub": "a"})})
    )
    assert grant.subject == "a"
    assert not grant.publish


# ----------------------------------------------------- permissions in use


async def test_refusals_are_forbidden_errors_and_the_connection_stays(
    autojump_clock: trio.testing.MockClock,
) -> None:
    authenticator = JWTAuthenticator(secret=SECRET, publish=False, wall_clock=wall_clock)
    async with token_hub(authenticator) as test_hub:
        alice = await admit(test_hub, authenticator, mint({"sub": "alice", "topics": ["news*"]}))
        watcher = test_hub.connect(wire_capacity=math.inf)  # no grant: may do everything
        assert await ask(alice, "subscribe", {"topic": "news.eu"}) == Message(
            "subscribed", {"topic": "news.eu"}
        )
        for type, payload, detail in [
            ("subscribe", {"topic": "secret"}, "'alice' may not subscribe to 'secret'"),
            ("publish", {"topic": "news.eu", "data": 1}, "'alice' may not publish on 'news.eu'"),
            ("broadcast", "hi", "'alice' may not broadcast on this server"),
        ]:
            assert await ask(alice, type, payload) == Message(
                "error", {"code": "forbidden", "detail": detail}
            )
        assert "secret" not in alice.server_side.topics
        # Nothing was published or broadcast, and Alice is still served.
        assert test_hub.hub.statistics().messages_broadcast == 0
        assert test_hub.hub.statistics().messages_published == 0
        assert await ask(alice, "echo", "still here") == Message("echo", "still here")
        # A client without a grant is not limited.
        assert await ask(watcher, "subscribe", {"topic": "secret"}) == Message(
            "subscribed", {"topic": "secret"}
        )


async def test_a_client_that_may_publish_does(autojump_clock: trio.testing.MockClock) -> None:
    authenticator = JWTAuthenticator(secret=SECRET, publish=True, wall_clock=wall_clock)
    async with token_hub(authenticator) as test_hub:
        alice = await admit(test_hub, authenticator, mint({"sub": "alice", "topics": ["t"]}))
        await alice.send(Message("subscribe", {"topic": "t"}))
        await alice.expect("subscribed", {"topic": "t"})
        await alice.send(Message("publish", {"topic": "t", "data": 1}))
        await alice.expect("message", {"topic": "t", "data": 1})
        await alice.expect("publishResult", {"topic": "t", "listenerCount": 1})


# ------------------------------------------------------------------ expiry


async def test_an_expired_token_closes_its_connection_with_4002(
    autojump_clock: trio.testing.MockClock,
) -> None:
    authenticator = JWTAuthenticator(secret=SECRET, leeway=1.0, wall_clock=wall_clock)
    async with token_hub(authenticator) as test_hub:
        short = await admit(test_hub, authenticator, mint({"sub": "short", "exp": START + 10}))
        long = await admit(test_hub, authenticator, mint({"sub": "long", "exp": START + 100}))
        forever = await admit(test_hub, authenticator, mint({"sub": "forever"}))
        assert await short.wait_closed(timeout=60) == CloseCode.TOKEN_EXPIRED
        # Closed once the leeway is over, within the sweep interval.
        assert 11.0 <= trio.current_time() <= 11.5
        assert short.close_reason == "token expired"
        assert long.close_code is None
        assert await long.wait_closed(timeout=200) == CloseCode.TOKEN_EXPIRED
        assert 101.0 <= trio.current_time() <= 101.5
        assert await ask(forever, "echo", 1) == Message("echo", 1)


async def test_a_refresh_in_time_keeps_the_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    authenticator = JWTAuthenticator(secret=SECRET, leeway=0.0, wall_clock=wall_clock)
    async with token_hub(authenticator) as test_hub:
        alice = await admit(
            test_hub, authenticator, mint({"sub": "alice", "exp": START + 10, "topics": ["a", "b"]})
        )
        for topic in ("a", "b"):
            await alice.send(Message("subscribe", {"topic": topic}))
            await alice.expect("subscribed", {"topic": topic})
        await trio.sleep(8)
        fresh = mint({"sub": "alice", "exp": START + 30, "topics": ["a"]})
        # The fresh token no longer allows "b": the client leaves it.
        assert await ask(alice, "refresh", {"token": fresh}) == Message(
            "refreshed", {"expires": START + 30, "unsubscribed": ["b"]}
        )
        assert alice.server_side.topics == {"a"}
        await trio.sleep(15)  # past the first token's exp
        assert await ask(alice, "echo", "alive") == Message("echo", "alive")
        assert await alice.wait_closed(timeout=60) == CloseCode.TOKEN_EXPIRED
        assert 30.0 <= trio.current_time() <= 30.5


async def test_a_bad_refresh_is_an_error_and_the_old_token_still_counts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    authenticator = JWTAuthenticator(secret=SECRET, leeway=0.0, wall_clock=wall_clock)
    async with token_hub(authenticator) as test_hub:
        alice = await admit(test_hub, authenticator, mint({"sub": "alice", "exp": START + 10}))
        for payload, code, detail in [
            ({"token": "garbage"}, "invalid_token", "invalid token"),
            ({"token": mint({"sub": "bob", "exp": START + 99})}, "invalid_token", "'bob'"),
            ({"token": mint({"sub": "alice", "exp": START - 1})}, "invalid_token", "expired"),
            ({"token": mint({"sub": "alice"}, key="y" * 32)}, "invalid_token", "Signature"),
            ({"token": ""}, "invalid_payload", "non-empty"),
            ({"token": 5}, "invalid_payload", "non-empty"),
            ({"tok": "x"}, "invalid_payload", "'token' alone"),
            ("x", "invalid_payload", "'token' alone"),
        ]:
            reply = await ask(alice, "refresh", payload)
            assert reply.type == "error", payload
            assert isinstance(reply.payload, dict)
            assert reply.payload["code"] == code
            assert detail in str(reply.payload["detail"]), reply
        assert await ask(alice, "echo", 1) == Message("echo", 1)
        assert await alice.wait_closed(timeout=60) == CloseCode.TOKEN_EXPIRED
        assert 10.0 <= trio.current_time() <= 10.5


async def test_refresh_without_tokens_is_an_error(autojump_clock: trio.testing.MockClock) -> None:
    async with open_test_hub(on_message=protocol_handler) as test_hub:
        for identity in (None, Grant(publish=False)):
            peer = test_hub.connect(identity=identity, wire_capacity=math.inf)
            reply = await ask(peer, "refresh", {"token": "x"})
            assert reply == Message(
                "error",
                {"code": "invalid_token", "detail": "this server does not use connection tokens"},
            )


async def test_expiry_costs_one_task_for_many_clients(
    autojump_clock: trio.testing.MockClock,
) -> None:
    authenticator = JWTAuthenticator(secret=SECRET, leeway=0.0, wall_clock=wall_clock)
    async with token_hub(authenticator) as test_hub:
        peers = [
            await admit(test_hub, authenticator, mint({"sub": f"u{n}", "exp": START + 5 + n % 7}))
            for n in range(200)
        ]
        await trio.testing.wait_all_tasks_blocked()
        assert len(authenticator._heap) == 200
        codes = [await peer.wait_closed(timeout=60) for peer in peers]
        assert codes == [CloseCode.TOKEN_EXPIRED] * 200
        assert len(test_hub.hub) == 0


async def test_grants_of_failed_handshakes_are_not_kept(
    autojump_clock: trio.testing.MockClock,
) -> None:
    authenticator = JWTAuthenticator(secret=SECRET, wall_clock=wall_clock)
    async with token_hub(authenticator):
        for _ in range(10):
            # Admitted, then the upgrade failed: nobody holds the grant.
            await authenticator(handshake(query={"token": mint({"sub": "x", "exp": START + 5})}))
        await trio.sleep(10)
        assert authenticator._heap == []


async def test_without_the_watcher_nothing_is_kept_and_it_runs_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    authenticator = JWTAuthenticator(secret=SECRET, wall_clock=wall_clock)
    await authenticator(handshake(query={"token": mint({"sub": "x", "exp": START + 5})}))
    assert authenticator._heap == []
    async with token_hub(authenticator) as test_hub:
        await authenticator(handshake(query={"token": mint({"sub": "x", "exp": START + 5})}))
        assert len(authenticator._heap) == 1
        with pytest.raises(RuntimeError, match="already running"):
            await authenticator.close_expired(test_hub.hub)
    assert authenticator._heap == []
