"""Drive the tutorial's server from Python, as two browser tabs would."""

import json

import trio
from chat_server import serve
from trio_websocket import open_websocket_url

from trio_hub import HubServer


async def fetch_page(port: int) -> bytes:
    """GET / over plain HTTP, as a browser does before it opens the WebSocket."""
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        response = b""
        while data := await stream.receive_some():
            response += data
    return response


async def main() -> None:
    async with trio.open_nursery() as nursery:
        server: HubServer = await nursery.start(serve, 0)

        page = await fetch_page(server.port)
        print(page.split(b"\r\n")[0].decode(), "with", b"<title>trio_hub</title>" in page)

        async with (
            open_websocket_url(server.url) as alice,
            open_websocket_url(server.url) as bob,
        ):
            subscribe = {"type": "subscribe", "payload": {"topic": "trio"}}
            await bob.send_message(json.dumps(subscribe))
            print("bob   <-", await bob.get_message())

            publish = {"type": "publish", "payload": {"topic": "trio", "data": "nurseries!"}}
            await alice.send_message(json.dumps(publish))
            print("bob   <-", await bob.get_message())
            print("alice <-", await alice.get_message())

            await alice.send_message(json.dumps({"type": "broadcast", "payload": "hi all"}))
            print("alice <-", await alice.get_message())
            print("bob   <-", await bob.get_message())

            await bob.send_message(json.dumps({"type": "dance", "payload": None}))
            print("bob   <-", await bob.get_message())

        nursery.cancel_scope.cancel()


trio.run(main)
