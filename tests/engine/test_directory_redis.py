"""Leases over a real Redis: one holder at a time, the epoch grows at each acquisition,
every renewal goes out in one round trip, and a lease another node took is noticed."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as redis
from redis.asyncio.connection import AbstractConnection

from engine.directory import LeaseHeld
from engine.directory_redis import RedisDirectory
from persistence import redis_keys
from persistence.journal import NoJournal
from persistence.journal_redis import Fenced, RedisJournal
from persistence.redis_pool import RedisPool
from tests.backends import redis_settings, wipe_redis
from tests.services import REDIS_URL, require


@pytest.fixture
async def client() -> AsyncIterator[redis.Redis]:
    require("redis")
    wipe_redis()
    connection = redis.Redis.from_url(REDIS_URL)
    yield connection
    await connection.aclose()


class Journal(NoJournal):
    def __init__(self) -> None:
        self.owned: set[str] = set()

    async def acquire(self, conversation_id: str) -> None:
        self.owned.add(conversation_id)

    def release(self, conversation_id: str) -> None:
        self.owned.discard(conversation_id)


def directory(client: redis.Redis, node: str, lease: float = 30.0) -> RedisDirectory:
    return RedisDirectory(client, Journal(), node, lease_seconds=lease)


async def eventually(condition: Callable[[], Any], seconds: float = 10.0) -> None:
    """Redis' clock expires keys: poll it with a bounded deadline."""
    deadline = time.monotonic() + seconds
    while not await condition():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.02)


async def test_one_holder_at_a_time_and_the_epoch_grows(client: redis.Redis) -> None:
    async with directory(client, "a:1") as a, directory(client, "b:2") as b:
        assert await a.acquire("c1") == 1
        assert a.is_held("c1") and "c1" in a._journal.owned  # type: ignore[attr-defined]
        assert await client.get(redis_keys.lease("c1")) == b"a:1 1"
        with pytest.raises(LeaseHeld) as refused:
            await b.acquire("c1")
        assert refused.value.owner == "a:1" and not b.is_held("c1")
        a.release("c1")
        assert not a.is_held("c1")
        await a._round()  # the release goes out with the next round
        assert await client.get(redis_keys.lease("c1")) is None
        assert await b.acquire("c1") == 2
        b.release("c1")
        await b._round()
        assert await a.acquire("c1") == 3
    assert await client.get(redis_keys.lease("c1")) is None  # closing released it


async def test_renewing_many_leases_is_one_round_trip(
    client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with directory(client, "a:1") as a:
        for n in range(50):
            await a.acquire(f"c{n}")
        await client.pexpire(redis_keys.lease("c7"), 1_000)  # nearly expired
        sends = 0
        original = AbstractConnection.send_packed_command

        async def counted(self: AbstractConnection, *args: Any, **kwargs: Any) -> None:
            nonlocal sends
            sends += 1
            await original(self, *args, **kwargs)

        monkeypatch.setattr(AbstractConnection, "send_packed_command", counted)
        await a._round()
        monkeypatch.undo()
        assert sends == 1
        assert a.stats()["renewals"] == 50 and a.stats()["renewal_round_trips"] == 1
        assert await client.pttl(redis_keys.lease("c7")) > 10_000  # renewed to 30 s


async def test_a_lease_taken_after_it_expired_is_lost(client: redis.Redis) -> None:
    lost: list[str] = []
    async with directory(client, "a:1", lease=0.3) as a, directory(client, "b:2") as b:
        a.on_lost(lost.append)
        assert a._task is not None
        a._task.cancel()  # a pauses: its renewals stop
        await asyncio.gather(a._task, return_exceptions=True)
        assert await a.acquire("c1") == 1

        async def expired() -> bool:
            return await client.get(redis_keys.lease("c1")) is None

        await eventually(expired)
        assert not a.can_acknowledge()  # 0.9 of the lease passed without a renewal
        assert await b.acquire("c1") == 2
        await a._round()  # a wakes and renews
        assert lost == ["c1"] and not a.is_held("c1")
        assert "c1" not in a._journal.owned  # type: ignore[attr-defined]
        assert a.stats()["lost_leases"] == 1
        assert await client.get(redis_keys.lease("c1")) == b"b:2 2"  # untouched


async def test_an_expired_lease_nobody_took_is_taken_back(client: redis.Redis) -> None:
    async with directory(client, "a:1") as a:
        assert await a.acquire("c1") == 1
        await client.delete(redis_keys.lease("c1"))  # as if it expired
        await a._round()
        assert a.is_held("c1") and await client.get(redis_keys.lease("c1")) == b"a:1 1"
        assert a.can_acknowledge()


@pytest.mark.parametrize("cluster", [False, True], ids=["redis", "redis-cluster"])
async def test_taking_the_lease_fences_the_last_owners_journal(cluster: bool) -> None:
    """One epoch: the script that takes the lease increments the journal's epoch, so the
    previous holder's appends are refused with no journal acquire of its own."""
    settings = redis_settings(cluster=cluster)
    cid = f"fence-{uuid.uuid4()}"
    async with RedisPool(settings) as pool, RedisJournal(pool) as old, RedisJournal(pool) as new:
        first = RedisDirectory(pool.client, old, "a:1", lease_seconds=0.3)
        second = RedisDirectory(pool.client, new, "b:2", lease_seconds=30)
        async with first, second:
            assert first._task is not None
            first._task.cancel()  # a pauses: its lease runs out
            await asyncio.gather(first._task, return_exceptions=True)
            assert await first.acquire(cid) == 1
            await old.append(cid, 1, b"first")

            async def expired() -> bool:
                return await pool.client.get(redis_keys.lease(cid)) is None

            await eventually(expired)
            assert await second.acquire(cid) == 2
            assert await pool.client.get(redis_keys.epoch(cid)) == b"2"  # one counter
            with pytest.raises(Fenced):
                await old.append(cid, 2, b"stale")
            await new.append(cid, 2, b"second")
            assert [e.payload for e in await new.tail(cid, 0)] == [b"first", b"second"]
