"""The Redis history: the Lua scripts that number, keep and read a topic's publications.

A topic with history keeps its publications in a Redis Stream, and its position
(the last offset given, and the epoch) in a hash beside it. Numbering a message,
keeping it and publishing it must be one step: if two nodes could take their
offsets in one order and publish in the other, every node would receive offset 2
before offset 1. So it is one Lua script, which Redis runs with nothing in between, and
every node sees one order per topic. Reading is a script for the same reason:
the position and the entries come from one moment, and the script itself checks
that the stream still holds every publication after the client's position (none
trimmed, none older than the TTL), so that a recovery is exact or refused, never
partial.

This module holds the scripts, the keys they work on, and the requests that run
them and read their replies. :class:`~trio_hub.backends.redis.RedisBackend`
decides when they run: appends go through its outbox, in order with the plain
publications, and it keeps track of the callers that wait for an offset and of
the topics that need a new epoch after an outage.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, final

from coredis.commands.request import CommandRequest

from .._history import HistoryPolicy, HistoryUnavailableError, StreamPosition, new_epoch

if TYPE_CHECKING:
    from coredis.connection import BaseConnection

__all__ = ["append_command", "appended_position", "load_scripts", "read_history", "reset_epoch"]

# Every Redis key of a topic's history lives this long after its last
# publication (at least), so that idle topics cost Redis nothing forever.
_META_TTL: Final = 86_400  # seconds

# Number, keep and publish one message, atomically: so every node sees one
# order per topic. KEYS: meta hash, stream. ARGV: channel, header, message,
# size, epoch for a new history, stream TTL (ms), meta TTL (s).
_APPEND_SCRIPT: Final = b"""
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[5]
  redis.call('HSET', KEYS[1], 'e', epoch)
end
local offset = redis.call('HINCRBY', KEYS[1], 'o', 1)
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], offset .. '-0', 't', ms, 'd', ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
redis.call('EXPIRE', KEYS[1], ARGV[7])
redis.call('PUBLISH', ARGV[1], ARGV[2] .. offset .. ' ' .. epoch .. ' ' .. ARGV[3])
return {offset, epoch}
"""

# Read a topic's position and the publications after a position, only if the
# stream still holds all of them (none trimmed, none older than the TTL).
# KEYS: meta, stream. ARGV: since (-1: none), its epoch, limit (-1: none),
# epoch for a new history, TTL (ms, 0: none), meta TTL (s).
# Returns {top, epoch, recovered (0/1), offset, message, offset, message...}.
_READ_SCRIPT: Final = b"""
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[4]
  redis.call('HSET', KEYS[1], 'e', epoch, 'o', 0)
  redis.call('EXPIRE', KEYS[1], ARGV[6])
end
local top = tonumber(redis.call('HGET', KEYS[1], 'o') or '0')
local since = tonumber(ARGV[1])
local limit = tonumber(ARGV[3])
local ttl = tonumber(ARGV[5])
local oldest = -1
if ttl > 0 then
  local now = redis.call('TIME')
  oldest = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - ttl
end
local result = {top, epoch, 1}
if since >= 0 then
  if ARGV[2] ~= epoch or since > top then return {top, epoch, 0} end
  if since == top then return result end
end
if limit == 0 then return result end
local start = '-'
if since >= 0 then start = (since + 1) .. '-0' end
local entries
if limit > 0 then
  entries = redis.call('XRANGE', KEYS[2], start, '+', 'COUNT', limit)
else
  entries = redis.call('XRANGE', KEYS[2], start, '+')
end
local first = true
for _, entry in ipairs(entries) do
  local offset = tonumber(string.match(entry[1], '^(%d+)'))
  local fields = entry[2]
  if tonumber(fields[2]) > oldest then
    if first and since >= 0 and offset ~= since + 1 then return {top, epoch, 0} end
    first = false
    table.insert(result, offset)
    table.insert(result, fields[4])
  elseif since >= 0 then
    return {top, epoch, 0}
  end
