"""Membership over a real Redis: members see each other, a leaver disappears at once,
a silent one once its heartbeat expires, and a late heartbeat stops acknowledgements."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as redis

from engine.membership_redis import RedisMembership
from persistence import redis_keys
from tests.backends import wipe_redis
from tests.services import REDIS_URL, require

INTERVAL, DEADLINE = 0.05, 0.3


@pytest.fixture
async def client() -> AsyncIterator[redis.Redis]:
    require("redis")
    wipe_redis()
    connection = redis.Redis.from_url(REDIS_URL)
    yield connection
    await connection.aclose()


def member(client: redis.Redis, node_id: str) -> RedisMembership:
    return RedisMembership(
        client, node_id, f"http://{node_id}", lambda: {"actors": 3},
        interval=INTERVAL, deadline=DEADLINE,
    )  # fmt: skip


async def eventually(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    """Redis' clock expires keys: poll it with a bounded deadline."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.02)


def ids(membership: RedisMembership) -> set[str]:
    return {m.node_id for m in membership.live()}


async def test_two_members_see_each_other_and_a_leaver_disappears(client: redis.Redis) -> None:
    seen: list[frozenset[str]] = []
    async with member(client, "a:1") as a:
        a.watch(seen.append)
        async with member(client, "b:2") as b:
            assert ids(b) == {"a:1", "b:2"}
            await eventually(lambda: ids(a) == {"a:1", "b:2"})
            found = {m.node_id: m for m in a.live()}["b:2"]
            assert found.url == "http://b:2" and found.stats == {"actors": 3}
            assert a.can_acknowledge() and a.stats()["live_nodes"] == 2
        assert await client.get(redis_keys.member("b:2")) is None  # left cleanly
        assert await client.zscore(redis_keys.MEMBERS, "b:2") is None
        await eventually(lambda: ids(a) == {"a:1"})
        assert seen[-1] == frozenset({"a:1"}) and frozenset({"a:1", "b:2"}) in seen


async def test_a_silent_member_expires_and_stops_acknowledging_first(client: redis.Redis) -> None:
    async with member(client, "a:1") as a, member(client, "b:2") as b:
        await eventually(lambda: ids(a) == {"a:1", "b:2"})
        assert b._task is not None
        b._task.cancel()  # b hangs: no more heartbeats, no clean leave
        await asyncio.gather(b._task, return_exceptions=True)
        deadline = time.monotonic() + 10
        while True:  # while b may acknowledge, its heartbeat is still there for all to see
            acknowledging = b.can_acknowledge()
            present = await client.exists(redis_keys.member("b:2"))
            assert present or not acknowledging
            if not present:
                break
            assert time.monotonic() < deadline, "the heartbeat never expired"
            await asyncio.sleep(0.01)
        assert not b.can_acknowledge()
        await eventually(lambda: "b:2" not in ids(a))


async def test_a_member_record_survives_any_stats(client: redis.Redis) -> None:
    stats: dict[str, Any] = {"nested": {"x": [1, 2]}, "ratio": 0.5}
    async with RedisMembership(
        client, "c:3", "http://c", lambda: stats, interval=INTERVAL, deadline=DEADLINE
    ) as c:
        assert c.live()[0].stats == stats
    with pytest.raises(ValueError, match="longer than its interval"):
        RedisMembership(client, "d", "http://d", dict, interval=1.0, deadline=0.5)


async def test_a_member_joins_once_announced_and_a_leaving_one_is_placed_on_no_more(
    client: redis.Redis,
) -> None:
    quiet = RedisMembership(
        client, "c:3", "http://c:3", dict, interval=INTERVAL, deadline=DEADLINE,
        announce_at_start=False,
    )  # fmt: skip
    told: list[frozenset[str]] = []
    async with member(client, "a:1") as a:
        async with quiet:
            assert ids(quiet) == {"a:1"}  # it reads the members but is not one
            assert not quiet.can_acknowledge()
            await asyncio.sleep(INTERVAL * 3)  # heartbeats that must not announce it
            assert "c:3" not in ids(a)
            await quiet.announce()
            await eventually(lambda: a.placed() == {"a:1", "c:3"})
            assert quiet.can_acknowledge()
            await quiet.leave()
            await quiet.until_seen()  # a beat of a's since the mark
            assert quiet.placed() == {"a:1"}
            await eventually(lambda: a.placed() == {"a:1"})
            assert ids(a) == {"a:1", "c:3"}  # still live: its URL known, its leases valid
            assert quiet.can_acknowledge()
            a.watch(told.append)
        # Gone, though nothing placed changed: the watchers hear of it (the forwarder
        # drops its URL and connections; before, it kept them until a placement change).
        await eventually(lambda: told != [])
        assert told == [frozenset({"a:1"})] and ids(a) == {"a:1"}


async def test_a_node_that_joined_since_the_last_read_is_found_by_asking_redis(
    client: redis.Redis,
) -> None:
    slow = RedisMembership(client, "a:1", "http://a:1", dict, interval=30, deadline=90)
    async with slow:
        async with member(client, "b:2"):
            assert ids(slow) == {"a:1"}  # its next read is 30 s away
            assert await slow.url_of("b:2") == "http://b:2"
            assert await slow.url_of("a:1") == "http://a:1"
        assert await slow.url_of("b:2") is None  # left
        assert await slow.url_of("never:3") is None
