"""Admit clients by token, check their Origin, and know who each one is."""

from functools import partial

import trio
from trio_websocket import ConnectionRejected, open_websocket_url

from trio_hub import Client, HandshakeRejection, HandshakeRequest, Message, open_hub, serve_hub

USERS_BY_TOKEN = {"t0k3n-alice": "alice", "t0k3n-bob": "bob"}


async def authenticate(request: HandshakeRequest) -> str:
    """Return the user, which becomes `Client.identity`, or reject with 401/403."""
    authorization = request.headers.get("authorization", "")
    if authorization.startswith("Bearer "):
        token = authorization.removeprefix("Bearer ")
    elif "token" in request.query:
        token = request.query["token"]  # browsers cannot set headers on a WebSocket
    else:
        raise HandshakeRejection(401, "Send a token")
    user = USERS_BY_TOKEN.get(token)
    if user is None:
        raise HandshakeRejection(403, "Unknown token")
    return user


async def on_message(client: Client, message: Message) -> None:
    if message.type == "whoami":
        client.send(Message("you are", str(client.identity)))


async def try_connect(url: str, headers: dict[str, str] | None = None) -> None:
    extra_headers = [(name.encode(), value.encode()) for name, value in (headers or {}).items()]
    try:
        async with open_websocket_url(url, extra_headers=extra_headers) as connection:
            await connection.send_message(Message("whoami").text)
            print("  accepted:", await connection.get_message())
    except ConnectionRejected as rejection:
        body = (rejection.body or b"").decode().strip()
        print(f"  rejected: {rejection.status_code} {body}")


async def main() -> None:
    async with open_hub(on_message=on_message) as hub, trio.open_nursery() as nursery:
        server = await nursery.start(
            partial(
                serve_hub,
                hub,
                "127.0.0.1",
                0,
                authenticate=authenticate,
                # Pages served from another host that may connect, besides the
                # same-host ones that the default check admits.
                allowed_origins=["https://app.example.com"],
            )
        )
        url = server.url
        print("token in the query string:")
        await try_connect(url + "?token=t0k3n-alice")
        print("token in a header, from an allowed origin:")
        await try_connect(
            url,
            {"Authorization": "Bearer t0k3n-bob", "Origin": "https://app.example.com"},
        )
        print("no token:")
        await try_connect(url)
        print("a wrong token:")
        await try_connect(url + "?token=guess")
        print("a page on another site (checked before the token):")
        await try_connect(url + "?token=t0k3n-alice", {"Origin": "https://evil.example"})
        await server.aclose()


trio.run(main)
