"""The lean channel over the three-master Redis Cluster (persistence/resp_cluster.py):
each command goes to the master of its keys' slot on our own connections, replies come
back in order, and a stale slot map is followed through MOVED."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.crc import key_slot

from persistence import redis_keys
from persistence.redis_pool import RedisPool
from persistence.resp_cluster import SlotLean, first_key
from tests.backends import redis_settings


@pytest.fixture
async def pool() -> AsyncIterator[RedisPool]:
    async with RedisPool(redis_settings(cluster=True, timeout=10.0)) as opened:
        yield opened


def test_the_first_key_of_a_script_call_follows_its_key_count() -> None:
    assert first_key(("EVALSHA", "ab" * 20, 2, "k1", "k2", "arg")) == b"k1"
    assert first_key(("SMEMBERS", "set")) == b"set"
    assert first_key(("PING",)) is None


async def test_every_shard_is_served_by_its_master_in_order(pool: RedisPool) -> None:
    lean = pool.lean
    assert isinstance(lean, SlotLean)
    keys = [f"canopy:{{{n}}}:test-lean" for n in range(0, redis_keys.SHARDS, 8)]
    try:
        writes = await lean.execute([("SET", key, f"v{n}") for n, key in enumerate(keys)])
        assert writes == [b"OK"] * len(keys)
        reads = await lean.execute([("GET", key) for key in keys])
        assert reads == [f"v{n}".encode() for n in range(len(keys))]
        assert lean.redirected == 0  # each went straight to its master
        masters = {pool.client.nodes_manager.get_node_from_slot(key_slot(k.encode())).name
                   for k in keys}  # fmt: skip
        assert len(masters) == 3  # the batch was split over all three
    finally:
        await lean.execute([("DEL", key) for key in keys])


async def test_a_stale_slot_map_is_followed_through_moved(pool: RedisPool) -> None:
    lean = pool.lean
    assert isinstance(lean, SlotLean)
    key = "canopy:{7}:test-lean-moved"
    await lean.execute([("SET", key, "here")])
    manager = pool.client.nodes_manager
    slot = key_slot(key.encode())
    owner = manager.slots_cache[slot][0]
    other = next(n for n in manager.nodes_cache.values() if n.name != owner.name)
    manager.slots_cache[slot] = [other]  # as if the slot had moved: the map is stale
    try:
        assert await lean.execute([("GET", key), ("PING",)]) == [b"here", b"PONG"]
        assert lean.redirected == 1
        assert manager.slots_cache[slot][0].name == owner.name  # the map was refreshed
    finally:
        await lean.execute([("DEL", key)])
