"""`canopy serve --workers 2 --cluster redis` on two nodes: four cluster members, each
worker one (`<node>/worker-K`, its own peer port), over the test Redis and Cassandra.
The two nodes are started once for the module."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from tests.backends import keyspace, wipe_redis
from tests.cluster.cluster import texts
from tests.processes import NodeProcess
from tests.services import CASSANDRA_NODES, REDIS_URL, require
from tests.test_workers import alive, worker_pids

pytestmark = pytest.mark.asyncio(loop_scope="module")

TOKEN = "workers-cluster-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
USER = {"X-Canopy-User": "u"}


class Nodes:
    def __init__(self, first: NodeProcess, second: NodeProcess, ids: list[str]) -> None:
        self.first, self.second, self.ids = first, second, ids
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True)  # the kernel picks the worker
        )
        self.members: dict[str, str] = {}  # node id -> its advertised URL

    async def nodes(self, base: str) -> list[dict[str, Any]]:
        async with self.session.get(f"{base}/admin/nodes", headers=ADMIN) as response:
            assert response.status == 200, await response.text()
            listed: list[dict[str, Any]] = (await response.json())["nodes"]
            return listed

    async def until_members(self, expected: set[str]) -> None:
        """Until every member in `expected` lists exactly `expected` (asked at its own
        advertised URL: through a shared port the kernel picks the worker)."""
        async with asyncio.timeout(30):
            while True:  # polling external processes, bounded
                view = await self.nodes(self.first.base)
                urls = {m["node_id"]: m["address"] for m in view}
                if urls.keys() == expected:
                    views = [await self.nodes(url) for url in urls.values()]
                    if all({m["node_id"] for m in v} == expected for v in views):
                        self.members = urls
                        return
                await asyncio.sleep(0.05)

    async def post(self, base: str, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        async with self.session.post(base + path, json=body, headers=USER) as response:
            return response.status, await response.json()

    async def tree(self, base: str, conversation_id: str) -> dict[str, Any]:
        url = f"{base}/api/v1/conversations/{conversation_id}/tree"
        async with self.session.get(url, headers=USER) as response:
            assert response.status == 200, await response.text()
            return await response.json()  # type: ignore[no-any-return]


def _node(root: Path, port: int, node_id: str) -> NodeProcess:
    # the default lease and heartbeat: a busy machine's late heartbeat expels nobody
    return NodeProcess(
        root / node_id, port, "--workers", "2",
        "--cluster", "redis", "--journal", "redis", "--store", "scylla",
        "--scylla-nodes", CASSANDRA_NODES, "--scylla-keyspace", keyspace(),
        "--redis-url", REDIS_URL, "--node-id", node_id, "--admin-token", TOKEN,
    )  # fmt: skip


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(
    tmp_path_factory: pytest.TempPathFactory, unused_tcp_port_factory: Any
) -> AsyncIterator[Nodes]:
    require("redis")
    require("cassandra")
    wipe_redis()
    root = tmp_path_factory.mktemp("workers-cluster")
    run = uuid.uuid4().hex[:6]  # node ids of this run only (Redis keys by node id)
    ids = [f"w1-{run}", f"w2-{run}"]
    first, second = (_node(root, unused_tcp_port_factory(), i) for i in ids)
    nodes = Nodes(first, second, ids)
    try:
        await first.start()  # makes the keyspace's tables once
        await second.start()
        yield nodes
    finally:
        await nodes.session.close()
        for node in (first, second):
            await kill(node)


async def kill(node: NodeProcess) -> None:
    """SIGKILL the supervisor and every worker it started (serving yet or not)."""
    if node.process is None or node.process.returncode is not None:
        return
    pid = node.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    node.process.kill()
    await node.process.wait()
    for child in map(int, children):
        if alive(child):
            os.kill(child, signal.SIGKILL)


def logged(node: NodeProcess) -> str:
    """What a node logged at warning level or above (and its last lines): for a failure."""
    lines = [line for line in node.output if b" WARNING " in line or b" ERROR " in line]
    return b"".join(lines[-40:] + node.output[-10:]).decode(errors="replace")


def running(node: NodeProcess) -> bool:
    return node.process is not None and node.process.returncode is None


def workers_of(node_ids: list[str]) -> set[str]:
    return {f"{node}/worker-{k}" for node in node_ids for k in range(2)}


class Written:
    texts: dict[str, list[str]] = {}  # conversation -> its messages' texts, acknowledged
    heads: dict[str, str] = {}  # conversation -> its last message id


async def test_every_worker_is_a_member_and_a_write_reads_back_through_every_port(
    cluster: Nodes,
) -> None:
    await cluster.until_members(workers_of(cluster.ids))
    assert len(cluster.members) == 4
    assert len(set(cluster.members.values())) == 4, "each worker advertises a port of its own"
    shared = [cluster.first.base, cluster.second.base]
    every_port = shared + list(cluster.members.values())
    for i, base in enumerate(every_port * 2):
        status, created = await cluster.post(
            base, "/api/v1/conversations", {"title": f"t{i}", "created_by": "u"}
        )
        assert status == 200, created
        cid = created["conversation_id"]
        root = (await cluster.tree(base, cid))["messages"][0]["message_id"]
        other = every_port[(i + 1) % len(every_port)]
        body = {"parent_message_id": root, "role": "human", "created_by": "u",
                "content": {"type": "text", "text": f"m{i}"}}  # fmt: skip
        status, message = await cluster.post(other, f"/api/v1/conversations/{cid}/messages", body)
        assert status == 200, message
        Written.texts[cid], Written.heads[cid] = [f"m{i}"], message["message_id"]
    for cid, written in Written.texts.items():
        for base in every_port:
            assert texts(await cluster.tree(base, cid)) == written


async def test_every_worker_writes_behind_from_a_flusher_process_of_its_own(
    cluster: Nodes,
) -> None:
    """Each worker's flusher process runs under the worker's node id (it used to exit
    with 2 at every start: the worker's settings, --workers 2 and a peer address, are
    refused on a command line)."""
    for node, node_id in ((cluster.first, cluster.ids[0]), (cluster.second, cluster.ids[1])):
        async with asyncio.timeout(60):  # other processes: poll, bounded
            while not all(
                f"flusher for node {node_id}/worker-{k} ready".encode() in b"".join(node.output)
                for k in range(2)
            ):
                await asyncio.sleep(0.05)
        assert b"exited with 2" not in b"".join(node.output), logged(node)


async def test_a_node_stopped_with_sigterm_leaves_and_nothing_fails_or_is_lost(
    cluster: Nodes,
) -> None:
    assert Written.texts, "runs after the first test"
    stopping = asyncio.ensure_future(cluster.second.stop(signal.SIGTERM))
    failures: list[tuple[int, Any]] = []

    async def write(cid: str) -> None:  # through the surviving node, while the other leaves
        n = 0
        while not stopping.done() or n < 2:
            n += 1
            text = f"during {n}"
            body = {"parent_message_id": Written.heads[cid], "role": "human",
                    "created_by": "u", "content": {"type": "text", "text": text}}  # fmt: skip
            path = f"/api/v1/conversations/{cid}/messages"
            status, answer = await cluster.post(cluster.first.base, path, body)
            if status != 200:
                failures.append((status, answer))
                return
            Written.heads[cid] = answer["message_id"]
            Written.texts[cid].append(text)

    await asyncio.gather(*(write(cid) for cid in Written.texts))
    assert await stopping == 0, logged(cluster.second)
    assert not failures, logged(cluster.first) + logged(cluster.second)
    await cluster.until_members(workers_of(cluster.ids[:1]))
    for cid, written in Written.texts.items():
        assert texts(await cluster.tree(cluster.first.base, cid)) == written


async def test_a_killed_worker_starts_again_while_its_flusher_still_drains(
    cluster: Nodes,
) -> None:
    """A worker's flusher process outlives it while it drains (up to its close timeout).
    It used to hold the worker's stdout, the supervisor's pipe, open: the supervisor saw
    the worker's death, and started it again, only once the drain was over. The flusher
    is stopped here so that its drain never ends."""
    node = cluster.first
    assert running(node), "the first node serves to the end"
    pid = worker_pids(node)[1]
    [flusher] = (int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
    os.kill(flusher, signal.SIGSTOP)
    try:
        os.kill(pid, signal.SIGKILL)
        async with asyncio.timeout(60):  # bounded: without the fix, until the drain ends
            while worker_pids(node).get(1) == pid:
                await asyncio.sleep(0.05)
    finally:
        os.kill(flusher, signal.SIGKILL)


async def test_a_worker_stopping_its_stuck_flusher_is_given_the_time_it_takes(
    cluster: Nodes,
) -> None:
    """A worker stops its flusher process last, within that process's own bound (its
    drain, then SIGTERM, then SIGKILL: about 30 s for one that never ends). The
    supervisor used to kill the worker 15 s after SIGTERM, before the worker closed its
    cluster membership: the node exited 1, its leases and heartbeat left behind."""
    node = cluster.first
    pid = worker_pids(node)[0]
    [flusher] = (int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
    os.kill(flusher, signal.SIGSTOP)  # its drain never ends: the worker has to kill it
    assert await node.stop(signal.SIGTERM) == 0, logged(node)
    assert b"did not stop in time" not in b"".join(node.output)
    assert not alive(flusher)
