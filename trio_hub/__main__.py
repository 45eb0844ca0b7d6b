"""``python -m trio_hub serve``: a ready WebSocket hub server (also the ``trio-hub`` script).

It runs :func:`~trio_hub.open_hub` with the wire protocol handler
(:func:`trio_hub._protocol.protocol_handler`) behind :func:`~trio_hub.serve_hub`,
and logs one line per event to stderr. SIGINT and SIGTERM shut it down
gracefully: it stops accepting, drains every client, closes each with 1001, and
exits with status 0.
"""

from __future__ import annotations

import argparse
import hmac
import logging
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

import trio

from ._auth import Grant, JWTAuthenticator
from ._http import serve_metrics
from ._hub import open_hub
from ._policy import SlowClientPolicy
from ._protocol import protocol_handler
from ._server import Authenticator, HandshakeRejection, HandshakeRequest, HubServer, serve_hub
from .backends import BackendUnavailableError

if TYPE_CHECKING:
    from .backends import Backend

__all__ = ["main"]

logger: Final = logging.getLogger("trio_hub.cli")

AUTH_TOKEN_ENV: Final = "TRIO_HUB_AUTH_TOKEN"
API_KEY_ENV: Final = "TRIO_HUB_API_KEY"
JWT_SECRET_ENV: Final = "TRIO_HUB_JWT_SECRET"
_LOG_LEVELS: Final = ("debug", "info", "warning", "error")
# The same defaults as RedisBackend's, spelled out here for --help.
REDIS_PREFIX: Final = "trio_hub"

