"""Any node gives the owner's answer: writes through one node, reads through the others
agree, and every response names the node that owns the conversation."""

from __future__ import annotations

from tests.cluster.cluster import OVER_BOTH_REDIS, Cluster, texts


@OVER_BOTH_REDIS
async def test_writes_through_one_node_read_the_same_through_every_node(cluster: Cluster) -> None:
    n1, n2, n3 = cluster.ids
    cid, root, answered = await cluster.create(n1)
    owner = cluster.owner_of(cid)
    assert answered == owner  # created on its placement target, whichever node it reached
    parent = root
    for k, via in enumerate([n1, n2, n3, n1, n2, n3]):
        status, message, node = await cluster.append(via, cid, parent, f"m{k}")
        assert status == 200, message
        assert node == owner
        parent = message["message_id"]
    branch_from = message["lineage"][2]
    status, _, _ = await cluster.append(n2, cid, branch_from, "side")  # a second branch
    assert status == 200

    views = []
    for via in cluster.ids:
        tree = await cluster.tree(via, cid)
        async with cluster.session.get(f"{cluster.base(via)}/{cid}/messages/{parent}") as r:
            assert r.status == 200 and r.headers["X-Canopy-Node"] == owner
            lineage = (await r.json())["lineage"]
        async with cluster.session.get(f"{cluster.base(via)}/{cid}/branches") as r:
            assert r.status == 200
            branches = await r.json()
        views.append((tree, lineage, branches))
    assert views[0] == views[1] == views[2]
    assert texts(views[0][0]) == ["m0", "m1", "m2", "m3", "m4", "m5", "side"]
    assert len(views[0][1]) == 7  # root + six


async def test_a_hopped_request_is_never_relayed_again(cluster: Cluster) -> None:
    cid, root, owner = await cluster.create(cluster.ids[0])
    other = next(node for node in cluster.ids if node != owner)
    hop = {"X-Canopy-Hop": "1", "X-Canopy-Cluster-Token": await cluster.token()}
    status, body, _ = await cluster.append(other, cid, root, "x", **hop)
    assert status == 421 and body["error"]["code"] == "not_owner"
    url = f"{cluster.base(other)}/{cid}/tree"
    async with cluster.session.get(url, headers=hop) as response:
        assert response.status == 421 and response.headers["X-Canopy-Owner"] == owner
    assert texts(await cluster.tree(other, cid)) == []  # the refused append changed nothing


async def test_a_clients_hop_header_does_not_pick_where_its_request_is_served(
    cluster: Cluster,
) -> None:
    """Without the cluster token the hop headers are a client's: its request goes to
    the owner like any other (before, a non-owner served it: 421, or with Named-By
    naming the owner an activation that waited on the owner's lease)."""
    cid, root, owner = await cluster.create(cluster.ids[0])
    other = next(node for node in cluster.ids if node != owner)
    spoof = {"X-Canopy-Hop": "1", "X-Canopy-Named-By": owner,
             "X-Canopy-Cluster-Token": "guessed"}  # fmt: skip
    status, message, node = await cluster.append(other, cid, root, "x", **spoof)
    assert (status, node) == (200, owner), message
    async with cluster.session.get(f"{cluster.base(other)}/{cid}/tree", headers=spoof) as r:
        assert r.status == 200 and r.headers["X-Canopy-Node"] == owner
        assert texts(await r.json()) == ["x"]


async def test_a_conversation_held_off_its_placement_is_found_through_a_stale_answer(
    cluster: Cluster,
) -> None:
    """A fork is created on its source's owner, which holds its lease wherever placement
    puts it: the placement target answers not_owner naming the holder, and the asking
    node re-resolves to it once (and remembers it)."""
    source, _, holder = await cluster.create(cluster.ids[0])
    while True:
        async with cluster.session.post(
            f"{cluster.base(holder)}/{source}/fork", json={"title": "f", "created_by": "u"}
        ) as response:
            assert response.status == 200, await response.text()
            fork = (await response.json())["conversation_id"]
            cluster.conversations.add(fork)
        if cluster.owner_of(fork) != holder:
            break
    placed = cluster.owner_of(fork)
    asking = next(node for node in cluster.ids if node not in (holder, placed))
    for _ in range(3):
        async with cluster.session.get(f"{cluster.base(asking)}/{fork}/tree") as response:
            assert response.status == 200, await response.text()
            assert response.headers["X-Canopy-Node"] == holder
    async with cluster.session.get(f"{cluster.base(placed)}/{fork}") as response:
        assert response.status == 200 and response.headers["X-Canopy-Node"] == holder


async def test_a_request_expecting_100_continue_gets_the_owners_answer(cluster: Cluster) -> None:
    cid, root, owner = await cluster.create(cluster.ids[0])
    other = next(node for node in cluster.ids if node != owner)
    # the client sends the body only once the relaying node answered 100 Continue
    status, message, node = await cluster.append(other, cid, root, "x", Expect="100-continue")
    assert status == 200, message
    assert node == owner
    assert texts(await cluster.tree(other, cid)) == ["x"]
