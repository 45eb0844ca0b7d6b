"""Connection tokens (JWT) and the per-client permission hook.

The core knows nothing of this module. A :class:`Grant` travels as the
client's :attr:`~trio_hub.Client.identity`; :func:`~trio_hub.protocol_handler`
consults it before a ``subscribe``, ``publish`` or ``broadcast``, and asks it to
``refresh``. :class:`JWTAuthenticator` makes grants from signed tokens at the
handshake, and closes the clients whose token has expired.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import time
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final

import trio

from ._closecodes import CloseCode
from ._errors import HubError

if TYPE_CHECKING:
    from ._hub import Hub
    from ._server import HandshakeRequest

__all__ = ["Grant", "InvalidTokenError", "JWTAuthenticator", "token_of"]

logger: Final = logging.getLogger("trio_hub")

MAX_LEEWAY: Final = 2.0
# The watcher closes the expired clients in batches, at most this often, since
# each batch is one pass over the hub's clients (the core keeps no index by grant).
_MIN_SWEEP_INTERVAL: Final = 0.25


class InvalidTokenError(HubError):
    """A connection token was refused: bad signature, expired, or malformed claims.

    .. versionadded:: 0.2
    """


class Grant:
    """What one client may do: the permission hook that :func:`protocol_handler` consults.

    Attach a grant as the client's identity (return it from an ``authenticate``
    hook, or pass ``identity=`` to :meth:`Hub.register`). Before acting on a
    ``subscribe``, ``publish`` or ``broadcast`` from a client whose
    :attr:`Client.identity` is a :class:`Grant`, :func:`protocol_handler` calls
    :meth:`may_subscribe` or :meth:`may_publish`, and answers a refusal with an
    ``error`` of code ``forbidden``; the connection stays open. A client whose
    identity is anything else may do everything. Subclass it to decide in your
    own way.

    Args:
        subject: Who the client is (a token's ``sub``); shown in logs and in
            ``/api/stats``. ``None`` for an anonymous client.
        topics: The topics it may subscribe to: names, or patterns ending
            in ``*`` that match every topic starting with what comes before.
            ``None`` allows every topic; ``()`` none.
        publish: Whether it may ``publish`` and ``broadcast``.
        expires: When the grant ends, as a Unix time (a token's ``exp``), or
            ``None``. Only :class:`JWTAuthenticator` acts on it.

    .. versionadded:: 0.2
    """

    __slots__ = ("__weakref__", "_exact", "_issuer", "_prefixes", "expires", "publish", "subject")

    def __init__(
        self,
        *,
        subject: str | None = None,
        topics: Iterable[str] | None = None,
        publish: bool = True,
        expires: float | None = None,
    ) -> None:
        self.subject = subject
        self.publish = publish
        self.expires = expires
        self._issuer: JWTAuthenticator | None = None
        self._exact: frozenset[str] | None
        self._prefixes: tuple[str, ...]
        self._set_topics(topics)

    def _set_topics(self, topics: Iterable[str] | None) -> None:
        if topics is None:
            self._exact, self._prefixes = None, ()
            return
        patterns = list(topics)
        self._exact = frozenset(p for p in patterns if not p.endswith("*"))
        self._prefixes = tuple(p[:-1] for p in patterns if p.endswith("*"))

    @property
    def topics(self) -> tuple[str, ...] | None:
        """The topic names and patterns allowed, or ``None`` for all."""
        if self._exact is None:
            return None
        return (*sorted(self._exact), *(prefix + "*" for prefix in self._prefixes))

    def may_subscribe(self, topic: str) -> bool:
        """Whether the client may subscribe to ``topic``."""
        exact = self._exact
        if exact is None or topic in exact:
            return True
        return any(topic.startswith(prefix) for prefix in self._prefixes)

    def may_publish(self, topic: str | None) -> bool:
        """Whether the client may publish on ``topic`` (``None``: broadcast)."""
        return self.publish

    def refresh(self, token: str) -> None:
        """Replace the grant's terms with those of a fresh token (a ``refresh`` message).

        The subject must stay the same. The new ``topics`` and ``exp`` apply
        from now on.

        Raises:
            InvalidTokenError: if the token is refused, or this grant did not
                come from a token; the grant is unchanged.
        """
        issuer = self._issuer
        if issuer is None:
            raise InvalidTokenError("this server does not use connection tokens")
        fresh = issuer.verify(token)
        if fresh.subject != self.subject:
            raise InvalidTokenError(
                f"the token is for subject {fresh.subject!r}, not {self.subject!r}"
            )
        self._exact, self._prefixes = fresh._exact, fresh._prefixes
        self.expires = fresh.expires
        issuer._watch(self)

    def __str__(self) -> str:
        return self.subject if self.subject is not None else "anonymous"

    def __repr__(self) -> str:
        return (
            f"Grant(subject={self.subject!r}, topics={self.topics!r}, "
            f"publish={self.publish!r}, expires={self.expires!r})"
        )


def token_of(request: HandshakeRequest) -> str | None:
    """The token a handshake offers: ``Authorization: Bearer``, else ``?token=``.

    .. versionadded:: 0.2
    """
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return request.query.get("token") or None


class JWTAuthenticator:
    """Admit WebSocket clients that present a valid JWT; an ``authenticate`` hook.

    Pass it to :func:`serve_hub` as ``authenticate=``. Each client must send a
    token as ``Authorization: Bearer <token>`` or as ``?token=<token>`` in the
    URL (browsers cannot set headers on a WebSocket); without a valid one, the
    handshake is refused with HTTP 401. The client's identity is a
    :class:`Grant` made from the claims:

    * ``sub`` (required, a string): who the client is.
    * ``exp`` (optional, a number): when the token expires. An expired token is
      refused; a connection outlives its token by at most ``leeway`` seconds
      (plus a quarter of a second), then is closed with
      :attr:`CloseCode.TOKEN_EXPIRED`, unless the client sent a fresh token in
      a ``refresh`` message first. Run :meth:`close_expired` for that.
    * ``topics`` (optional, a list of strings): the topics the client may
      subscribe to, as names or patterns ending in ``*``. Without it, none.

    Args:
        secret: The shared secret of HS256 tokens.
        public_key: A PEM public key (RSA for RS256, EC for ES256); give
            this or ``secret``, not both.
        publish: Whether clients may ``publish`` and ``broadcast``.
        leeway: Seconds of clock skew tolerated on ``exp``; at most 2.
        wall_clock: The Unix time now; a test can replace it.

    .. versionadded:: 0.2
    """

    def __init__(
        self,
        *,
        secret: str | bytes | None = None,
        public_key: str | bytes | None = None,
        publish: bool = True,
        leeway: float = 1.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if (secret is None) == (public_key is None):
            raise ValueError("give a secret (HS256) or a public_key (RS256/ES256), not both")
        if not 0 <= leeway <= MAX_LEEWAY:
            raise ValueError(f"leeway must be 0 to {MAX_LEEWAY} seconds, got {leeway!r}")
        self._key: Any
        if secret is not None:
            if not secret:
                raise ValueError("the secret must not be empty")
            self._key, self._algorithms = secret, ["HS256"]
        else:
            assert public_key is not None
            self._key, self._algorithms = _load_public_key(public_key)
        self._publish = publish
        self._leeway = leeway
        self._wall_clock = wall_clock
        # (deadline in trio time, tie-breaker, grant): one heap for every client.
        self._heap: list[tuple[float, int, weakref.ref[Grant]]] = []
        self._order = itertools.count()
        self._wakeup = trio.Event()
        # Nothing is kept for expiry until close_expired() runs: without it,
        # the heap would only grow.
        self._watching = False

    @property
    def algorithms(self) -> tuple[str, ...]:
        """The signature algorithms accepted."""
        return tuple(self._algorithms)

    def verify(self, token: str) -> Grant:
        """Check ``token`` and return its grant.

        Raises:
            InvalidTokenError: saying what is wrong with it.
        """
        # Imported on first use: pyjwt brings in cryptography, which a hub
        # without tokens need not load.
        import jwt

        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=self._algorithms,
                # exp is checked below, against wall_clock, so that tests can
                # move time; nbf and iat keep pyjwt's own checks.
                options={"verify_exp": False, "require": ["sub"], "verify_aud": False},
                leeway=self._leeway,
            )
        except jwt.PyJWTError as exc:
            raise InvalidTokenError(f"invalid token: {exc}") from None
        subject = claims["sub"]
        if not isinstance(subject, str):
            raise InvalidTokenError("invalid token: 'sub' must be a string")
        expires = claims.get("exp")
        if expires is not None:
            if isinstance(expires, bool) or not isinstance(expires, int | float):
                raise InvalidTokenError("invalid token: 'exp' must be a number")
            if not math.isfinite(expires):
                raise InvalidTokenError("invalid token: 'exp' must be finite")
            if expires + self._leeway <= self._wall_clock():
                raise InvalidTokenError("invalid token: the token has expired")
        topics = claims.get("topics", [])
        if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
            raise InvalidTokenError("invalid token: 'topics' must be a list of strings")
        grant = Grant(
            subject=subject,
            topics=topics,
            publish=self._publish,
            expires=float(expires) if expires is not None else None,
        )
        grant._issuer = self
        return grant

    async def __call__(self, request: HandshakeRequest) -> Grant:
        """Admit a handshake with a valid token, or refuse it with 401."""
        # Here, not at the top: _server imports the HTTP side, which imports us.
        from ._server import HandshakeRejection

        token = token_of(request)
        if token is None:
            raise HandshakeRejection(
                401, "Unauthorized: send a token as 'Authorization: Bearer <token>' or '?token='"
            )
        try:
            grant = self.verify(token)
        except InvalidTokenError as exc:
            raise HandshakeRejection(401, f"Unauthorized: {exc}") from None
        self._watch(grant)
        return grant

    def _watch(self, grant: Grant) -> None:
        if grant.expires is None or not self._watching:
            return
        deadline = self._deadline(grant.expires)
        if self._heap and deadline >= self._heap[0][0]:
            heapq.heappush(self._heap, (deadline, next(self._order), weakref.ref(grant)))
            return
        heapq.heappush(self._heap, (deadline, next(self._order), weakref.ref(grant)))
        self._wakeup.set()

    def _deadline(self, expires: float) -> float:
        return trio.current_time() + (expires + self._leeway - self._wall_clock())

    async def close_expired(
        self, hub: Hub, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Close ``hub``'s clients whose token expired, with :attr:`CloseCode.TOKEN_EXPIRED`.

        Start it (``await nursery.start(authenticator.close_expired, hub)``)
        before :func:`serve_hub`, in the same nursery, and let it run for as
        long as the hub serves: tokens admitted while it does not run are never
        expired. It is one task and one heap for every client, not a task per
        client. A client that sent a fresh token in a ``refresh`` message in
        time stays.
        """
        if self._watching:
            raise RuntimeError("close_expired() is already running for this authenticator")
        self._watching = True
        try:
            task_status.started()
            await self._close_expired(hub)
        finally:
            self._watching = False
            self._heap.clear()

    async def _close_expired(self, hub: Hub) -> None:
        while True:
            heap = self._heap
            now = trio.current_time()
            expired: dict[int, Grant] = {}
            while heap and heap[0][0] <= now:
                _, _, ref = heapq.heappop(heap)
                grant = ref()
                if grant is None or grant.expires is None:
                    continue  # its handshake failed, or it was refreshed without exp
                if self._deadline(grant.expires) > now:
                    continue  # refreshed: its new deadline is in the heap too
                expired[id(grant)] = grant
            if expired:
                for client in hub.clients:
                    identity = client.identity
                    if isinstance(identity, Grant) and expired.get(id(identity)) is identity:
                        logger.info(
                            "client #%d (%s): token expired; closing with %d",
                            client.id,
                            identity,
                            CloseCode.TOKEN_EXPIRED,
                        )
                        client.close(CloseCode.TOKEN_EXPIRED, "token expired")
                await trio.sleep(_MIN_SWEEP_INTERVAL)
                continue
            self._wakeup = trio.Event()
            with trio.move_on_at(heap[0][0] if heap else math.inf):
                await self._wakeup.wait()


def _load_public_key(pem: str | bytes) -> tuple[Any, list[str]]:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = load_pem_public_key(data)
    except ValueError as exc:
        raise ValueError(f"not a PEM public key: {exc}") from None
    # One algorithm per key, so that a token cannot choose a weaker one.
    if isinstance(key, rsa.RSAPublicKey):
        return key, ["RS256"]
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key, ["ES256"]
    raise ValueError(f"the public key must be RSA (RS256) or EC (ES256), not {type(key).__name__}")