# The server's history defaults: enough for the built-in page to recover a
# reconnect of up to five minutes or 50 messages per topic, with memory bounded
# by HISTORY_TOPICS x HISTORY_SIZE x --max-message-size (50 KiB per topic and
# 5 MiB in all for 1 KiB messages).
HISTORY_SIZE: Final = 50
HISTORY_TTL: Final = 300.0
HISTORY_TOPICS: Final = 100
REDIS_START_TIMEOUT: Final = 5.0
REDIS_PRESENCE_TTL: Final = 10.0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process's exit status.

    Args:
        argv: The arguments, without the program name; ``sys.argv[1:]`` by default.

    Returns:
        0 after a graceful shutdown, 1 if the server could not start.
    """
    parser = _parser()
    options = parser.parse_args(argv)
    # Secrets from the environment are read here, not as the options' defaults,
    # so that --help never shows them.
    if options.auth_token is None:
        options.auth_token = os.environ.get(AUTH_TOKEN_ENV) or None
    if options.api_key is None:
        options.api_key = os.environ.get(API_KEY_ENV) or None
    if options.jwt_secret is None and options.jwt_public_key is None:
        options.jwt_secret = os.environ.get(JWT_SECRET_ENV) or None
    _check_combinations(parser, options)
    _configure_logging(options.log_level)
    try:
        return trio.run(_serve, options)
    except KeyboardInterrupt:
        # SIGINT before the signal handlers were installed (or after they were
        # removed): nothing was serving, so there is nothing to drain.
        return 130


# ---------------------------------------------------------------- parsing


def _parser() -> argparse.ArgumentParser:
    prog = "python -m trio_hub" if sys.argv[0].endswith("__main__.py") else "trio-hub"
    parser = argparse.ArgumentParser(
        prog=prog,
        description="trio_hub: a WebSocket broadcast hub for Trio.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run a hub server",
        description=(
            "Run a WebSocket hub that speaks the trio_hub wire protocol (a superset of "
            "the websocket-shootout protocol: echo, broadcast, and topic subscribe, "
            "unsubscribe and publish), and serves a browser page on GET /. "
            "SIGINT and SIGTERM shut it down gracefully: clients are closed with 1001 "
            "and the exit status is 0."
        ),
        formatter_class=_HelpFormatter,
    )
    network = serve.add_argument_group("network")
    network.add_argument("--host", default="127.0.0.1", help="address to listen on")
    network.add_argument(
        "--port", type=_port, default=8000, help="port to listen on; 0 picks a free one"
    )

    clients = serve.add_argument_group("clients")
    clients.add_argument(
        "--queue-size",
        type=_positive_int,
        default=256,
        help="messages that may wait for one client before the slow-client policy applies",
    )
    clients.add_argument(
        "--intake-limit",
        type=_non_negative_int,
        default=16384,
        help=(
            "overload: the hub-wide backlog (queued messages, at most 4 counted per client) "
            "above which clients' inbound messages wait until it is down to half; 0: never"
        ),
    )
    clients.add_argument(
        "--slow-client-policy",
        choices=[policy.value for policy in SlowClientPolicy],
        default=SlowClientPolicy.EVICT.value,
        help=(
            "what happens when a client's queue is full: close it with 4000 (evict), "
            "drop the new message (drop-newest) or drop the oldest queued one (drop-oldest)"
        ),
    )
    clients.add_argument(
        "--ping-interval",
        type=_non_negative_float,
        default=20.0,
        metavar="SECONDS",
        help="seconds between keepalive pings; 0 disables them",
    )
    clients.add_argument(
        "--pong-timeout",
        type=_positive_float,
        default=20.0,
        metavar="SECONDS",
        help="seconds a client has to answer a ping before it is closed with 4001",
    )
    clients.add_argument(
        "--write-timeout",
        type=_positive_float,
        default=10.0,
        metavar="SECONDS",
        help="seconds one write to a client may take before it is evicted with 4000",
    )
    clients.add_argument(
        "--drain-timeout",
        type=_non_negative_float,
        default=5.0,
        metavar="SECONDS",
        help="seconds a shutdown waits for queued messages to be written before closing",
    )

    limits = serve.add_argument_group("handshake and limits")
    limits.add_argument(
        "--max-message-size",
        type=_positive_int,
        default=1 << 20,
        metavar="BYTES",
        help="largest inbound message; a bigger one closes its client with 1009",
    )
    limits.add_argument(
        "--compression",
        choices=["off", "deflate"],
        default="deflate",
        help=(
            "permessage-deflate with the clients that offer it, as browsers do: each "
            "message is compressed once for all of them; off never compresses"
        ),
    )
    limits.add_argument(
        "--max-connections",
        type=_positive_int,
        default=None,
        metavar="N",
        help="most connections open at once; past it, HTTP 503 (default: no limit)",
    )
    limits.add_argument(
        "--handshake-timeout",
        type=_positive_float,
        default=10.0,
        metavar="SECONDS",
        help="seconds a client has to complete the WebSocket handshake",
    )
    limits.add_argument(
        "--allowed-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        dest="allowed_origins",
        help=(
            "an Origin allowed besides the server's own host (repeatable; '*' allows any) "
            "(default: none: a browser's Origin must match the Host header, or gets HTTP 403)"
        ),
    )
    limits.add_argument(
        "--auth-token",
        default=None,
        metavar="TOKEN",
        help=(
            "require this token, as 'Authorization: Bearer TOKEN' or '?token=TOKEN', "
            "or refuse the handshake with HTTP 401. Prefer setting the "
            f"{AUTH_TOKEN_ENV} environment variable, which other users cannot read in "
            f"the process list (default: ${AUTH_TOKEN_ENV} if set, else no authentication)"
        ),
    )

    api = serve.add_argument_group(
        "HTTP API and metrics",
        "Plain HTTP requests on the same port: POST /api/publish, POST /api/broadcast "
        "and GET /api/stats for your backend (with --api-key), GET /metrics for Prometheus.",
    )
    api.add_argument(
        "--api-key",
        default=None,
        metavar="KEY",
        help=(
            "enable the HTTP API, for requests with 'Authorization: Bearer KEY'; others get "
            f"HTTP 401. Prefer the {API_KEY_ENV} environment variable "
            f"(default: ${API_KEY_ENV} if set, else none: the API answers 404)"
        ),
    )
    api.add_argument(
        "--metrics",
        choices=("open", "key", "off"),
        default="open",
        help=(
            "GET /metrics in the Prometheus text format: to anyone (open), only with the "
            "API key (key), or not at all (off)"
        ),
    )
    api.add_argument(
        "--metrics-address",
        type=_address,
        default=None,
        metavar="HOST:PORT",
        help=(
            "serve GET /metrics on this address instead, to anyone (say, an internal "
            "interface); the main port then serves none; port 0 picks a free one "
            "(default: none: on the main port, as --metrics says)"
        ),
    )

    permissions = serve.add_argument_group("permissions")
    permissions.add_argument(
        "--client-publish",
        choices=("all", "none"),
        default=None,
        help=(
            "whether WebSocket clients may broadcast and publish; 'none' answers them with "
            "an error of code 'forbidden' "
            "(default: none with --api-key or a JWT option, else all)"
        ),
    )
    permissions.add_argument(
        "--jwt-secret",
        default=None,
        metavar="SECRET",
        help=(
            "require a JWT signed with this HS256 secret from every WebSocket client, as "
            "'Authorization: Bearer TOKEN' or '?token=TOKEN', or refuse the handshake with "
            f"HTTP 401. Prefer the {JWT_SECRET_ENV} environment variable "
            f"(default: ${JWT_SECRET_ENV} if set, else no tokens)"
        ),
    )
    permissions.add_argument(
        "--jwt-public-key",
        default=None,
        metavar="FILE",
        help=(
            "require a JWT signed with the private key of this PEM public key: RS256 for "
            "an RSA key, ES256 for an EC key (default: no tokens)"
        ),
    )

    presence = serve.add_argument_group("presence")
    presence.add_argument(
        "--presence",
        action="store_true",
        help=(
            "track who is subscribed to each topic: answer 'presence' requests, and send "
            "'join' and 'leave' messages to a topic's subscribers; with --redis, shared by "
            "every node"
        ),
    )

    # Where messages are shared with other hub processes; _backend() turns
    # these options into a Backend.
    backend = serve.add_argument_group(
        "backend",
        "By default every message stays in this process (one node). With --redis, "
        "several hub processes behind a load balancer share one Redis: a broadcast "
        "or publish on any of them reaches the clients of all of them. "
        "listenerCount in broadcastResult and publishResult then counts this "
        "process's clients only.",
    )
    backend.add_argument(
        "--redis",
        type=_redis_url,
        default=None,
        metavar="URL",
        help=(
            "share broadcasts and publications with the other hub processes that use "
            "this Redis, redis://[[user]:password@]host[:port][/db] (also rediss:// "
            "and unix://); needs the redis extra: pip install 'trio_hub[redis]' "
            "(default: none: this process only)"
        ),
    )
    backend.add_argument(
        "--redis-prefix",
        default=REDIS_PREFIX,
        metavar="PREFIX",
        help=(
            "start of every Redis channel name (PREFIX:broadcast, PREFIX:topic:TOPIC); "
            "processes with the same prefix share their messages"
        ),
    )
    backend.add_argument(
        "--redis-start-timeout",
        type=_positive_float,
        default=REDIS_START_TIMEOUT,
        metavar="SECONDS",
        help="seconds to keep trying to reach Redis at start before exiting with status 1",
    )
    backend.add_argument(
        "--redis-presence-ttl",
        type=_positive_float,
        default=REDIS_PRESENCE_TTL,
        metavar="SECONDS",
        help=(
            "with --presence: a node that dies without saying goodbye drops out of presence "
            "after this many seconds, and its clients' 'leave' messages go out within 4/3 of it"
        ),
    )

    # Per-topic history, so that a client that reconnects (the built-in page
    # does) gets what it missed: see docs/howto/reconnect.rst.
    history = serve.add_argument_group(
        "history",
        "Each topic keeps its latest publications, numbered, so that a client that "
        "reconnects with its last offset gets exactly what it missed (subscribe with "
        "recover). Memory is bounded by --history-topics x --history-size x the "
        "largest message; with --redis the history lives in Redis and is shared.",
    )
    history.add_argument(
        "--history-size",
        type=_non_negative_int,
        default=HISTORY_SIZE,
        metavar="N",
        help="publications kept per topic; 0 turns history off",
    )
    history.add_argument(
        "--history-ttl",
        type=_positive_float,
        default=HISTORY_TTL,
        metavar="SECONDS",
        help="seconds a publication stays in the history",
    )
    history.add_argument(
        "--history-topics",
        type=_positive_int,
        default=HISTORY_TOPICS,
        metavar="N",
        help=(
            "most topics with history kept in memory (the one that published least "
            "recently loses its history past that); not used with --redis"
        ),
    )

    output = serve.add_argument_group("output")
    output.add_argument(
        "--log-level",
        choices=_LOG_LEVELS,
        default="info",
        help=(
            "least severe log events to print to stderr (the 'listening on' line is "
            "printed whatever the level)"
        ),
    )
    return parser


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each default, except where "none" needs words, which the help gives."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default == []:
            return action.help
        return super()._get_help_string(action)


def _check_combinations(parser: argparse.ArgumentParser, options: argparse.Namespace) -> None:
    """Usage errors that no single option can tell: exit 2 with argparse's message."""
    if options.jwt_secret is not None and options.jwt_public_key is not None:
        parser.error("--jwt-secret and --jwt-public-key exclude each other")
    if options.auth_token and (options.jwt_secret or options.jwt_public_key):
        parser.error("--auth-token and the JWT options exclude each other")
    if options.metrics == "key" and not options.api_key:
        parser.error(f"--metrics key needs --api-key (or {API_KEY_ENV})")
    if options.metrics_address is not None and options.metrics != "open":
        parser.error("--metrics-address serves /metrics to anyone: it excludes --metrics key/off")
    uses_tokens = bool(options.jwt_secret) or options.jwt_public_key is not None
    if options.client_publish is None:
        # A server with a backend API or tokens is a deployment: the backend
        # publishes, and clients may not, unless the operator says so.
        options.client_publish = "none" if options.api_key or uses_tokens else "all"
    may_publish = options.client_publish == "all"
    options.jwt_authenticator = None
    if options.jwt_public_key is not None:
        try:
            with open(options.jwt_public_key, "rb") as file:
                pem = file.read()
            options.jwt_authenticator = JWTAuthenticator(public_key=pem, publish=may_publish)
        except (OSError, ValueError) as exc:
            parser.error(f"--jwt-public-key: {exc}")
    elif options.jwt_secret:
        options.jwt_authenticator = JWTAuthenticator(secret=options.jwt_secret, publish=may_publish)


