"""The admin API and /metrics on a cluster: any node lists every live node with the
figures its heartbeat carried, and every node's hot actors; an actor hot on another
node is flushed and passivated through any node; each node's /metrics counts the
requests it forwarded and its leases. Nothing is flushed unasked (flush interval 60 s)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.cluster.cluster import Cluster

TOKEN = "admin-token-of-the-cluster-tests-0123"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def cluster(
    tmp_path: Path, unused_tcp_port_factory: Callable[[], int]
) -> AsyncIterator[Cluster]:
    extra = ("--flush-interval", "60", "--admin-token", TOKEN)
    made = Cluster(tmp_path, [unused_tcp_port_factory() for _ in range(3)], extra=extra)
    try:
        await made.start()
        yield made
    finally:
        await made.close()


async def admin(cluster: Cluster, node: str, method: str, path: str, status: int = 200) -> Any:
    url = cluster.nodes[node].base + path
    async with cluster.session.request(method, url, headers=BEARER) as response:
        body = await response.json()
        assert response.status == status, (node, method, path, body)
        return body


async def metrics(cluster: Cluster, node: str) -> dict[str, float]:
    async with cluster.session.get(cluster.nodes[node].base + "/metrics", headers=BEARER) as r:
        assert r.status == 200, await r.text()
        text = await r.text()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


async def one_on_each(cluster: Cluster) -> dict[str, str]:
    """Conversations created through the first node until each node owns one or more,
    each with two appends through a node that does not own it: id -> owner."""
    owners: dict[str, str] = {}
    for _ in range(40):
        conversation_id, root, owner = await cluster.create(cluster.ids[0])
        owners[conversation_id] = owner
        other = next(node for node in cluster.ids if node != owner)
        for text in ("a", "b"):
            status, body, _ = await cluster.append(other, conversation_id, root, text)
            assert status == 200, body
        if set(owners.values()) == set(cluster.ids):
            return owners
    raise AssertionError(f"placement never reached every node: {Counter(owners.values())}")


async def until_heartbeats_show(cluster: Cluster, node: str, owners: dict[str, str]) -> Any:
    """/admin/nodes on `node` once every node's heartbeat carries its actors and their
    messages (bounded: the heartbeats are other processes'; one sent between a creation
    and its appends counts the actor, not yet its messages)."""
    actors = Counter(owners.values())
    expected = {node_id: (count, 3 * count) for node_id, count in actors.items()}
    deadline = time.monotonic() + 10
    while True:
        listed = (await admin(cluster, node, "GET", "/admin/nodes"))["nodes"]
        if {row["node_id"]: (row["actors"], row["hot_messages"]) for row in listed} == expected:
            return listed
        assert time.monotonic() < deadline, listed
        await asyncio.sleep(0.05)


async def test_any_node_shows_every_node_and_actor(cluster: Cluster) -> None:
    owners = await one_on_each(cluster)
    actors = Counter(owners.values())
    for node in cluster.ids:
        listed = await until_heartbeats_show(cluster, node, owners)
        assert [row["node_id"] for row in listed] == sorted(cluster.ids)
        for row in listed:
            owned = actors[row["node_id"]]
            assert row["address"] == cluster.nodes[row["node_id"]].base
            assert row["hot_messages"] == 3 * owned  # root and two appends each
            assert row["unflushed_records"] == 3 * owned  # creation and two appends each
            assert row["unflushed_bytes"] > 0 and row["memory_bytes"] > 0
            assert 0 <= row["heartbeat_age_seconds"] < 5
            assert row["stats"]["directory"]["leases_held"] == owned
    for node in cluster.ids:
        listing = await admin(cluster, node, "GET", "/admin/actors?sort=unflushed&limit=1000")
        assert {a["conversation_id"]: a["owner_node"] for a in listing["actors"]} == owners
        assert listing["total"] == len(owners) and listing["next_cursor"] is None
        assert "missing_nodes" not in listing
    first = await admin(cluster, cluster.ids[1], "GET", "/admin/actors?limit=1")
    second = await admin(cluster, cluster.ids[2], "GET", "/admin/actors?limit=100&cursor=1")
    assert first["next_cursor"] == "1" and first["total"] == len(owners)
    paged = [a["conversation_id"] for a in first["actors"] + second["actors"]]
    assert sorted(paged) == sorted(owners)
    wrong = {"X-Canopy-Cluster-Token": TOKEN}  # a peer's header, not the cluster's token
    url = cluster.nodes[cluster.ids[0]].base + "/admin/actors"
    async with cluster.session.get(url, headers=wrong) as refused:
        assert refused.status == 401, await refused.text()


async def test_an_actor_hot_elsewhere_is_flushed_and_passivated_through_any_node(
    cluster: Cluster,
) -> None:
    owners = await one_on_each(cluster)
    conversation_id, owner = next(iter(owners.items()))
    flusher, passivator = (node for node in cluster.ids if node != owner)
    path = f"/admin/actors/{conversation_id}"
    looked = await admin(cluster, flusher, "GET", path)
    assert looked["owner_node"] == owner and looked["epoch"] >= 1
    assert looked["unflushed_records"] == 3 and looked["messages"] == 3
    flushed = await admin(cluster, flusher, "POST", path + "/flush")
    assert flushed["owner_node"] == owner and flushed["epoch"] == looked["epoch"]
    assert flushed["unflushed_records"] == 0 and flushed["last_flush"] is not None
    passivated = await admin(cluster, passivator, "POST", path + "/passivate")
    assert passivated == {"conversation_id": conversation_id, "passivated": True}
    for node in cluster.ids:
        gone = await admin(cluster, node, "GET", path, status=404)
        assert gone["error"]["code"] == "not_found"
    tree = await cluster.tree(passivator, conversation_id)  # served again, from the store
    assert [m["content"].get("text") for m in tree["messages"][1:]] == ["a", "b"]


async def test_each_node_counts_what_it_forwarded_and_its_leases(cluster: Cluster) -> None:
    owners = await one_on_each(cluster)
    conversation_id, owner = next(iter(owners.items()))
    other = next(node for node in cluster.ids if node != owner)
    before = {node: await metrics(cluster, node) for node in cluster.ids}
    await cluster.tree(other, conversation_id)  # forwarded by `other` to the owner
    after = {node: await metrics(cluster, node) for node in cluster.ids}
    forwarded = "canopy_forwarded_requests_total"
    assert after[other][forwarded] == before[other][forwarded] + 1
    assert after[owner][forwarded] == before[owner][forwarded]
    for node in cluster.ids:
        figures = after[node]
        assert figures["canopy_leases_held"] == Counter(owners.values())[node]
        assert figures["canopy_lease_acquisitions_total"] >= figures["canopy_leases_held"]
        assert figures["canopy_lease_losses_total"] == 0
        assert figures["canopy_lease_renewals_total"] >= 1  # heartbeats renew every lease
        assert figures["canopy_live_nodes"] == 3
    # A passivation and the activation of the next read (creations activate nothing).
    await admin(cluster, other, "POST", f"/admin/actors/{conversation_id}/passivate")
    await cluster.tree(other, conversation_id)
    again = {node: await metrics(cluster, node) for node in cluster.ids}
    for name in ("canopy_passivations_total", "canopy_activations_total"):
        assert sum(again[n][name] - after[n][name] for n in cluster.ids) == 1, name
