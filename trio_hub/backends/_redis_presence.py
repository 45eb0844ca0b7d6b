"""Presence shared over Redis: every node's entries, and a heartbeat that notices dead nodes.

:class:`_RedisPresence` is the :class:`~trio_hub.backends.PresenceStore` of a
:class:`~trio_hub.backends.redis.RedisBackend`, and has no connection of its
own. Its writes go through the backend's outbox, so that they reach Redis in
order with the publications; its reads and its heartbeat use the backend's
publisher connection. The backend runs :meth:`_RedisPresence.run` once per
connection: Redis may have restarted, or this node's clients may have left
while it was unreachable, so it writes this node's entries again in full first.

The layout in Redis, after centrifuge's presence manager, with a node-level
heartbeat instead of one expiry per entry (a node refreshes one key, not every
entry, however many clients it has)::

    <prefix>:presence:topic:<topic>     hash: client id -> entry (JSON); each
                                        client id starts with its node's id
    <prefix>:presence:alive:<node>      "1" with a TTL of presence_ttl, set
                                        again every presence_ttl / 3
    <prefix>:presence:nodes             set: the nodes that have written entries
    <prefix>:presence:topics:<node>     set: the topics where a node has entries

A read filters out the entries of nodes whose alive key has expired, so a dead
node drops out of presence within presence_ttl. Each node's heartbeat also
lists the nodes whose key has expired; for each new one it reads that node's
entries on the topics that have local subscribers, and hands them to the hub as
expired (each surviving node tells its own subscribers). A dead node's entries
are deleted one presence_ttl after a node noticed it: by then every connected
node has had a heartbeat to notice it too.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, cast, final

import orjson
import trio

from .. import _codec
from .._errors import MessageDecodeError
from .._presence import PresenceInfo, PresenceSink, event_message
from ._base import BackendUnavailableError

if TYPE_CHECKING:
    from coredis.connection import BaseConnection

    from .._message import JSONValue
    from .redis import RedisBackend

# Nothing public: trio_hub.backends.redis imports the names it needs.
__all__: list[str] = []

logger: Final = logging.getLogger("trio_hub")


@final
class _Commands:
    """Commands for the outbox, sent in order; ``done`` is set once answered.

    With ``build``, the commands are made when the publish loop takes the item,
    from what has changed by then: presence changes wait in one place and go
    out together, however many there were, in order with the publications
    queued after them.
    """

    __slots__ = ("build", "commands", "done")

    def __init__(
        self,
        commands: list[tuple[bytes, ...]],
        done: trio.Event | None = None,
        build: Callable[[], list[tuple[bytes, ...]]] | None = None,
    ) -> None:
        self.commands = commands
        self.done = done
        self.build = build

    def take(self) -> list[tuple[bytes, ...]]:
        return self.build() if self.build is not None else self.commands


# KEYS: nodes set, own alive key. ARGV: own node, ttl in ms, alive key prefix.
# Returns the nodes whose alive key has expired.
_HEARTBEAT: Final = b"""
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
redis.call('SADD', KEYS[1], ARGV[1])
local dead = {}
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[3] .. node) == 0 then dead[#dead + 1] = node end
end
return dead
"""

# KEYS: the topics' hashes. ARGV: the node. Returns [index, entry, ...]: the
# node's entries in each hash, by the hash's 1-based index.
_ENTRIES_OF_NODE: Final = b"""
local found = {}
local start = ARGV[1] .. '.'
for index, key in ipairs(KEYS) do
  local all = redis.call('HGETALL', key)
  for i = 1, #all, 2 do
    if string.sub(all[i], 1, #start) == start then
      found[#found + 1] = index
      found[#found + 1] = all[i + 1]
    end
  end
end
return found
"""

# KEYS: nodes set, the node's topics set, its alive key. ARGV: the node, the
# hash key prefix, 1 to forget the node (0: keep it, it is being resynced), and
# 1 if the node is dead (then nothing happens if its heartbeat is back).
_CLEAR_NODE: Final = b"""
if ARGV[4] == '1' and redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
local start = ARGV[1] .. '.'
for _, topic in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local key = ARGV[2] .. topic
  for _, field in ipairs(redis.call('HKEYS', key)) do
    if string.sub(field, 1, #start) == start then redis.call('HDEL', key, field) end
  end
end
redis.call('DEL', KEYS[2])
if ARGV[3] == '1' then
  redis.call('SREM', KEYS[1], ARGV[1])
  redis.call('DEL', KEYS[3])
end
return 0
"""

# KEYS: the topic's hash. ARGV: alive key prefix, own node. Returns the
# entries of the other nodes whose alive key is there.
_READ: Final = b"""
local out = {}
local alive = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local node = string.match(all[i], '^([^.]+)')
  if node ~= ARGV[2] then
    local ok = alive[node]
    if ok == nil then
      ok = redis.call('EXISTS', ARGV[1] .. node) == 1
      alive[node] = ok
    end
    if ok then out[#out + 1] = all[i + 1] end
  end
end
return out
"""


@final
class _RedisPresence:
    """The :class:`~trio_hub.backends.PresenceStore` of a :class:`RedisBackend`."""

    __slots__ = (
        "_announce",
        "_backend",
        "_counts",
        "_flush_queued",
        "_full",
        "_last_heartbeat",
        "_mourned",
        "_node",
        "_outbox_full_logged",
        "_pending",
        "_prefix",
        "_sink",
        "_touched",
        "_ttl",
    )

    def __init__(self, backend: RedisBackend, sink: PresenceSink) -> None:
        self._backend = backend
        self._sink = sink
        self._node = backend._header[1:7].hex()
        self._prefix = f"{backend._prefix}:presence:"
        self._ttl = backend._presence_ttl
        # This node's entries per topic: the topics set needs only the count.
        self._counts: dict[str, int] = {}
        # Dead nodes this node has noticed, with when: to delete their
        # entries later, and not to send their leave events twice.
        self._mourned: dict[str, float] = {}
        self._last_heartbeat: float | None = None
        # Changes not yet sent: (topic, client id) -> the entry, or None to
        # delete it. Bounded by this node's entries; a join and a leave of the
        # same connection before they are sent cost one HDEL.
        self._pending: dict[tuple[str, str], PresenceInfo | None] = {}
        self._touched: set[str] = set()
        # Whether the outbox holds an item that will send _pending.
        self._flush_queued = False
        # Send everything again (after a reconnection), and announce it.
        self._full = False
        self._announce = False
        self._outbox_full_logged = False

    @property
    def node_id(self) -> str:
        """The id of this node (12 hex digits), which starts its clients' presence ids."""
        return self._node

    def _key(self, name: str) -> bytes:
        return (self._prefix + name).encode()

    def _hash(self, topic: str) -> bytes:
        return self._key(f"topic:{topic}")

    def _enqueue(self, commands: _Commands) -> bool:
        backend = self._backend
        if not backend._connected:
            return False  # written again in full once reconnected
        try:
            backend._outbox_send.send_nowait(commands)
        except trio.WouldBlock:
            if not self._outbox_full_logged:
                self._outbox_full_logged = True
                logger.warning(
                    "Redis at %s does not keep up: presence changes wait for room in the outbox",
                    backend._location,
                )
            return False
        self._outbox_full_logged = False
        return True

    def _request_flush(self) -> None:
        # Pending changes stay pending if this fails: the next change or
        # heartbeat asks again, and a reconnection sends everything.
        if not self._flush_queued and self._enqueue(_Commands([], build=self._build)):
            self._flush_queued = True

    def _build(self) -> list[tuple[bytes, ...]]:
        self._flush_queued = False
        topics_key = self._key(f"topics:{self._node}")
        commands: list[tuple[bytes, ...]] = []
        if self._full:
            # After a (re)connection Redis may have lost everything (a
            # restart), or hold entries that left during the outage: clear
            # this node's, write the current ones.
            self._full = False
            self._pending.clear()
            self._touched.clear()
            commands.append(self._clear_command(forget=False))
            backend = self._backend
            seen: set[str] = set()
            for topic, entry in self._sink.local_entries():
                commands.append(self._write_command(topic, entry))
                if topic not in seen:
                    seen.add(topic)
                    commands.append((b"SADD", topics_key, topic.encode()))
                if self._announce:
                    # Our heartbeat expired, so the other nodes sent our
                    # clients' leave events: they are back.
                    message = event_message("join", topic, entry)
                    channel = backend.channel_name(topic).encode()
                    commands.append((b"PUBLISH", channel, backend._header + message.encode()))
            self._announce = False
            return commands
        for (topic, client_id), change in self._pending.items():
            if change is None:
                commands.append((b"HDEL", self._hash(topic), client_id.encode()))
            else:
                commands.append(self._write_command(topic, change))
        for topic in self._touched:
            command = b"SADD" if self._counts.get(topic) else b"SREM"
            commands.append((command, topics_key, topic.encode()))
        self._pending.clear()
        self._touched.clear()
        return commands

    # ------------------------------------------------ PresenceStore

    def add(self, topic: str, entry: PresenceInfo) -> None:
        """See :meth:`PresenceStore.add <trio_hub.backends.PresenceStore.add>`."""
        self._counts[topic] = self._counts.get(topic, 0) + 1
        self._pending[topic, entry.client_id] = entry
        self._touched.add(topic)
        self._request_flush()

    def _write_command(self, topic: str, entry: PresenceInfo) -> tuple[bytes, ...]:
        data = _codec.encode(entry.to_json())
        return (b"HSET", self._hash(topic), entry.client_id.encode(), data)

    def remove(self, topic: str, entry: PresenceInfo) -> None:
        """See :meth:`PresenceStore.remove <trio_hub.backends.PresenceStore.remove>`."""
        count = self._counts.get(topic, 0) - 1
        if count <= 0:
            self._counts.pop(topic, None)
        else:
            self._counts[topic] = count
        self._pending[topic, entry.client_id] = None
        self._touched.add(topic)
        self._request_flush()

    async def entries(self, topic: str) -> list[PresenceInfo]:
        """See :meth:`PresenceStore.entries <trio_hub.backends.PresenceStore.entries>`."""
        backend = self._backend
        publisher = backend._publisher
        if publisher is None or not backend._connected:
            raise BackendUnavailableError(f"Redis at {backend._location} is unavailable")
        # Imported here, not at the top: trio_hub.backends.redis imports this module.
        from .redis import _FAILURES

        try:
            reply = await publisher.create_request(
                b"EVAL", _READ, 1, self._hash(topic), self._prefix + "alive:", self._node
            )
        except _FAILURES as exc:
            raise BackendUnavailableError(
                f"Redis at {backend._location} did not answer: {exc!r}"
            ) from exc
        assert isinstance(reply, list)
        return [entry for entry in map(_parse_entry, reply) if entry is not None]

    async def aclose(self) -> None:
        """See :meth:`PresenceStore.aclose <trio_hub.backends.PresenceStore.aclose>`.

        Deletes this node's entries and heartbeat, waiting up to ``io_timeout``
        for Redis to confirm; the other nodes then see no dead node to mourn.
        """
        done = trio.Event()
        if not self._enqueue(_Commands([self._clear_command(forget=True)], done)):
            return
        with trio.move_on_after(self._backend._io_timeout):
            await done.wait()

    def _clear_command(self, *, forget: bool, node: str | None = None) -> tuple[bytes, ...]:
        dead = node is not None
        node = self._node if node is None else node
        return (
            b"EVAL",
            _CLEAR_NODE,
            b"3",
            self._key("nodes"),
            self._key(f"topics:{node}"),
            self._key(f"alive:{node}"),
            node.encode(),
            self._prefix.encode() + b"topic:",
            b"1" if forget else b"0",
            b"1" if dead else b"0",
        )

    # -------------------------------------------------- the session

    async def run(self, publisher: BaseConnection) -> None:
        """Per connection: write this node's state again, then heartbeat until it breaks."""
        self._resync()
        interval = self._ttl / 3
        while True:
            await self._heartbeat(publisher)
            await trio.sleep(interval)

    def _resync(self) -> None:
        # One outbox item, built when it is sent: changes made after it come
        # after it.
        self._full = True
        self._announce = (
            self._last_heartbeat is not None
            and trio.current_time() - self._last_heartbeat >= self._ttl
        )
        self._counts.clear()
        for topic, _ in self._sink.local_entries():
            self._counts[topic] = self._counts.get(topic, 0) + 1
        self._flush_queued = False
        self._request_flush()

    async def _heartbeat(self, publisher: BaseConnection) -> None:
        ttl_ms = max(1, round(self._ttl * 1000))
        dead = await publisher.create_request(
            b"EVAL",
            _HEARTBEAT,
            2,
            self._key("nodes"),
            self._key(f"alive:{self._node}"),
            self._node,
            ttl_ms,
            self._prefix + "alive:",
        )
        now = trio.current_time()
        self._last_heartbeat = now
        if self._pending or self._full:
            self._request_flush()
        assert isinstance(dead, list)
        dead_nodes = {node.decode() for node in dead if isinstance(node, bytes)}
        # A node that is back (its heartbeat resumed) is no longer mourned.
        for node in list(self._mourned):
            if node not in dead_nodes:
                del self._mourned[node]
        topics = list(self._sink.local_topics())
        for node in sorted(dead_nodes):
            if node == self._node:
                continue
            noticed = self._mourned.get(node)
            if noticed is None:
                self._mourned[node] = now
                if topics:
                    await self._bury(publisher, node, topics)
            elif now - noticed >= self._ttl:
                # Every connected node has had a heartbeat to notice it.
                await publisher.create_request(*self._clear_command(forget=True, node=node))

    async def _bury(self, publisher: BaseConnection, node: str, topics: list[str]) -> None:
        reply = await publisher.create_request(
            b"EVAL",
            _ENTRIES_OF_NODE,
            len(topics),
            *(self._hash(topic) for topic in topics),
            node,
        )
        assert isinstance(reply, list)
        expired: dict[str, list[PresenceInfo]] = {}
        for position in range(0, len(reply) - 1, 2):
            index, data = reply[position], reply[position + 1]
            assert isinstance(index, int)
            entry = _parse_entry(data)
            if entry is not None:
                expired.setdefault(topics[index - 1], []).append(entry)
        if expired:
            logger.info(
                "presence: node %s stopped answering; %d entries expired",
                node,
                sum(map(len, expired.values())),
            )
        for topic, entries in expired.items():
            try:
                self._sink.expired(topic, entries)
            except Exception:
                logger.exception("presence: handing expired entries to the hub failed")


# Digits enough for an integer that orjson would decode as a float.
_LONG_NUMBER: Final = re.compile(rb"\d{19}")


def _parse_entry(data: object) -> PresenceInfo | None:
    if not isinstance(data, bytes):
        return None
    try:
        # orjson alone unless an integer might exceed 64 bits: _codec.decode's
        # check for that costs more than the decoding, once per entry of a read.
        value = orjson.loads(data) if _LONG_NUMBER.search(data) is None else _codec.decode(data)
        return PresenceInfo._from_json(cast("JSONValue", value))
    except (MessageDecodeError, orjson.JSONDecodeError, ValueError):
        logger.warning("presence: dropped an entry in Redis that no trio_hub wrote: %r", data)
        return None
