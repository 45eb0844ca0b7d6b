"""A hub inside a larger Trio app, and an orderly stop of the whole app."""

import itertools

import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from trio_hub import BroadcastSender, HubServer, Message, open_hub, serve_hub


async def ticker(sender: BroadcastSender) -> None:
    """The app's own work: something that broadcasts."""
    for number in itertools.count(1):
        sender.broadcast(Message("tick", number))
        await trio.sleep(0.01)


async def run_app(
    stop: trio.Event, *, task_status: trio.TaskStatus[HubServer] = trio.TASK_STATUS_IGNORED
) -> None:
    # The hub is opened first and so closed last: everything that uses it
    # lives in the nursery inside, and has ended before the hub shuts down.
    async with open_hub(drain_timeout=2.0) as hub:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_hub, hub, "127.0.0.1", 0)
            nursery.start_soon(ticker, hub)
            task_status.started(server)
            await stop.wait()  # in a real app: a signal, an admin command...
            # Stops the ticker, and stops serve_hub, which stops accepting, then
            # flushes every client's queue and closes each client with 1001.
            nursery.cancel_scope.cancel()
        print("app: server stopped, hub closed:", hub.closed)
    print("app: every task has ended")


async def main() -> None:
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        server: HubServer = await nursery.start(run_app, stop)
        async with open_websocket_url(server.url) as client:
            for _ in range(3):
                print("client got a", Message.decode(await client.get_message()).type)
            stop.set()
            try:
                while True:  # whatever was queued for it still arrives
                    await client.get_message()
            except ConnectionClosed as closed:
                if closed.reason is not None:  # None: no close frame at all
                    print("client: closed with", closed.reason.code, closed.reason.reason)


trio.run(main)
