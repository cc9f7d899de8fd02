"""Listings that span conversations answer the same on every node, including writes
acknowledged on another node a moment ago (nothing flushed yet: the flush interval is
longer than the test)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.cluster import Cluster


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
