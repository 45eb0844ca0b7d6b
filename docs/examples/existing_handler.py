"""Keep your own trio-websocket server, and hand each connection to the hub."""

from functools import partial

import trio
from trio_websocket import WebSocketRequest, open_websocket_url, serve_websocket

from trio_hub import Client, Hub, Message, open_hub


async def handler(
    hub: Hub, departures: trio.MemorySendChannel[str], request: WebSocketRequest
) -> None:
    # Your handler decides as before: here, one topic per room, from the path.
    room = request.path.removeprefix("/rooms/")
    if not request.path.startswith("/rooms/") or not room:
        await request.reject(404, body=b"Try /rooms/<name>")
        return
    connection = await request.accept()
    # Returns once the client has left. The handler must wait here anyway:
    # trio-websocket closes the connection when its handler returns.
    client = await hub.serve_client(connection, topics=[room])
    await departures.send(f"left {room!r} with close code {client.close_code}")


async def on_message(client: Client, message: Message) -> None:
    if message.type == "hello":  # answered once the client is registered
        client.send(Message("welcome", sorted(client.topics)))


async def main() -> None:
    departures, departed = trio.open_memory_channel[str](3)
    async with open_hub(on_message=on_message) as hub, trio.open_nursery() as nursery:
        server = await nursery.start(
            partial(
                serve_websocket, partial(handler, hub, departures), "127.0.0.1", 0, ssl_context=None
            )
        )
        base = f"ws://127.0.0.1:{server.port}/rooms"
        async with (
            open_websocket_url(f"{base}/trio") as alice,
            open_websocket_url(f"{base}/trio") as bob,
            open_websocket_url(f"{base}/asyncio") as carol,
        ):
            for connection in (alice, bob, carol):
                await connection.send_message(Message("hello").text)
                print("joined:", await connection.get_message())
            hub.publish("trio", Message("news", "structured concurrency"))
            hub.publish("asyncio", Message("news", "task groups"))
            print("alice:", await alice.get_message())
            print("bob:  ", await bob.get_message())
            print("carol:", await carol.get_message())
        for departure in sorted([await departed.receive() for _ in range(3)]):
            print("server:", departure)
        nursery.cancel_scope.cancel()


trio.run(main)
