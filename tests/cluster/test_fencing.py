"""Fencing: an owner paused past its lease (SIGSTOP) is replaced; when it wakes
(SIGCONT) it acknowledges nothing for the conversation itself, and no write is lost or
written twice."""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp

from tests.cluster.cluster import Cluster, texts

WRITERS = 8


async def test_a_paused_owner_acknowledges_nothing_when_it_wakes(cluster: Cluster) -> None:
    cid, root, owner = await cluster.create(cluster.ids[0])
    via = next(node for node in cluster.ids if node != owner)
    paused = cluster.nodes[owner].process
    assert paused is not None
    acked: list[tuple[str, str]] = []  # (text, node that answered)
    stopped_at = woken_at = float("inf")
    stop = asyncio.Event()

    async def writer(k: int) -> None:
        attempt = 0
        while not stop.is_set():
            attempt += 1
            text, sent_at = f"w{k}-{attempt}", time.monotonic()
            try:
                status, _, node = await cluster.append(via, cid, root, text)
            except aiohttp.ClientError:
                status, node = 0, ""
            if status == 200:
                acked.append((text, node))
                # Not the paused one while it was paused; once woken it may own the
                # conversation again anew (a rejoin moves it back, engine/rebalance.py).
                assert not stopped_at < sent_at < woken_at or node != owner
            else:
                await asyncio.sleep(0.05)

    writers = [asyncio.create_task(writer(k)) for k in range(WRITERS)]
    refused: list[int] = []
    accepted = ""  # the stale write the woken node accepted once it owned it anew
    try:
        while len(acked) < 40:
            await asyncio.sleep(0.01)
        paused.send_signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        async with asyncio.timeout(30):  # until another node took over and acknowledges
            while not any(node != owner for _, node in acked[-5:]):
                await asyncio.sleep(0.01)
        taken_over = len(acked)
        while len(acked) < taken_over + 20:
            await asyncio.sleep(0.01)
        woken_at = time.monotonic()
        paused.send_signal(signal.SIGCONT)
        # Straight at the woken node, which may not relay (hop header): it must refuse,
        # until the node that took over hands the conversation back (the woken one
        # rejoined: engine/rebalance.py); then it owns it anew and may accept.
        hop = {"X-Canopy-Hop": "1", "X-Canopy-Cluster-Token": await cluster.token()}
        for n in range(30):
            status, body, _ = await cluster.append(owner, cid, root, f"stale-{n}", **hop)
            if status == 200:
                accepted = f"stale-{n}"
                await until_handed_back(cluster, owner)
                break
            assert status in (421, 503), body
            refused.append(status)
        while len(acked) < taken_over + 60:
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        await asyncio.gather(*writers)
    print(f"\nfencing: woken owner refused {refused.count(503)} with 503, "
          f"{refused.count(421)} with 421 not_owner")  # fmt: skip

    written = {text for text, _ in acked}
    for node in cluster.ids:
        stored = texts(await cluster.tree(node, cid))
        assert len(stored) == len(set(stored))
        assert written <= set(stored), written - set(stored)
        assert {text for text in stored if text.startswith("stale-")} <= {accepted}


async def until_handed_back(cluster: Cluster, woken: str) -> None:
    """A node other than `woken` logged a finished move (bounded: output of processes)."""
    others = [cluster.nodes[node] for node in cluster.ids if node != woken]
    deadline = time.monotonic() + 10
    while not any(b"rebalance: handed over " in line for n in others for line in n.output):
        assert time.monotonic() < deadline, "the woken node accepted a write it did not own"
        await asyncio.sleep(0.02)
