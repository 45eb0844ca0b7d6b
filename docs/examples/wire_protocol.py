"""The ready server's wire protocol, frame by frame.

It serves the protocol with `protocol_handler`, the handler that
``python -m trio_hub serve`` runs, then connects Alice and Bob and prints each
frame as it travels: ``->`` to the server, ``<-`` from it.
"""

import json

import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from trio_hub import MAX_TOPICS_PER_CLIENT, open_hub, protocol_handler, serve_hub


async def send(name: str, connection: WebSocketConnection, frame: str) -> None:
    print(f"{name:5} -> {frame}")
    await connection.send_message(frame)


async def receive(name: str, connection: WebSocketConnection) -> None:
    print(f"{name:5} <- {await connection.get_message()}")


async def main() -> None:
    async with open_hub(on_message=protocol_handler) as hub, trio.open_nursery() as nursery:
        server = await nursery.start(serve_hub, hub, "127.0.0.1", 0)
        async with (
            open_websocket_url(server.url) as alice,
            open_websocket_url(server.url) as bob,
        ):
            print("--- echo")
            await send("alice", alice, '{"type":"echo","payload":{"text":"hi"}}')
            await receive("alice", alice)

            print("--- subscribe")
            await send("bob", bob, '{"type":"subscribe","payload":{"topic":"news"}}')
            await receive("bob", bob)

            print("--- broadcast")
            await send("alice", alice, '{"type":"broadcast","payload":"hello"}')
            await receive("alice", alice)
            await receive("bob", bob)
            await receive("alice", alice)

            print("--- publish")
            await send("alice", alice, '{"type":"publish","payload":{"topic":"news","data":1}}')
            await receive("bob", bob)
            await receive("alice", alice)

            print("--- unsubscribe")
            await send("bob", bob, '{"type":"unsubscribe","payload":{"topic":"news"}}')
            await receive("bob", bob)
            await send("alice", alice, '{"type":"publish","payload":{"topic":"news","data":2}}')
            await receive("alice", alice)

            print("--- errors")
            for frame in [
                '{"type":"echo"',
                '{"kind":"echo"}',
                '{"type":"shout","payload":"hi"}',
                '{"type":"subscribe","payload":"news"}',
            ]:
                await send("alice", alice, frame)
                await receive("alice", alice)
            # Fill Alice's subscriptions up to the limit, quietly, then one more.
            for index in range(MAX_TOPICS_PER_CLIENT):
                subscribe = {"type": "subscribe", "payload": {"topic": f"topic-{index}"}}
                await alice.send_message(json.dumps(subscribe))
                await alice.get_message()
            await send("alice", alice, '{"type":"subscribe","payload":{"topic":"one-more"}}')
            await receive("alice", alice)
            print("--- end")
        await server.aclose()


trio.run(main)
