"""Moving a Redis journal an older version left into today's key layout, at start.

Before shards, a conversation's stream and epoch were tagged by its id and one
node-wide set listed the journaled conversations (redis_keys.LEGACY_*); that set is
touched by every append, so it cannot live beside each conversation's slot on a
Redis Cluster. A node upgraded in place over such a Redis finds the set and moves
each conversation it lists: its stream (renamed; entries copied onto a stream that
already exists), its epoch (never lowered) and its membership in its shard's set, one
script per conversation, so a crash mid-way leaves each one either moved or not. The
journal and a flusher process may both run it at once: a second move of the same
conversation finds nothing left to move. An older version only ever ran on a single
Redis (its scripts touched several slots), so this runs there only.
"""

from __future__ import annotations

import logging
from typing import cast

from persistence import redis_keys
from persistence.redis_pool import Client

log = logging.getLogger(__name__)

BATCH = 500  # conversations moved per round trip

# KEYS: legacy stream, legacy epoch, stream, epoch, shard's journaled set, legacy set.
# ARGV: the conversation id.
_MOVE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('EXISTS', KEYS[3]) == 0 then
    redis.call('RENAME', KEYS[1], KEYS[3])
  else
    for _, entry in ipairs(redis.call('XRANGE', KEYS[1], '-', '+')) do
      redis.pcall('XADD', KEYS[3], entry[1], unpack(entry[2]))
    end
    redis.call('DEL', KEYS[1])
  end
  redis.call('SADD', KEYS[5], ARGV[1])
end
local old = tonumber(redis.call('GET', KEYS[2]) or '0')
if old > tonumber(redis.call('GET', KEYS[4]) or '0') then
  redis.call('SET', KEYS[4], old)
end
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[6], ARGV[1])
return 1
"""


async def migrate(client: Client) -> int:
    """Move every conversation the legacy set lists; how many were moved."""
    moved = 0
    while members := cast(
        list[bytes], await client.srandmember(redis_keys.LEGACY_JOURNALED, BATCH)
    ):
        async with client.pipeline(transaction=False) as pipe:
            for raw in members:
                cid = raw.decode()
                keys = (
                    redis_keys.legacy_journal(cid),
                    redis_keys.legacy_epoch(cid),
                    redis_keys.journal(cid),
                    redis_keys.epoch(cid),
                    redis_keys.journaled_of(cid),
                    redis_keys.LEGACY_JOURNALED,
                )
                pipe.eval(_MOVE, len(keys), *keys, cid)
            await pipe.execute()
        moved += len(members)
    if moved:
        log.warning("redis journal: moved %d conversations from the legacy key layout", moved)
    return moved