def _address(text: str) -> tuple[str, int]:
    host, colon, port = text.rpartition(":")
    if not colon or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {text!r}")
    return host.strip("[]"), _port(port)


def _redis_url(text: str) -> str:
    # Checked here, so that a typo gets argparse's usage error, not a start failure.
    if urlsplit(text).scheme not in ("redis", "rediss", "unix"):
        raise argparse.ArgumentTypeError(
            f"a Redis URL starts with redis://, rediss:// or unix://, not {text!r}"
        )
    return text


def _port(text: str) -> int:
    value = _int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, not {text}")
    return value


def _positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def _positive_float(text: str) -> float:
    value = _float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = _float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be finite, not {text}")
    return value


# ---------------------------------------------------------------- logging


class _OneLineFormatter(logging.Formatter):
    """One line per event: an exception is summed up on its line, not as a traceback.

    Tracebacks still appear in full at ``--log-level debug``, where they help.
    """

    def __init__(self, *, full_tracebacks: bool) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._full_tracebacks = full_tracebacks

    def formatException(self, ei: logging._SysExcInfoType) -> str:
        if self._full_tracebacks:
            return super().formatException(ei)
        _, exc, tb = ei
        if exc is None:
            return ""
        where = ""
        frames = traceback.extract_tb(tb)
        if frames:
            last = frames[-1]
            where = f" (at {os.path.basename(last.filename)}:{last.lineno} in {last.name})"
        return f"{type(exc).__name__}: {exc}{where}"

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if self._full_tracebacks else text.replace("\n", " | ")


