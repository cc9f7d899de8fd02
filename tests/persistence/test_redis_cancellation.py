"""Stopping a background loop that talks to Redis (persistence/background.py `stop`).

Our loops (heartbeats, lease releases, the flusher's) are stopped by cancelling them,
and redis-py swallows a cancel that lands mid-command when a socket timeout is set
(every version tried, 5.2 to 8.1; 8.x even without one): the loop beats on, and a close
that awaited it hung the suite. `stop` cancels again until the task has ended."""

from __future__ import annotations

import asyncio

import pytest

from persistence.background import stop
from persistence.redis_pool import RedisPool
from tests.backends import redis_settings

ROUNDS = 200


@pytest.mark.parametrize("cluster", [False, True], ids=["redis", "redis-cluster"])
async def test_a_loop_cancelled_mid_command_stops_and_the_pool_keeps_serving(
    cluster: bool,
) -> None:
    async with RedisPool(redis_settings(cluster=cluster, timeout=10.0)) as pool:
        client = pool.client
        key = "canopy:{cancel-test}:k"
        await client.set(key, "v")
        ended = False  # ends a loop that outlived `stop`, so the test fails, not hangs

        async def beating() -> None:  # a background loop like the heartbeat's
            while not ended:
                await asyncio.sleep(0)
                try:
                    async with client.pipeline(transaction=False) as pipe:
                        pipe.set(key, "v", px=10_000)
                        pipe.get(key)
                        await pipe.execute()
                    async with asyncio.timeout(10):
                        await client.get(key)
                except Exception:  # noqa: BLE001, S112 - as our loops do: beat again
                    continue

        outlived = None
        for round_ in range(ROUNDS):
            task = asyncio.create_task(beating())
            # Stopped at a different point each round: before, during or after a call.
            await asyncio.sleep(round_ % 10 * 0.0002)
            if not await stop(task, seconds=5):
                outlived = round_
                break
        ended = True
        await asyncio.wait({task}, timeout=5)
        assert outlived is None, f"the loop stopped in round {outlived} ran on"
        assert await client.get(key) == b"v"  # its connections came back
        await client.delete(key)
