"""Rebalancing under load: 8 writers append to 8 conversations through every node while
readers read them, and a fourth node joins (or one leaves with SIGTERM). Every request
gets its normal answer (no retry hides a failure), the conversations the placement moved
are served by their new owner, and every acknowledged message is there exactly once,
through every node."""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from tests.cluster.cluster import Cluster, texts

WRITERS = 8
MOVED_LINE = b"rebalance: handed over "


# Nothing here waits for a lease to expire: longer timings than tests/cluster's keep a
# busy machine's stalls from looking like deaths (failover is tested elsewhere).
TIMINGS = ("--lease-seconds", "4", "--heartbeat-seconds", "0.5")


@pytest.fixture
async def four(
    tmp_path: Path, unused_tcp_port_factory: Callable[[], int]
) -> AsyncIterator[Cluster]:
    """Four nodes configured, the first three started and settled."""
    made = Cluster(tmp_path, [unused_tcp_port_factory() for _ in range(4)], extra=TIMINGS)
    try:
        await made.start(3)
        yield made
    finally:
        await made.close()


@pytest.fixture
async def three(
    tmp_path: Path, unused_tcp_port_factory: Callable[[], int]
) -> AsyncIterator[Cluster]:
    made = Cluster(tmp_path, [unused_tcp_port_factory() for _ in range(3)], extra=TIMINGS)
    try:
        await made.start(3)
        yield made
    finally:
        await made.close()


class Load:
    """Writers and readers through the nodes in `via`; every failure recorded."""

    def __init__(self, cluster: Cluster, conversations: list[tuple[str, str]], via: list[str]):
        self.cluster, self.conversations, self.via = cluster, conversations, via
        self.acked: dict[str, list[str]] = {cid: [] for cid, _ in conversations}
        self.failures: list[str] = []
        self.stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for k, (cid, root) in enumerate(self.conversations):
            self._tasks.append(asyncio.create_task(self._write(k, cid, root)))
        self._tasks += [asyncio.create_task(self._read(k)) for k in range(2)]

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.gather(*self._tasks)

    async def until_acked(self, more: int, seconds: float = 30.0) -> None:
        """Until every writer has `more` acknowledgements past what it has now."""
        wanted = {cid: len(acked) + more for cid, acked in self.acked.items()}
        deadline = time.monotonic() + seconds
        while any(len(self.acked[cid]) < n for cid, n in wanted.items()):
            assert not self.failures, self.failures[:5]
            assert time.monotonic() < deadline, "the writers stalled"
            await asyncio.sleep(0.02)

    async def _write(self, k: int, cid: str, root: str) -> None:
        for attempt in itertools.count():
            if self.stop.is_set():
                return
            node = self.via[attempt % len(self.via)]
            text = f"w{k}-{attempt}"
            try:
                status, body, answered = await self.cluster.append(node, cid, root, text)
            except aiohttp.ClientError as exc:
                self.failures.append(f"append via {node}: {exc!r}")
                continue
            if status == 200:
                self.acked[cid].append(text)
            else:
                self.failures.append(f"append via {node} ({answered}): {status} {body}")

    async def _read(self, k: int) -> None:
        for attempt in itertools.count(k):
            if self.stop.is_set():
                return
            node = self.via[attempt % len(self.via)]
            cid, _ = self.conversations[attempt % len(self.conversations)]
            url = f"{self.cluster.base(node)}/{cid}/tree"
            try:
                async with self.cluster.session.get(url) as response:
                    body = await response.read()
                    if response.status != 200:
                        self.failures.append(f"read via {node}: {response.status} {body!r}")
            except aiohttp.ClientError as exc:
                self.failures.append(f"read via {node}: {exc!r}")


