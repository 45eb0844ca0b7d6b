"""A small chat application built on trio_hub: the code under test in the testing how-to.

Browsers join rooms and say things in them; the server can make announcements.
The application is two functions: a message handler for the hub, and a piece of
code that only needs a :class:`~trio_hub.BroadcastSender`.
"""

from __future__ import annotations

from trio_hub import BroadcastSender, Client, Message


def room_topic(room: str) -> str:
    """The hub topic that carries one room's messages."""
    return f"room:{room}"


async def on_message(client: Client, message: Message) -> None:
    """Handle one message from a browser.

    * ``{"type": "join", "payload": "lobby"}`` joins a room, answered with ``joined``.
    * ``{"type": "say", "payload": {"room": "lobby", "text": "hi"}}`` sends ``said``
      to everyone in the room, the sender included.
    * Anything else is answered with an ``error``.
    """
    payload = message.payload
    if message.type == "join" and isinstance(payload, str) and payload:
        client.subscribe(room_topic(payload))
        client.send(Message("joined", payload))
    elif message.type == "say" and isinstance(payload, dict):
        room, text = payload.get("room"), payload.get("text")
        if not isinstance(room, str) or room_topic(room) not in client.topics:
            client.send(Message("error", {"code": "not_in_room", "detail": f"join {room!r} first"}))
            return
        said = {"room": room, "user": str(client.identity), "text": text}
        client.hub.publish(room_topic(room), Message("said", said))
    else:
        client.send(Message("error", {"code": "unknown", "detail": message.type}))


def announce(sender: BroadcastSender, text: str) -> int:
    """Tell every connected browser something; return how many were connected."""
    return sender.broadcast(Message("announcement", text))
