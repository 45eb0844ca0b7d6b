"""The websocket-shootout subset of the trio_hub wire protocol, shared by the peer servers.

Every peer server in this folder parses and answers messages with these helpers, so
that the servers differ only in how they write a broadcast to their connections. That
difference is what the benchmark measures.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reply:
    """What the server must do for one inbound text message.

    Attributes:
        broadcast: Text to send to every connected client first, or ``None``.
        to_sender: Text to send back to the sender afterwards.
    """

    broadcast: str | None
    to_sender: str


def _error(code: str, detail: str) -> Reply:
    return Reply(None, json.dumps({"type": "error", "payload": {"code": code, "detail": detail}}))


def handle_text(text: str | bytes, listener_count: int) -> Reply:
    """Work out the answer to one inbound message.

    Args:
        text: The message as received.
        listener_count: How many connections the broadcast will reach, for
            ``broadcastResult``.

    Returns:
        The frames to send.
    """
    try:
        envelope = json.loads(text)
    except ValueError:
        return _error("invalid_json", "message is not JSON")
    if not isinstance(envelope, dict) or not isinstance(envelope.get("type"), str):
        return _error("invalid_envelope", "expected an object with a string 'type'")
    kind: str = envelope["type"]
    payload: object = envelope.get("payload")
    if kind == "echo":
        return Reply(None, json.dumps({"type": "echo", "payload": payload}))
    if kind == "broadcast":
        # Encoded once per broadcast, as every serious hub does: the per-delivery cost
        # we want to compare is the write path, not JSON encoding.
        return Reply(
            json.dumps({"type": "broadcast", "payload": payload}),
            json.dumps(
                {"type": "broadcastResult", "payload": payload, "listenerCount": listener_count}
            ),
        )
    return _error("unknown_type", f"unknown message type {kind!r}")


def parse_args(description: str) -> argparse.Namespace:
    """Parse the ``--host``/``--port``/``--compression`` options the peer servers share.

    Args:
        description: One line for ``--help``.

    Returns:
        The parsed options.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--compression",
        choices=["off", "deflate"],
        default="off",
        help="permessage-deflate, where the server supports it (the load generator's "
        "--compression fails a run that does not get it)",
    )
    return parser.parse_args()


def announce(host: str, port: int) -> None:
    """Print the line that ``run.py`` waits for, in the same form as ``trio_hub serve``.

    Args:
        host: The bound address.
        port: The real bound port (never 0).
    """
    print(f"listening on ws://{host}:{port}/", file=sys.stderr, flush=True)
