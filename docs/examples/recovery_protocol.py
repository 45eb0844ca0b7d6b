"""Recovery over the wire protocol: Bob drops off, comes back with his position.

A hub with history serves the ready server's protocol; each frame is printed as
it travels (``->`` to the server, ``<-`` from it). The epoch is random: it is
shown as ``E``.
"""

import json

import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from trio_hub import open_hub, protocol_handler, serve_hub

epochs: dict[str, str] = {}


def show(name: str, arrow: str, frame: str) -> None:
    for epoch in epochs:
        frame = frame.replace(epoch, "E")
    print(f"{name:5} {arrow} {frame}")


async def send(name: str, connection: WebSocketConnection, frame: str) -> None:
    show(name, "->", frame)
    await connection.send_message(frame)


async def receive(name: str, connection: WebSocketConnection) -> dict[str, object]:
    frame = await connection.get_message()
    parsed = json.loads(frame)
    if "epoch" in parsed["payload"]:
        epochs[parsed["payload"]["epoch"]] = "E"
    show(name, "<-", frame)
    return parsed


async def main() -> None:
    async with (
        open_hub(on_message=protocol_handler, history_size=100, history_ttl=300) as hub,
        trio.open_nursery() as nursery,
    ):
        server = await nursery.start(serve_hub, hub, "127.0.0.1", 0)
        async with open_websocket_url(server.url) as alice:
            print("--- subscribe")
            async with open_websocket_url(server.url) as bob:
                await send("bob", bob, '{"type":"subscribe","payload":{"topic":"news"}}')
                subscribed = await receive("bob", bob)
                await send("alice", alice, '{"type":"publish","payload":{"topic":"news","data":1}}')
                await receive("alice", alice)
                await receive("bob", bob)
            epoch = subscribed["payload"]["epoch"]  # type: ignore[index]

            print("--- missed while Bob is away")
            for data in (2, 3):
                frame = json.dumps({"type": "publish", "payload": {"topic": "news", "data": data}})
                await send("alice", alice, frame.replace(" ", ""))
                await receive("alice", alice)

            print("--- recover")
            async with open_websocket_url(server.url) as bob:
                recover = {"topic": "news", "recover": {"offset": 1, "epoch": epoch}}
                frame = json.dumps({"type": "subscribe", "payload": recover})
                await send("bob", bob, frame.replace(" ", ""))
                for _ in range(3):  # subscribed, then the two he missed
                    await receive("bob", bob)

                print("--- unrecoverable")
                recover = {"topic": "news", "recover": {"offset": 1, "epoch": "old"}}
                frame = json.dumps({"type": "subscribe", "payload": recover})
                await send("bob", bob, frame.replace(" ", ""))
                await receive("bob", bob)
                print("--- end")
        await server.aclose()


trio.run(main)
