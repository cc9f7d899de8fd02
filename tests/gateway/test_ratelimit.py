"""Per-caller rate limiting: the buckets (memory and Redis, with an injected clock) and
a real node's 429 + Retry-After, per caller, shared by two nodes through Redis."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from gateway_helpers import API, assert_error

from gateway.auth import api_key_digest
from gateway.ratelimit import (
    LIMITER,
    MemoryBuckets,
    RateLimit,
    RedisBuckets,
    parse_rate_limit,
)
from persistence import redis_keys
from persistence.redis_pool import RedisPool, RedisSettings
from tests.backends import on_every_server, redis_settings
from tests.waiting import until

if TYPE_CHECKING:
    from conftest import Node, NodeFactory

CREATE = {"title": "t", "created_by": "alice"}


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["redis", "redis-cluster"])
async def clean_redis(request: pytest.FixtureRequest) -> AsyncIterator[RedisPool]:
    """An emptied Redis (or Redis Cluster) behind an open pool."""
    settings = redis_settings(cluster=request.param == "redis-cluster")
    on_every_server(settings, "FLUSHDB")
    async with RedisPool(settings) as pool:
        yield pool


# -- parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("50/s,burst=100", RateLimit(50.0, 100)),
        ("50/s", RateLimit(50.0, 50)),
        ("600/m, burst=20", RateLimit(10.0, 20)),
        ("3600/h", RateLimit(1.0, 3600)),
        ("0.5/s", RateLimit(0.5, 1)),
        ("", None),
        ("off", None),
    ],
)
def test_rate_limit_spec(spec: str, expected: RateLimit | None) -> None:
    assert parse_rate_limit(spec) == expected


@pytest.mark.parametrize("spec", ["50", "50/d", "-1/s", "0/s", "50/s,burst=0", "50/s,bust=3"])
def test_a_bad_rate_limit_spec_is_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="rate_limit"):
        parse_rate_limit(spec)


# -- the buckets, on an injected clock ----------------------------------------------------


async def check_refill(buckets: MemoryBuckets | RedisBuckets, clock: Clock) -> None:
    """Burst 2 at 1/s: two at once, then one per second; a refill never passes the burst."""
    assert [await buckets.take("a") for _ in range(2)] == [0.0, 0.0]
    assert await buckets.take("a") == pytest.approx(1.0)
    clock.now += 0.25
    assert await buckets.take("a") == pytest.approx(0.75)
    clock.now += 0.75
    assert await buckets.take("a") == 0.0
    assert await buckets.take("b") == 0.0  # another caller's bucket is full
    clock.now += 60  # idle far longer than a refill: full again, not 60 tokens
    assert [await buckets.take("a") for _ in range(3)][2] > 0


async def test_memory_buckets_refill_at_the_rate() -> None:
    clock = Clock()
    buckets = MemoryBuckets(RateLimit(1.0, 2), clock=clock)
    await check_refill(buckets, clock)
    assert buckets.stats() == {"backend": "memory", "allowed": 6, "limited": 3, "buckets": 1}


async def test_redis_buckets_refill_at_the_rate(clean_redis: RedisPool) -> None:
    clock = Clock()
    async with RedisBuckets(RateLimit(1.0, 2), clean_redis, clock=clock) as buckets:
        await check_refill(buckets, clock)
        stats = buckets.stats()
    assert (stats["backend"], stats["allowed"], stats["limited"], stats["errors"]) == (
        "redis",
        6,
        3,
        0,
    )


def test_idle_memory_buckets_are_dropped() -> None:
    clock = Clock()
    buckets = MemoryBuckets(RateLimit(1.0, 10), clock=clock, max_buckets=100)
    for i in range(50):
        buckets.take_now(f"caller {i}")
    clock.now += 10  # every bucket is full again: the same as none
    buckets.take_now("another")
    assert buckets.stats()["buckets"] == 1


def test_memory_buckets_are_bounded() -> None:
    buckets = MemoryBuckets(RateLimit(1.0, 10), clock=Clock(), max_buckets=100)
    for i in range(1_000):
        buckets.take_now(f"caller {i}")
    assert buckets.stats()["buckets"] == 100


async def test_redis_buckets_expire_when_they_would_be_full(clean_redis: RedisPool) -> None:
    async with RedisBuckets(RateLimit(10.0, 50), clean_redis) as buckets:
        await buckets.take("alice")
    ttl = await clean_redis.client.pttl(redis_keys.rate_bucket("alice"))
    assert 0 < ttl <= 5_000 + 1_000  # 50 tokens at 10/s, plus a second of slack


async def test_two_limiters_on_one_redis_share_a_budget(clean_redis: RedisPool) -> None:
    limit = RateLimit(1 / 3600, 4)
    async with (
        RedisBuckets(limit, clean_redis) as one,
        RedisBuckets(limit, clean_redis) as two,
    ):
        taken = [await limiter.take("alice") for limiter in (one, two, one, two, one, two)]
    assert [wait == 0 for wait in taken] == [True] * 4 + [False] * 2


async def test_concurrent_takes_in_one_pipeline_share_the_budget(clean_redis: RedisPool) -> None:
    async with RedisBuckets(RateLimit(1 / 3600, 4), clean_redis) as buckets:
        waits = await asyncio.gather(*(buckets.take("alice") for _ in range(10)))
        assert sorted(wait == 0 for wait in waits) == [False] * 6 + [True] * 4
        on_every_server(clean_redis.settings, "SCRIPT", "FLUSH")  # as after a Redis restart
        assert await buckets.take("bob") == 0.0
        assert buckets.stats()["errors"] == 0


async def test_a_take_queued_when_the_limiter_closes_is_never_sent(
    clean_redis: RedisPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Close between a take and its tick's send: the take is limited from memory, no send
    starts on the pool the node is closing, and no task is left behind."""
    buckets = await RedisBuckets(RateLimit(1.0, 2), clean_redis).__aenter__()
    sent: list[list[str]] = []
    take_in_redis = buckets._take

    async def counted(bucket_keys: list[str]) -> list[float]:
        sent.append(bucket_keys)
        return await take_in_redis(bucket_keys)

    monkeypatch.setattr(buckets, "_take", counted)
    take = asyncio.ensure_future(buckets.take("alice"))
    await until(lambda: bool(buckets._batch))  # queued; its send is due this tick
    await buckets.__aexit__(None, None, None)
    assert await take == 0.0  # from the memory buckets
    assert sent == [] and not buckets._sends
    assert buckets.stats()["fallback"]["allowed"] == 1