def _configure_logging(level_name: str) -> None:
    level = getattr(logging, level_name.upper())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLineFormatter(full_tracebacks=level <= logging.DEBUG))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Other libraries (trio-websocket, wsproto) only speak up for warnings:
    # their debug output is per frame, not per event.
    root.setLevel(max(level, logging.WARNING))
    logging.getLogger("trio_hub").setLevel(level)


# ----------------------------------------------------------------- serving


def _token_authenticator(token: str, identity: object) -> Authenticator:
    expected = token.encode()

    async def authenticate(request: HandshakeRequest) -> object:
        offered: list[str] = []
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            offered.append(credentials.strip())
        if "token" in request.query:
            offered.append(request.query["token"])
        # compare_digest: the time taken must not reveal how much of a guess was right.
        if not any(hmac.compare_digest(candidate.encode(), expected) for candidate in offered):
            raise HandshakeRejection(
                401, "Unauthorized: send 'Authorization: Bearer <token>' or '?token=<token>'"
            )
        return identity

    return authenticate


def _fixed_identity(identity: object) -> Authenticator:
    async def authenticate(request: HandshakeRequest) -> object:
        return identity

    return authenticate


def _authenticator(options: argparse.Namespace) -> Authenticator | None:
    """The handshake hook: a JWT, the shared token, or none; each client gets its Grant."""
    may_publish = options.client_publish == "all"
    jwt_authenticator: JWTAuthenticator | None = options.jwt_authenticator
    if jwt_authenticator is not None:
        return jwt_authenticator
    # One grant for every client: nothing is made per connection.
    identity = None if may_publish else Grant(publish=False)
    if options.auth_token:
        return _token_authenticator(options.auth_token, identity)
    return None if identity is None else _fixed_identity(identity)


