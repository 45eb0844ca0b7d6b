"""The permission hook: a Grant subclass decides what each client may do."""

import trio

from trio_hub import Grant, Message, protocol_handler
from trio_hub.testing import open_test_hub


class RoomGrant(Grant):
    """Read any room; write only in your own."""

    def may_publish(self, topic: str | None) -> bool:
        return topic == f"room.{self.subject}"


async def main() -> None:
    async with open_test_hub(on_message=protocol_handler) as test_hub:
        # Your authenticate hook would return the grant; here it is given directly.
        alice = test_hub.connect(identity=RoomGrant(subject="alice", topics=["room.*"]))
        for type, payload in [
            ("subscribe", {"topic": "room.bob"}),
            ("subscribe", {"topic": "lobby"}),
            ("publish", {"topic": "room.bob", "data": "hi"}),
            ("publish", {"topic": "room.alice", "data": "hi"}),
            ("broadcast", "hi all"),
        ]:
            await alice.send(Message(type, payload))
            print(f"{type:9} {payload!r:38} -> {await alice.receive()}")


if __name__ == "__main__":
    trio.run(main)
