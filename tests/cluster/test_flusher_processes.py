"""Each cluster member writes behind from its own flusher process. SIGKILL the owner's
flusher process, then the owner itself, while 16 writers write through a non-owner:
once the writers stop and the flushers are done, the store itself holds every
acknowledged message exactly once, and nothing is left journaled."""

from __future__ import annotations

import asyncio
import os
import signal

import msgspec
import redis.asyncio as redis

from persistence import redis_keys
from persistence.scylla import ScyllaStore
from tests.backends import scylla
from tests.cluster.cluster import Cluster
from tests.services import REDIS_URL

WRITERS = 16


async def test_killing_a_flusher_process_then_its_node_loses_nothing_stored(
    cluster: Cluster,
) -> None:
    cid, root, owner = await cluster.create(cluster.ids[0])
    via = next(node for node in cluster.ids if node != owner)
    [first_flusher] = cluster.flusher_pids(owner)
    acked: list[str] = []
    stop = asyncio.Event()

    async def more_acked(count: int) -> None:
        async with asyncio.timeout(60):
            target = len(acked) + count
            while len(acked) < target:
                await asyncio.sleep(0.01)

    def ack(text: str, _: float) -> None:
        acked.append(text)

    writers = [
        asyncio.create_task(cluster.write_until(stop, via, cid, root, k, ack))
        for k in range(WRITERS)
    ]
    try:
        await more_acked(100)
        os.kill(first_flusher, signal.SIGKILL)  # its node starts another one
        async with asyncio.timeout(60):
            while len(cluster.flusher_pids(owner)) < 2:
                await asyncio.sleep(0.05)
        await more_acked(100)
        process = cluster.nodes[owner].process
        assert process is not None
        process.send_signal(signal.SIGKILL)  # its flusher drains what it took, and exits
        await process.wait()
        await more_acked(100)
    finally:
        stop.set()
        await asyncio.gather(*writers)

    client = redis.Redis.from_url(REDIS_URL)
    try:  # the new owner's flusher stores the rest and trims the stream away
        async with asyncio.timeout(60):
            while await client.exists(redis_keys.journal(cid)):
                await asyncio.sleep(0.05)
    finally:
        await client.aclose()
    async with ScyllaStore(scylla()) as store:
        stored = await store.load(cid)
    assert stored is not None
    texts = [msgspec.json.decode(m.content)["text"] for m in stored.messages if m.role != "root"]
    assert len(texts) == len(set(texts))  # nothing stored twice
    assert set(acked) <= set(texts), set(acked) - set(texts)
    assert stored.conversation.message_count == len(texts) + 1
    print(f"\n{len(acked)} acknowledged, {len(texts)} stored")
