"""Three `canopy serve --cluster redis` processes on loopback over the test Redis (or the
three-master Redis Cluster) and Cassandra, each with its own data dir, short leases
(failover in about a second), and the HTTP calls the cluster tests make.

The single Redis's test database is emptied at start. The Redis Cluster has only
database 0 and other tests use it: nothing here flushes it.
Node ids are this test's own, conversation ids are random, and closing deletes the keys
of the nodes and of the conversations the test made (`conversations`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from engine.placement import Rendezvous
from persistence import redis_keys
from tests.backends import keyspace, wipe_redis
from tests.processes import NodeProcess
from tests.services import CASSANDRA_NODES, REDIS_CLUSTER_URL, REDIS_URL, require

# Marks a test (or, as pytestmark, a module) to run over the single Redis and over the
# Redis Cluster: each run starts three nodes (~7 s here), so only the core ones do.
OVER_BOTH_REDIS = pytest.mark.parametrize("cluster", ["redis", "redis-cluster"], indirect=True)

LEASE, HEARTBEAT = "1", "0.2"  # seconds: deadline 0.6 s < lease
LOG_LINES = 80  # of each node's log, printed at close (shown if the test failed)
FLUSHER_STARTED = re.compile(rb"flusher process (\d+) started")  # gateway/flusher_child.py


class Cluster:
    def __init__(
        self,
        root: Path,
        ports: Sequence[int],
        redis_urls: Sequence[str] = (),
        extra: Sequence[str] = (),
        *,
        redis_cluster: bool = False,
    ) -> None:
        require("redis-cluster" if redis_cluster else "redis")
        require("cassandra")
        self.redis_cluster = redis_cluster
        default_url = REDIS_CLUSTER_URL if redis_cluster else REDIS_URL
        if redis_cluster:
            extra = ("--redis-cluster", *extra)
        self.conversations: set[str] = set()  # whose keys closing deletes on the cluster
        run = uuid.uuid4().hex[:6]  # node ids of this test only (Redis keys by node id)
        self.ids = [f"n{k + 1}-{run}" for k in range(len(ports))]
        self.nodes: dict[str, NodeProcess] = {}
        for k, (node_id, port) in enumerate(zip(self.ids, ports, strict=True)):
            redis_url = redis_urls[k] if k < len(redis_urls) and redis_urls[k] else default_url
            self.nodes[node_id] = NodeProcess(
                root / node_id, port,
                "--cluster", "redis", "--journal", "redis", "--store", "scylla",
                "--scylla-nodes", CASSANDRA_NODES, "--scylla-keyspace", keyspace(),
                "--redis-url", redis_url, "--node-id", node_id,
                "--advertise-url", f"http://127.0.0.1:{port}",
                "--lease-seconds", LEASE, "--heartbeat-seconds", HEARTBEAT, *extra,
            )  # fmt: skip
        self.session = aiohttp.ClientSession()

    async def start(self, count: int | None = None) -> None:
        """The first `count` nodes (all by default), once each sees them all."""
        if not self.redis_cluster:  # the test's own database: an earlier test's journaled
            wipe_redis()  # conversations would be adopted by these nodes (engine/adoption.py)
        first, *others = list(self.nodes.values())[:count]
        await first.start()  # makes the keyspace's tables once
        await asyncio.gather(*(node.start() for node in others))
        await self.until_members(self.ids[:count])

    async def close(self) -> None:
        await self.session.close()
        for node in self.nodes.values():
            if node.process is not None and node.process.returncode is None:
                node.process.kill()
                await node.process.wait()
        # Captured, so shown only when the test failed: what each node logged last.
        for node_id, node in self.nodes.items():
            print(f"----- {node_id}, last lines of its log:")
            for line in node.output[-LOG_LINES:]:
                print(line.decode(errors="replace").rstrip())
        if self.redis_cluster:
            await self._delete_own_keys()

    async def _delete_own_keys(self) -> None:
        """What this test's nodes and conversations left in the shared Redis Cluster."""
        import redis.asyncio as redis

        client = redis.RedisCluster.from_url(REDIS_CLUSTER_URL)
        try:
            for cid in self.conversations:
                for key in (redis_keys.lease(cid), redis_keys.epoch(cid), redis_keys.journal(cid)):
                    await client.delete(key)
                await client.srem(redis_keys.journaled_of(cid), cid)
            for node_id in self.ids:
                await client.zrem(redis_keys.MEMBERS, node_id)
                for key in (redis_keys.member(node_id), redis_keys.dirty(node_id),
                            redis_keys.flush_now(node_id),
                            redis_keys.flusher_lease(node_id), redis_keys.flushed(node_id),
                            redis_keys.flusher_stats(node_id)):  # fmt: skip
                    await client.delete(key)
        finally:
            await client.aclose()

    async def token(self) -> str:
        """The cluster token the nodes show each other (a peer's relay carries it)."""
        import redis.asyncio as redis

        client: Any = (
            redis.RedisCluster.from_url(REDIS_CLUSTER_URL)
            if self.redis_cluster
            else redis.Redis.from_url(REDIS_URL)
        )
        try:
            token = await client.get(redis_keys.CLUSTER_TOKEN)
        finally:
            await client.aclose()
        assert token is not None, "no node has started"
        return str(token.decode())

    def base(self, node_id: str) -> str:
        return self.nodes[node_id].base + "/api/v1/conversations"

    def owner_of(self, conversation_id: str, live: Sequence[str] | None = None) -> str:
        return Rendezvous(live or self.ids).owner_of(conversation_id)

    async def until_members(self, live: Sequence[str], seconds: float = 20.0) -> None:
        """Every node in `live` has logged `live` as its set of live nodes last."""
        deadline = time.monotonic() + seconds
        while True:
            views = [self.members(node_id) for node_id in live]
            if all(view == sorted(live) for view in views):
                return
            assert time.monotonic() < deadline, f"membership never settled: {views}"
            await asyncio.sleep(0.05)

    def flusher_pids(self, node_id: str) -> list[int]:
        """The flusher processes the node logged it started, oldest first."""
        started = (FLUSHER_STARTED.search(line) for line in self.nodes[node_id].output)
        return [int(m[1]) for m in started if m]

    def kill_host(self, node_id: str) -> None:
        """SIGKILL the node and its flusher process, as a machine's death would: nothing
        drains what it journaled (a node killed alone leaves its flusher draining)."""
        for pid in self.flusher_pids(node_id)[-1:]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process = self.nodes[node_id].process
        assert process is not None
        process.kill()

    def members(self, node_id: str) -> list[str]:
        """The live nodes `node_id` logged last."""
        for line in reversed(self.nodes[node_id].output):
            if b"live nodes: " in line:
                return sorted(line.split(b"live nodes: ", 1)[1].decode().split())
        return []

    # -- the API ------------------------------------------------------------------------

    async def create(self, node_id: str, user: str = "u", **headers: str) -> tuple[str, str, str]:
        """A new conversation through `node_id`: its id, root message id, answering node."""
        body = {"title": "t", "created_by": user}
        async with self.session.post(self.base(node_id), json=body, headers=headers) as r:
            assert r.status == 200, await r.text()
            conversation_id = (await r.json())["conversation_id"]
            self.conversations.add(conversation_id)
            answered = r.headers["X-Canopy-Node"]
        tree = await self.tree(node_id, conversation_id)
        return conversation_id, tree["messages"][0]["message_id"], answered

    async def append(
        self, node_id: str, conversation_id: str, parent: str, text: str, **headers: str
    ) -> tuple[int, dict[str, Any], str]:
        body = {"parent_message_id": parent, "role": "human", "created_by": "u",
                "content": {"type": "text", "text": text}}  # fmt: skip
        url = f"{self.base(node_id)}/{conversation_id}/messages"
        async with self.session.post(url, json=body, headers=headers) as response:
            return response.status, await response.json(), response.headers.get("X-Canopy-Node", "")

    async def write_until(
        self,
        stop: asyncio.Event,
        via: str,
        conversation_id: str,
        parent: str,
        k: int,
        acked: Callable[[str, float], None],
    ) -> None:
        """Writer `k`: append under `parent` through `via` until `stop`, telling
        `acked(text, sent_at)` of each acknowledged message. A 503 or a lost connection is
        tried again as a new message (no text is sent twice), after a Retry-After
        shortened to the tests' short lease."""
        attempt = 0
        while not stop.is_set():
            attempt += 1
            text = f"w{k}-{attempt}"
            sent_at = time.monotonic()
            try:
                status, _, _ = await self.append(via, conversation_id, parent, text)
            except aiohttp.ClientError:
                status = 0
            if status == 200:
                acked(text, sent_at)
            else:
                assert status in (0, 503), status
                await asyncio.sleep(0.05)

    async def tree(self, node_id: str, conversation_id: str) -> dict[str, Any]:
        async with self.session.get(f"{self.base(node_id)}/{conversation_id}/tree") as r:
            assert r.status == 200, await r.text()
            return await r.json()  # type: ignore[no-any-return]


def texts(tree: dict[str, Any]) -> list[str]:
    """The text of every non-root message of a tree, in tree order."""
    return [m["content"]["text"] for m in tree["messages"] if m["role"] != "root"]