end
if first and since >= 0 then return {top, epoch, 0} end
return result
"""

# A node that delivered publications unnumbered (Redis was out of reach) gives
# the topic a new epoch once Redis is back: no position from before may then
# pass for complete. KEYS: meta. ARGV: the new epoch.
_RESET_SCRIPT: Final = b"""
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'e', ARGV[1]) end
return 1
"""

_SCRIPTS: Final = (_APPEND_SCRIPT, _READ_SCRIPT, _RESET_SCRIPT)
_APPEND_SHA, _READ_SHA, _RESET_SHA = (
    hashlib.sha1(script).hexdigest().encode() for script in _SCRIPTS
)

# Told the position that Redis gave a publication, or why it gave none.
_Reply = Callable[[StreamPosition | BaseException], None]


@final
class _Numbered:
    """What an outbox entry for a topic with history carries besides its bytes."""

    __slots__ = ("policy", "reply", "topic")

    def __init__(self, topic: str, policy: HistoryPolicy, reply: _Reply | None) -> None:
        self.topic = topic
        self.policy = policy
        self.reply = reply

    def resolve(self, result: StreamPosition | BaseException) -> None:
        # At most once: whoever waits is told exactly one outcome.
        reply, self.reply = self.reply, None
        if reply is not None:
            reply(result)

    def fail(self, why: str) -> None:
        self.resolve(HistoryUnavailableError(why))


def _keys(prefix: str, topic: str) -> tuple[bytes, bytes]:
    # The meta hash (offset and epoch) and the stream.
    base = f"{prefix}:history:{topic}"
    return f"{base}:meta".encode(), f"{base}:stream".encode()


async def load_scripts(connection: BaseConnection) -> None:
    """Load the scripts into Redis, which may have restarted without them."""
    for script in _SCRIPTS:
        await connection.create_request(b"SCRIPT", b"LOAD", script)


async def reset_epoch(connection: BaseConnection, prefix: str, topic: str) -> None:
    """Give ``topic`` a new epoch, if Redis holds its history."""
    meta, _ = _keys(prefix, topic)
    await connection.create_request(b"EVALSHA", _RESET_SHA, 1, meta, new_epoch())


def append_command(
    prefix: str, channel: bytes, header: bytes, data: bytes, numbered: _Numbered
) -> CommandRequest[Any]:
    """The request that numbers, keeps and publishes ``data`` on ``numbered.topic``.

    What Redis publishes on ``channel`` is ``header``, then ``"<offset> <epoch> "``,
    then ``data``.
    """
    meta, stream = _keys(prefix, numbered.topic)
    policy = numbered.policy
    ttl_ms = round((policy.ttl if policy.ttl is not None else _META_TTL) * 1000)
    return CommandRequest(
        b"EVALSHA",
        _APPEND_SHA,
        2,
        meta,
        stream,
        channel,
        header,
        data,
        policy.size,
        new_epoch(),
        max(ttl_ms, 1),
        _meta_ttl(policy),
        execution_parameters={},
    )


def appended_position(reply: object) -> StreamPosition:
    """The position that Redis gave a publication: the reply to :func:`append_command`."""
    assert isinstance(reply, list)
    offset, epoch = reply
    assert isinstance(offset, int)
    assert isinstance(epoch, bytes)
    return StreamPosition(offset, epoch.decode())


async def read_history(
    connection: BaseConnection,
    prefix: str,
    topic: str,
    policy: HistoryPolicy,
    since: StreamPosition | None,
    limit: int | None,
) -> tuple[StreamPosition, list[tuple[int, bytes]], bool]:
    """Read a topic's position and the publications after ``since`` (at most ``limit``).

    Returns them with whether the stream held every publication after
    ``since``: if it did not, or ``since`` is of another epoch or past the
    position, that is ``False`` and there are no publications. A topic that
    has no history in Redis gets one, empty, with a new epoch.
    """
    meta, stream = _keys(prefix, topic)
    ttl_ms = 0 if policy.ttl is None else max(1, round(policy.ttl * 1000))
    reply = await connection.create_request(
        b"EVALSHA",
        _READ_SHA,
        2,
        meta,
        stream,
        -1 if since is None else since.offset,
        "" if since is None else since.epoch,
        -1 if limit is None else limit,
        new_epoch(),
        ttl_ms,
        _meta_ttl(policy),
    )
    assert isinstance(reply, list)
    top, epoch, recovered, *flat = reply
    assert isinstance(top, int)
    assert isinstance(epoch, bytes)
    entries: list[tuple[int, bytes]] = []
    for index in range(0, len(flat), 2):
        offset, data = flat[index], flat[index + 1]
        assert isinstance(offset, int)
        assert isinstance(data, bytes)
        entries.append((offset, data))
    return StreamPosition(top, epoch.decode()), entries, recovered == 1


def _meta_ttl(policy: HistoryPolicy) -> int:
    # The meta (offset and epoch) outlives the stream, so that offsets never
    # go back while entries remain.
    return max(_META_TTL, math.ceil(policy.ttl or 0) + 1)
