"""SIGKILL the owner while 16 writers write through a non-owner: its conversation is
served again by the new placement owner (Store + journal tail), and every acknowledged
message is there exactly once, through every surviving node."""

from __future__ import annotations

import asyncio
import signal
import time

from tests.cluster.cluster import OVER_BOTH_REDIS, Cluster, texts

pytestmark = OVER_BOTH_REDIS

WRITERS = 16


async def test_killing_the_owner_loses_no_acknowledged_write(cluster: Cluster) -> None:
    cid, root, owner = await cluster.create(cluster.ids[0])
    via = next(node for node in cluster.ids if node != owner)  # writes go through it
    acked: list[str] = []
    killed_at: float | None = None
    served_again: float | None = None
    stop = asyncio.Event()

    def ack(text: str, sent_at: float) -> None:
        nonlocal served_again
        acked.append(text)
        if killed_at is not None and sent_at > killed_at and served_again is None:
            served_again = time.monotonic()

    writers = [
        asyncio.create_task(cluster.write_until(stop, via, cid, root, k, ack))
        for k in range(WRITERS)
    ]
    try:
        while len(acked) < 100:
            await asyncio.sleep(0.01)
        before = len(acked)
        cluster.nodes[owner].process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        killed_at = time.monotonic()
        await cluster.nodes[owner].process.wait()  # type: ignore[union-attr]
        async with asyncio.timeout(30):
            while len(acked) < before + 100:
                await asyncio.sleep(0.01)
    finally:
        stop.set()
        await asyncio.gather(*writers)
    assert served_again is not None
    print(f"\nfailover: served again {served_again - killed_at:.2f}s after SIGKILL "
          f"({len(acked)} writes acknowledged)")  # fmt: skip

    survivors = [node for node in cluster.ids if node != owner]
    for node in survivors:
        stored = texts(await cluster.tree(node, cid))
        assert len(stored) == len(set(stored))  # nothing written twice
        assert set(acked) <= set(stored), set(acked) - set(stored)
