"""Presence in the wire protocol, frame by frame (``python -m trio_hub serve --presence``).

Each client's identity comes from the ``authenticate`` hook, here the ``user``
query parameter, with a display name as its presence info.
"""

from functools import partial

import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from trio_hub import Admission, HandshakeRequest, open_hub, protocol_handler, serve_hub


async def send(name: str, connection: WebSocketConnection, frame: str) -> None:
    print(f"{name:5} -> {frame}")
    await connection.send_message(frame)


async def receive(name: str, connection: WebSocketConnection) -> None:
    print(f"{name:5} <- {await connection.get_message()}")


async def authenticate(request: HandshakeRequest) -> Admission:
    user = request.query.get("user", "anonymous")
    return Admission(user, {"name": user.title()})


async def main() -> None:
    async with (
        open_hub(on_message=protocol_handler, presence_events=True) as hub,
        trio.open_nursery() as nursery,
    ):
        server = await nursery.start(
            partial(serve_hub, hub, "127.0.0.1", 0, authenticate=authenticate)
        )
        async with open_websocket_url(server.url + "?user=alice") as alice:
            print("--- subscribe")
            await send("alice", alice, '{"type":"subscribe","payload":{"topic":"room"}}')
            await receive("alice", alice)
            async with open_websocket_url(server.url + "?user=bob") as bob:
                print("--- join")
                await send("bob", bob, '{"type":"subscribe","payload":{"topic":"room"}}')
                await receive("bob", bob)
                await receive("alice", alice)
                print("--- presence")
                await send("bob", bob, '{"type":"presence","payload":{"topic":"room"}}')
                await receive("bob", bob)
                print("--- errors")
                await send("bob", bob, '{"type":"presence","payload":{"topic":"lobby"}}')
                await receive("bob", bob)
                print("--- leave")
                await send("bob", bob, '{"type":"unsubscribe","payload":{"topic":"room"}}')
                await receive("bob", bob)
                await receive("alice", alice)
            print("--- end")
        await server.aclose()


trio.run(main)
