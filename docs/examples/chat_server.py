"""The tutorial's server: broadcasts, topics, and the browser page at GET /.

Run it with ``python chat_server.py [PORT]`` (8000 by default), then open
http://127.0.0.1:8000/ in two browser windows. Ctrl+C stops it gracefully.
"""

import signal
import sys

import trio

from trio_hub import Client, HubServer, Message, open_hub, serve_hub


async def on_message(client: Client, message: Message) -> None:
    """Answer one message from a client: the protocol of the built-in page."""
    hub = client.hub
    match message.type, message.payload:
        case "broadcast", payload:
            hub.broadcast(Message("broadcast", payload))
        case "subscribe", {"topic": str(topic)} if topic:
            client.subscribe(topic)
            client.send(Message("subscribed", {"topic": topic}))
        case "unsubscribe", {"topic": str(topic)} if topic:
            client.unsubscribe(topic)
            client.send(Message("unsubscribed", {"topic": topic}))
        case "publish", {"topic": str(topic), "data": data} if topic:
            count = hub.publish(topic, Message("message", {"topic": topic, "data": data}))
            client.send(Message("publishResult", {"topic": topic, "listenerCount": count}))
        case _:
            detail = f"cannot handle a {message.type!r} message with this payload"
            client.send(Message("error", {"code": "invalid_payload", "detail": detail}))


async def serve(
    port: int, *, task_status: trio.TaskStatus[HubServer] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run the hub and its server until cancelled."""
    async with open_hub(on_message=on_message) as hub:
        await serve_hub(hub, "127.0.0.1", port, task_status=task_status)


async def main(port: int) -> None:
    async with trio.open_nursery() as nursery:
        server: HubServer = await nursery.start(serve, port)
        print(f"Open http://127.0.0.1:{server.port}/ in a browser; Ctrl+C stops.", flush=True)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break
        print("Stopping: flushing every client's queue, then closing it with 1001.")
        nursery.cancel_scope.cancel()
    print("Stopped.")


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 8000)
