"""The smallest useful hub: serve WebSocket clients, then broadcast and publish."""

import trio
from trio_websocket import open_websocket_url

from trio_hub import Client, Message, open_hub, serve_hub


async def on_message(client: Client, message: Message) -> None:
    # Each client's inbound messages arrive here, in order.
    if message.type == "subscribe" and isinstance(message.payload, str):
        client.subscribe(message.payload)
        client.send(Message("subscribed", message.payload))


async def main() -> None:
    async with open_hub(on_message=on_message) as hub, trio.open_nursery() as nursery:
        # Port 0 picks a free port; server.url says which one.
        server = await nursery.start(serve_hub, hub, "127.0.0.1", 0)
        async with (
            open_websocket_url(server.url) as alice,
            open_websocket_url(server.url) as bob,
        ):
            await bob.send_message(Message("subscribe", "news").text)
            print("bob:  ", await bob.get_message())

            hub.broadcast(Message("hello", "everyone"))  # returns at once
            hub.publish("news", Message("headline", "trio_hub 0.1"))  # bob only

            print("alice:", await alice.get_message())
            print("bob:  ", await bob.get_message())
            print("bob:  ", await bob.get_message())
        await server.aclose()  # stop accepting, drain, close clients with 1001


trio.run(main)