def _backend(options: argparse.Namespace) -> Backend | None:
    """The backend that the options ask for; ``None`` is the in-process default.

    Raises:
        _StartError: if the options ask for a backend that cannot be made here.
    """
    if options.redis is None:
        return None
    try:
        # Imported only when asked for: coredis is an optional extra.
        from .backends.redis import RedisBackend
    except ImportError as exc:
        raise _StartError(str(exc)) from None
    try:
        return RedisBackend(
            options.redis,
            prefix=options.redis_prefix,
            start_timeout=options.redis_start_timeout,
            presence_ttl=options.redis_presence_ttl,
        )
    except ValueError as exc:
        raise _StartError(f"--redis: {exc}") from None


class _StartError(Exception):
    """The server cannot start; the message is the one line that says why."""


async def _serve(options: argparse.Namespace) -> int:
    try:
        backend = _backend(options)
    except _StartError as exc:
        logger.error("cannot start: %s", exc)  # noqa: TRY400  one line, no traceback
        return 1
    # Installed before anything listens, so that a signal at any moment from
    # here on gets the graceful shutdown, never a KeyboardInterrupt traceback.
    # (While the backend connects at start, a signal waits until it has
    # connected or given up, within --redis-start-timeout.)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        try:
            async with open_hub(
                queue_size=options.queue_size,
                on_slow_client=SlowClientPolicy(options.slow_client_policy),
                ping_interval=options.ping_interval or None,
                pong_timeout=options.pong_timeout,
                write_timeout=options.write_timeout,
                drain_timeout=options.drain_timeout,
                on_message=protocol_handler,
                intake_limit=options.intake_limit or None,
                backend=backend,
                history_size=options.history_size or None,
                history_ttl=options.history_ttl if options.history_size else None,
                max_history_topics=options.history_topics,
                presence_events=options.presence,
            ) as hub:
                if backend is not None:
                    logger.info("sharing messages with other nodes through %r", backend)
                authenticate = _authenticator(options)
                async with trio.open_nursery() as nursery:
                    if options.jwt_authenticator is not None:
                        # Before serving: every admitted token must be watched.
                        await nursery.start(options.jwt_authenticator.close_expired, hub)
                    try:
                        server: HubServer = await nursery.start(
                            partial(
                                serve_hub,
                                hub,
                                options.host,
                                options.port,
                                authenticate=authenticate,
                                allowed_origins=options.allowed_origins,
                                max_connections=options.max_connections,
                                handshake_timeout=options.handshake_timeout,
                                max_message_size=options.max_message_size,
                                api_key=options.api_key,
                                metrics="off" if options.metrics_address else options.metrics,
                                compression=(
                                    "deflate" if options.compression == "deflate" else None
                                ),
                            )
                        )
                    except OSError as exc:
                        logger.error(  # noqa: TRY400  the cause is all a user needs here
                            "cannot listen on %s:%s: %s", options.host, options.port, exc
                        )
                        nursery.cancel_scope.cancel()
                        return 1
                    if options.metrics_address is not None:
                        metrics_host, metrics_port = options.metrics_address
                        try:
                            await nursery.start(
                                partial(
                                    serve_metrics,
                                    server,
                                    metrics_host,
                                    metrics_port,
                                    handshake_timeout=options.handshake_timeout,
                                )
                            )
                        except OSError as exc:
                            logger.error(  # noqa: TRY400  the cause is all a user needs here
                                "cannot listen on %s:%s for /metrics: %s",
                                metrics_host,
                                metrics_port,
                                exc,
                            )
                            await server.aclose()
                            nursery.cancel_scope.cancel()
                            return 1
                    logger.info(
                        "WebSocket clients %s publish (--client-publish %s)%s; HTTP API %s",
                        "may" if options.client_publish == "all" else "may not",
                        options.client_publish,
                        "; connection tokens required" if options.jwt_authenticator else "",
                        "enabled" if options.api_key else "disabled",
                    )
                    if not logging.getLogger("trio_hub").isEnabledFor(logging.INFO):
                        # serve_hub logs this line at INFO; scripts that start the
                        # server parse it for the port, so it is there at any level.
                        print(f"listening on {server.url}", file=sys.stderr, flush=True)
                    async for signum in signals:
                        logger.info("%s received: shutting down", signal.Signals(signum).name)
                        break
                    await server.aclose()
                    nursery.cancel_scope.cancel()  # the token expiry task
        except BackendUnavailableError as exc:
            # Only open_hub() raises it, at start, before anything listens.
            logger.error("cannot start: %s", exc)  # noqa: TRY400  one line, no traceback
            return 1
    logger.info("shut down cleanly")
    return 0


if __name__ == "__main__":
    sys.exit(main())
