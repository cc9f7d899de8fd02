"""A real `canopy serve --cluster redis` on loopback: it heartbeats, takes a lease for
what it activates (valid while its heartbeat is: no TTL to renew), and leaves Redis
clean on SIGTERM."""

from __future__ import annotations

import signal
from collections.abc import Callable

import aiohttp
import redis.asyncio as redis

from persistence import redis_keys
from tests.backends import wipe_redis
from tests.processes import NodeProcess, post_json
from tests.services import REDIS_URL, require


async def test_a_cluster_node_holds_leases_and_leaves_cleanly(
    node_process: Callable[..., NodeProcess],
) -> None:
    require("redis")
    wipe_redis()
    node = node_process("--cluster", "redis", "--redis-url", REDIS_URL, "--node-id", "n1")
    await node.start()
    client = redis.Redis.from_url(REDIS_URL)
    try:
        assert await client.get(redis_keys.member("n1")) is not None
        async with aiohttp.ClientSession() as session:
            base = f"{node.base}/api/v1/conversations"
            created = await post_json(session, base, {"title": "t", "created_by": "u"})
            cid = created["conversation_id"]
            async with session.get(f"{base}/{cid}/tree") as response:
                root = (await response.json())["messages"][0]["message_id"]
            body = {"parent_message_id": root, "role": "human", "created_by": "u",
                    "content": {"type": "text", "text": "hello"}}  # fmt: skip
            message = await post_json(session, f"{base}/{cid}/messages", body)
            assert message["lineage"] == [root, message["message_id"]]
        assert await client.get(redis_keys.lease(cid)) == b"n1 1"
        assert await client.pttl(redis_keys.lease(cid)) == -1  # valid with the heartbeat
        assert await node.stop(signal.SIGTERM) == 0
        assert await client.get(redis_keys.member("n1")) is None
        assert await client.zscore(redis_keys.MEMBERS, "n1") is None
        assert await client.get(redis_keys.lease(cid)) is None  # released on close
    finally:
        await client.aclose()
