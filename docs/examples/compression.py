"""permessage-deflate: one compressed frame per message, shared by every client that asked."""

import trio
from trio_websocket import open_websocket_url
from websockets.trio.client import connect

from trio_hub import Message, open_hub, protocol_handler, serve_hub

ECHO = Message("echo").text


async def main() -> None:
    async with open_hub(on_message=protocol_handler) as hub, trio.open_nursery() as nursery:
        # compression="deflate" is the default; compression=None turns it off.
        server = await nursery.start(serve_hub, hub, "127.0.0.1", 0)
        async with (
            connect(server.url) as first,  # websockets offers permessage-deflate
            connect(server.url) as second,
            open_websocket_url(server.url) as plain,  # trio-websocket offers nothing
        ):
            # One echo each: once answered, a client is surely registered.
            for connection in (first, second):
                await connection.send(ECHO)
                await connection.recv()
            await plain.send_message(ECHO)
            await plain.get_message()
            print("negotiated:", first.response.headers["Sec-WebSocket-Extensions"])

            rows = [{"user": f"user{n % 4}", "text": f"message number {n}"} for n in range(50)]
            big = Message("history", rows)
            small = Message("tick", 1)  # under the threshold: sent as it is
            hub.broadcast(big)
            hub.broadcast(small)
            for name, connection in (("first", first), ("second", second)):
                print(f"{name}: {len(await connection.recv())} + {len(await connection.recv())}")
            print(f"plain: {len(await plain.get_message())} + {len(await plain.get_message())}")

            statistics = hub.statistics().compression
            print("compressed once:", statistics.messages_compressed)
            print("compressed deliveries:", statistics.deliveries_compressed)
            saved = 1 - statistics.bytes_after / statistics.bytes_before
            print(f"bytes saved on the big message: over {int(saved * 10) * 10} %")
        await server.aclose()


trio.run(main)