async def _conversations(
    cluster: Cluster, via: list[str], moves: Callable[[str], bool]
) -> list[tuple[str, str]]:
    """WRITERS new conversations, at least two of which `moves`."""
    made: list[tuple[str, str]] = []
    staying = 0
    while len(made) < WRITERS:
        cid, root, _ = await cluster.create(via[len(made) % len(via)])
        if moves(cid) or staying < WRITERS - 2:
            made.append((cid, root))
            staying += not moves(cid)
    return made


def _moved(cluster: Cluster, nodes: list[str]) -> int:
    moved = 0
    for node in nodes:
        for line in cluster.nodes[node].output:
            if MOVED_LINE in line:
                moved += int(line.split(MOVED_LINE, 1)[1].split(b" ", 1)[0])
    return moved


async def _verify(cluster: Cluster, load: Load, nodes: list[str]) -> dict[str, str]:
    """Every acknowledged message once through every node; the owner of each."""
    owners = {}
    for cid, acked in load.acked.items():
        for node in nodes:
            async with cluster.session.get(f"{cluster.base(node)}/{cid}/tree") as r:
                assert r.status == 200, await r.text()
                stored = texts(await r.json())
                owners[cid] = r.headers["X-Canopy-Node"]
            assert len(stored) == len(set(stored)), f"duplicated in {cid}"
            assert set(acked) <= set(stored), set(acked) - set(stored)
    return owners


async def test_a_node_joining_under_load_moves_conversations_and_fails_nothing(
    four: Cluster,
) -> None:
    old, new = four.ids[:3], four.ids[3]
    conversations = await _conversations(
        four, old, lambda cid: four.owner_of(cid, old) != four.owner_of(cid)
    )
    load = Load(four, conversations, list(old))
    load.start()
    try:
        await load.until_acked(5)
        await four.nodes[new].start()
        await four.until_members(four.ids)
        load.via.append(new)
        movers = sorted({four.owner_of(cid, old) for cid, _ in conversations
                         if four.owner_of(cid) == new})  # fmt: skip
        deadline = time.monotonic() + 20
        while not all(any(MOVED_LINE in line for line in four.nodes[n].output) for n in movers):
            assert time.monotonic() < deadline, "no move finished"
            await asyncio.sleep(0.05)
        await load.until_acked(5)
    finally:
        await load.finish()
    assert not load.failures, load.failures[:5]
    owners = await _verify(four, load, four.ids)
    print(f"\njoin: {_moved(four, old)} conversations moved; "
          f"{sum(len(a) for a in load.acked.values())} writes acknowledged")  # fmt: skip
    assert new in owners.values()
    for cid, owner in owners.items():
        if owner == new:
            assert four.owner_of(cid) == new


async def test_a_node_leaving_with_sigterm_under_load_fails_nothing(three: Cluster) -> None:
    cluster = three
    leaving = cluster.ids[2]
    staying = [node for node in cluster.ids if node != leaving]
    conversations = await _conversations(
        cluster, cluster.ids, lambda cid: cluster.owner_of(cid) == leaving
    )
    load = Load(cluster, conversations, list(cluster.ids))
    load.start()
    try:
        await load.until_acked(5)
        # A load balancer takes the node out as it is told to stop: no new request goes
        # to it from the clients; what is in flight there, and what the others forward
        # to it, must still be answered.
        load.via.remove(leaving)
        process = cluster.nodes[leaving].process
        assert process is not None
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            assert await process.wait() == 0
        await cluster.until_members(staying)
        await load.until_acked(5)
    finally:
        await load.finish()
    assert not load.failures, load.failures[:5]
    owners = await _verify(cluster, load, staying)
    print(f"\nleave: {_moved(cluster, [leaving])} conversations moved; "
          f"{sum(len(a) for a in load.acked.values())} writes acknowledged")  # fmt: skip
    assert set(owners.values()) <= set(staying)
    # It took nothing up again while it left (a peer that had not read the leave named
    # it): what it held as it stopped answering, its peers' requests failed at.
    closed = [line for line in cluster.nodes[leaving].output if b"registry closed: " in line]
    assert closed and b"registry closed: 0 hot actors" in closed[-1], closed
