"""A network cut between a node and Redis (a loopback proxy the test cuts): the cut node
stops acknowledging, the others take its conversation over, and it acknowledges nothing
for it until it is back and owns it anew (no split brain); no write is lost or doubled,
and nothing it refused is stored."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import aiohttp

from tests.cluster.cluster import Cluster, texts
from tests.cluster.proxy import CuttableProxy
from tests.services import REDIS_URL

WRITERS = 8


async def test_a_node_cut_from_redis_is_replaced_and_stays_fenced(
    tmp_path: Path, unused_tcp_port_factory: Callable[[], int]
) -> None:
    redis = urlparse(REDIS_URL)
    proxy = CuttableProxy(redis.hostname or "127.0.0.1", redis.port or 6379)
    await proxy.start()
    through_proxy = f"redis://127.0.0.1:{proxy.port}{redis.path}"
    cluster = Cluster(tmp_path, [unused_tcp_port_factory() for _ in range(3)], [through_proxy])
    try:
        await cluster.start()
        await _run(cluster, proxy)
    finally:
        await cluster.close()
        await proxy.close()


async def _run(cluster: Cluster, proxy: CuttableProxy) -> None:
    cut_node = cluster.ids[0]
    while True:  # a conversation the node behind the proxy owns
        cid, root, owner = await cluster.create(cut_node)
        if owner == cut_node:
            break
    via = cluster.ids[1]
    acked: list[tuple[str, str]] = []  # (text, node that answered)
    stop = asyncio.Event()

    async def writer(k: int) -> None:
        attempt = 0
        while not stop.is_set():
            attempt += 1
            try:
                status, _, node = await cluster.append(via, cid, root, f"w{k}-{attempt}")
            except aiohttp.ClientError:
                status, node = 0, ""
            if status == 200:
                acked.append((f"w{k}-{attempt}", node))
            else:
                await asyncio.sleep(0.05)

    hop = {"X-Canopy-Hop": "1", "X-Canopy-Cluster-Token": await cluster.token()}

    async def straight_at_the_cut_node(text: str) -> int:
        status, _, _ = await cluster.append(cut_node, cid, root, text, **hop)
        return status

    writers = [asyncio.create_task(writer(k)) for k in range(WRITERS)]
    try:
        while len(acked) < 40:
            await asyncio.sleep(0.01)
        await proxy.cut()
        cut_at = time.monotonic()
        n = 0
        while await straight_at_the_cut_node(f"probe-{n}") == 200:
            n += 1
        print(f"\nnetwork cut: the cut node refused {time.monotonic() - cut_at:.2f}s after "
              f"the cut ({n} acknowledged after it)")  # fmt: skip
        async with asyncio.timeout(30):  # another node took over and acknowledges
            while not any(node != cut_node for _, node in acked[-5:]):
                await asyncio.sleep(0.01)
        print(f"network cut: taken over {time.monotonic() - cut_at:.2f}s after the cut")
        for k in range(10):
            assert await straight_at_the_cut_node(f"stale-cut-{k}") != 200
        await proxy.restore()
        await cluster.until_members(cluster.ids)  # it is back in the cluster
        # Back, it may own the conversation anew (the rejoin moves it back to its placement):
        # then it acknowledges under a new epoch, and what it acknowledged must be stored.
        for k in range(10):
            if await straight_at_the_cut_node(f"back-{k}") == 200:
                acked.append((f"back-{k}", cut_node))
        taken = len(acked)
        while len(acked) < taken + 20:
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        await asyncio.gather(*writers)

    written = {text for text, _ in acked}
    for node in cluster.ids:
        stored = texts(await cluster.tree(node, cid))
        assert len(stored) == len(set(stored))
        assert written <= set(stored), written - set(stored)
        assert not any(text.startswith("stale-") for text in stored)
        refused = {f"back-{k}" for k in range(10)} - written
        assert not refused & set(stored), refused & set(stored)  # refused: never stored
