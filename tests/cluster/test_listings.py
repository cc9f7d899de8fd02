"""Listings that span conversations answer the same on every node, including writes
acknowledged on another node a moment ago (nothing flushed yet: the flush interval is
longer than the test)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.cluster import Cluster, texts


@pytest.fixture
async def unflushed(
    tmp_path: Path, unused_tcp_port_factory: Callable[[], int]
) -> AsyncIterator[Cluster]:
    made = Cluster(
        tmp_path, [unused_tcp_port_factory() for _ in range(3)], extra=("--flush-interval", "60")
    )
    try:
        await made.start()
        yield made
    finally:
        await made.close()


async def test_every_node_lists_what_any_node_acknowledged(unflushed: Cluster) -> None:
    cluster = unflushed
    user = f"u-{uuid.uuid4().hex[:8]}"
    made = [await cluster.create(node, user) for node in cluster.ids * 2]
    assert len({owner for _, _, owner in made}) > 1  # spread over the nodes
    first, root, _ = made[0]
    status, _, _ = await cluster.append(cluster.ids[1], first, root, "newest")
    assert status == 200

    async def listing(node: str) -> list[str]:
        url = f"{cluster.nodes[node].base}/api/v1/users/{user}/conversations"
        async with cluster.session.get(url) as response:
            assert response.status == 200, await response.text()
            return await response.json()  # type: ignore[no-any-return]

    async def sidebar(node: str) -> list[dict[str, Any]]:
        url = cluster.base(node)
        async with cluster.session.get(url, headers={"X-Canopy-User": user}) as response:
            assert response.status == 200, await response.text()
            return (await response.json())["conversations"]  # type: ignore[no-any-return]

    lists = [await listing(node) for node in cluster.ids]
    assert lists[0] == lists[1] == lists[2]
    assert lists[0][0] == first  # the newest activity first
    assert sorted(lists[0]) == sorted(cid for cid, _, _ in made)
    pages = [await sidebar(node) for node in cluster.ids]
    assert pages[0] == pages[1] == pages[2]
    assert [item["conversation_id"] for item in pages[0]] == lists[0]


async def test_a_dead_nodes_unflushed_conversations_are_listed_by_the_others(
    unflushed: Cluster,
) -> None:
    """Its writes are only in the journal; nobody asks for those conversations, yet the
    survivors adopt them (engine/adoption.py) and list them, newest first."""
    cluster = unflushed
    user = f"u-{uuid.uuid4().hex[:8]}"
    made = [await cluster.create(node, user) for node in cluster.ids * 2]
    dead = made[0][2]
    orphans = [(cid, root) for cid, root, owner in made if owner == dead]
    for cid, root in orphans:
        status, _, _ = await cluster.append(dead, cid, root, "before the kill")
        assert status == 200
    newest, _ = orphans[-1]
    victim = cluster.nodes[dead].process
    assert victim is not None
    cluster.kill_host(dead)  # its flusher process too: the writes stay in the journal only
    await victim.wait()
    survivors = [node for node in cluster.ids if node != dead]

    async def listing(node: str) -> list[str]:
        url = f"{cluster.nodes[node].base}/api/v1/users/{user}/conversations"
        async with cluster.session.get(url) as response:
            assert response.status == 200, await response.text()
            return await response.json()  # type: ignore[no-any-return]

    deadline = time.monotonic() + 30  # external processes: poll, bounded
    while True:
        lists = [await listing(node) for node in survivors]
        if all(sorted(found) == sorted(cid for cid, _, _ in made) for found in lists):
            break
        assert time.monotonic() < deadline, (lists, [cid for cid, _ in orphans])
        await asyncio.sleep(0.1)
    assert lists[0] == lists[1] and lists[0][0] == newest  # its last append is the newest
    tree = await cluster.tree(survivors[0], newest)
    assert texts(tree) == ["before the kill"]


async def test_sidebar_pages_continue_through_any_node(unflushed: Cluster) -> None:
    """A cursor pins the order of the node that made it; a next page sent to another
    node (as a load balancer would) is answered by that node: every conversation once."""
    cluster = unflushed
    user = f"u-{uuid.uuid4().hex[:8]}"
    made = {cid for cid, _, _ in [await cluster.create(node, user) for node in cluster.ids * 3]}
    headers = {"X-Canopy-User": user}
    seen: list[str] = []
    cursor: str | None = None
    answered: list[str] = []
    for page in range(len(made)):
        node = cluster.ids[page % len(cluster.ids)]  # each page through the next node
        query = "?limit=2" + (f"&cursor={cursor}" if cursor else "")
        async with cluster.session.get(cluster.base(node) + query, headers=headers) as response:
            body = await response.json()
            assert response.status == 200, body
            answered.append(response.headers.get("X-Canopy-Node", ""))
        seen += [item["conversation_id"] for item in body["conversations"]]
        cursor = body.get("next_cursor")
        if cursor is None:
            break
    assert sorted(seen) == sorted(made) and len(seen) == len(made)
    assert set(answered[1:]) == {answered[0]}  # every next page by the node that pinned it
