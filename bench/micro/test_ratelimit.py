"""What a rate-limited request pays for its token: in memory, and in Redis (a round trip).

The memory path should be a few µs; the Redis one is one EVALSHA round trip per request.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Iterator
from typing import Any

import pytest

from gateway.ratelimit import MemoryBuckets, RateLimit, RedisBuckets

PLENTY = RateLimit(1e9, 10**9)  # every take succeeds: the path every allowed request runs
REDIS_URL = os.environ.get("CANOPY_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def test_memory_take_one_caller(benchmark: Any) -> None:
    buckets = MemoryBuckets(PLENTY)
    assert benchmark(buckets.take_now, "u:alice") == 0.0


def test_memory_take_10k_callers(benchmark: Any) -> None:
    buckets = MemoryBuckets(PLENTY)
    callers = itertools.cycle([f"u:user-{i}" for i in range(10_000)])
    assert benchmark(lambda: buckets.take_now(next(callers))) == 0.0


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def test_redis_take(benchmark: Any, loop: asyncio.AbstractEventLoop) -> None:
    from persistence.redis_pool import RedisPool, RedisSettings

    pool = RedisPool(RedisSettings(REDIS_URL))
    buckets = RedisBuckets(PLENTY, pool)
    try:
        loop.run_until_complete(buckets.take("u:alice"))
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"no Redis at {REDIS_URL}: {exc}")
    try:
        assert benchmark(lambda: loop.run_until_complete(buckets.take("u:alice"))) == 0.0
        assert buckets.stats()["errors"] == 0
    finally:
        loop.run_until_complete(buckets.__aexit__(None, None, None))
        loop.run_until_complete(pool.__aexit__(None, None, None))
