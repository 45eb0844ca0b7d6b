"""A Quart-Trio app with a hub: the ready server's wire protocol on /ws, and a page at /.

Run it with ``python quart_trio_app.py --port 8000`` (port 0 picks a free one),
then open http://127.0.0.1:8000/ in two browser windows. It is served by
Hypercorn's Trio worker on 127.0.0.1. Ctrl+C (or SIGTERM) stops it gracefully:
the hub flushes every client's queue and closes it with 1001, then Hypercorn
stops.
"""

import argparse
import signal
from functools import partial

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from quart import websocket
from quart_trio import QuartTrio

from trio_hub import protocol_handler
from trio_hub.asgi import QuartTrioHub, quart_transport

app = QuartTrio(__name__)
# The hub opens when Hypercorn starts the app, and shuts down with it.
hub_of_app = QuartTrioHub(app, on_message=protocol_handler, write_timeout=5.0)

PAGE = """<!doctype html>
<title>trio_hub on Quart-Trio</title>
<h1>trio_hub on Quart-Trio</h1>
<form id="send"><input id="text" autofocus> <button>Broadcast</button></form>
<ul id="log"></ul>
<script>
  const socket = new WebSocket(`ws://${location.host}/ws`);
  const log = (text) => {
    const item = document.createElement("li");
    item.textContent = text;
    document.getElementById("log").append(item);
  };
  socket.onmessage = (event) => log(event.data);
  socket.onclose = (event) => log(`closed: ${event.code}`);
  document.getElementById("send").onsubmit = (event) => {
    event.preventDefault();
    const text = document.getElementById("text");
    socket.send(JSON.stringify({type: "broadcast", payload: text.value}));
    text.value = "";
  };
</script>
"""


@app.get("/")
async def page() -> str:
    """The app's own page: a broadcast box."""
    return PAGE


@app.get("/stats")
async def stats() -> dict[str, int]:
    """A few of the hub's counters, as JSON."""
    statistics = hub_of_app.hub.statistics()
    return {"clients": statistics.clients, "deliveries": statistics.deliveries}


@app.websocket("/ws")
async def ws() -> None:
    """Hand the connection to the hub; return once the client has left."""
    hub = hub_of_app.hub
    await hub.serve_client(await quart_transport(hub, websocket))


async def wait_for_signal() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            print("Stopping: flushing every client's queue, then closing it with 1001.", flush=True)
            return


async def main(port: int) -> None:
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    # Hypercorn pings (the hub does not ping ASGI clients: see trio_hub.asgi).
    config.websocket_ping_interval = 20.0
    config.accesslog = None
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(
            partial(
                serve,
                app,
                config,
                # The hub shuts down (drain, then 1001) before Hypercorn stops.
                shutdown_trigger=hub_of_app.shutdown_trigger(wait_for_signal),
            )
        )
        print(f"Listening on {binds[0]}/ (WebSocket at /ws); Ctrl+C stops.", flush=True)
    print("Stopped.", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    trio.run(main, parser.parse_args().port)
