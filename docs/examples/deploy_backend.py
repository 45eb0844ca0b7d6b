"""A backend in front of trio_hub: it publishes over HTTP and hands browsers signed tokens.

The hub here is built from the library's pieces, in this process, so that the
example runs alone; ``trio-hub serve --api-key ... --jwt-secret ...`` is the
same server. The two functions marked "backend" are what your Django, Flask or
FastAPI code would call.
"""

import json
import time
from functools import partial

import httpx
import jwt
import trio
from trio_websocket import open_websocket_url

from trio_hub import JWTAuthenticator, open_hub, protocol_handler, serve_hub

API_KEY = "change-me: a long random API key"
JWT_SECRET = "change-me: a long random secret, 32 bytes or more"


def mint_token(user: str, topics: list[str], lifetime: int = 3600) -> str:
    """Backend: the token a logged-in user's page connects with."""
    claims = {"sub": user, "topics": topics, "exp": int(time.time()) + lifetime}
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


def publish(hub_url: str, topic: str, data: object) -> dict[str, object]:
    """Backend: push ``data`` to the subscribers of ``topic``, on every node."""
    response = httpx.post(
        f"{hub_url}/api/publish",
        json={"topic": topic, "data": data},
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=10,
    )
    response.raise_for_status()  # 401: wrong key; 400: see response.json()["detail"]
    reply: dict[str, object] = response.json()
    return reply


async def main() -> None:
    authenticator = JWTAuthenticator(secret=JWT_SECRET, publish=False)
    async with open_hub(on_message=protocol_handler) as hub, trio.open_nursery() as nursery:
        # First: it closes the connections whose token expired, with 4002.
        await nursery.start(authenticator.close_expired, hub)
        server = await nursery.start(
            partial(serve_hub, hub, "127.0.0.1", 0, authenticate=authenticator, api_key=API_KEY)
        )
        hub_url = f"http://127.0.0.1:{server.port}"

        token = mint_token("alice", ["user.alice.*", "news"])
        async with open_websocket_url(f"{server.url}?token={token}") as browser:

            async def say(type: str, payload: object) -> None:
                await browser.send_message(json.dumps({"type": type, "payload": payload}))
                print("browser <-", await browser.get_message())

            await say("subscribe", {"topic": "user.alice.inbox"})
            await say("subscribe", {"topic": "user.bob.inbox"})
            await say("broadcast", "hello everyone")

            # A sync backend call, as from a web framework's view: run in a thread here.
            reply = await trio.to_thread.run_sync(
                publish, hub_url, "user.alice.inbox", {"unread": 3}
            )
            print("backend got", reply)
            print("browser <-", await browser.get_message())
        server_stats = await trio.to_thread.run_sync(
            partial(
                httpx.get,
                f"{hub_url}/api/stats",
                headers={"Authorization": f"Bearer {API_KEY}"},
            )
        )
        print("stats: messages_published =", server_stats.json()["messages_published"])
        await server.aclose()
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