async def test_without_redis_the_limiter_limits_per_node(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    pool = RedisPool(RedisSettings("redis://127.0.0.1:1/0"))
    buckets = RedisBuckets(RateLimit(1.0, 2), pool, clock=clock)
    async with pool, buckets:
        with caplog.at_level(logging.WARNING, "gateway.ratelimit"):
            await check_refill(buckets, clock)  # the same limits, from memory
    stats = buckets.stats()
    assert stats["errors"] >= 1 and stats["fallback"]["limited"] == 3
    assert sum("rate limiter: Redis failed" in r.getMessage() for r in caplog.records) == 1


# -- a real node --------------------------------------------------------------------------

embedded = pytest.mark.parametrize("backend", ["embedded"], indirect=True)  # storage-blind


async def spend(node: Node, n: int, **headers: str) -> list[int]:
    """`n` requests any caller may make: listing their own conversations (200)."""
    user = headers.get("X-Canopy-User", "alice")
    statuses = []
    for _ in range(n):
        status, _ = await node.request("GET", f"{API}/users/{user}/conversations", headers=headers)
        statuses.append(status)
    return statuses


@embedded
async def test_past_the_burst_a_caller_gets_429_with_retry_after(start_node: NodeFactory) -> None:
    node = await start_node(rate_limit="1/h,burst=3")
    assert await spend(node, 3) == [200] * 3
    async with node.session.post(f"{node.base}{API}/conversations", json=CREATE) as response:
        assert_error(response.status, await response.json(), 429, "rate_limited")
        assert 1 <= int(response.headers["Retry-After"]) <= 3600
    assert node.app[LIMITER].stats() == {
        "backend": "memory",
        "allowed": 3,
        "limited": 1,
        "buckets": 1,
    }
    status, _ = await node.request("GET", "/health")
    assert status == 200


@embedded
async def test_anonymous_callers_are_limited_by_address(start_node: NodeFactory) -> None:
    node = await start_node(rate_limit="1/h,burst=2")
    assert await spend(node, 1, **{"X-Canopy-User": "alice"}) == [200]
    assert await spend(node, 2, **{"X-Canopy-User": "bob"}) == [200, 429]  # unchecked names


@embedded
async def test_another_caller_keeps_their_budget(start_node: NodeFactory) -> None:
    node = await start_node(
        rate_limit="1/h,burst=2", auth="api-key", api_keys=f"backend:{api_key_digest('k')}"
    )
    alice = {"X-API-Key": "k", "X-Canopy-User": "alice"}
    assert await spend(node, 3, **alice) == [200, 200, 429]
    assert await spend(node, 2, **{"X-API-Key": "k", "X-Canopy-User": "bob"}) == [200, 200]
    assert await spend(node, 1, **{"X-API-Key": "k"}) == [200]  # the service itself


@embedded
async def test_nodes_on_one_redis_share_a_budget(
    start_node: NodeFactory, clean_redis: RedisPool, tmp_path: Path
) -> None:
    nodes = [
        await start_node(
            rate_limit="1/h,burst=4",
            journal="redis",
            redis_url=clean_redis.settings.url,
            redis_cluster=clean_redis.settings.cluster,
            data_dir=tmp_path / name,
        )
        for name in ("one", "two")
    ]
    statuses = [(await spend(node, 1))[0] for node in nodes * 3]
    assert statuses == [200] * 4 + [429] * 2
    assert [node.app[LIMITER].stats()["backend"] for node in nodes] == ["redis", "redis"]
