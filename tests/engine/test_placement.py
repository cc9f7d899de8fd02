"""Placement: rendezvous hashing is stable, spreads evenly, and moves ~1/N on a join."""

from __future__ import annotations

import uuid
from collections import Counter

import pytest

from engine.ids import new_id
from engine.placement import Rendezvous, ThisNode, placed_here

IDS = [str(uuid.UUID(int=n * 7919 + 1)) for n in range(10_000)]
NODES = ["127.0.0.1:8081", "127.0.0.1:8082", "127.0.0.1:8083"]


def test_this_node_owns_everything() -> None:
    assert {ThisNode("a:1").owner_of(cid) for cid in IDS[:100]} == {"a:1"}


def test_owner_is_stable_and_independent_of_the_order_nodes_are_listed() -> None:
    first = Rendezvous(NODES)
    second = Rendezvous(reversed(NODES))
    assert [first.owner_of(cid) for cid in IDS] == [second.owner_of(cid) for cid in IDS]
    assert first.owner_of(IDS[0]) == first.owner_of(IDS[0])


def test_conversations_spread_over_the_nodes() -> None:
    owners = Counter(Rendezvous(NODES).owner_of(cid) for cid in IDS)
    assert set(owners) == set(NODES)
    assert all(2_900 < count < 3_770 for count in owners.values())  # 1/3 +- 13%


def test_a_join_moves_only_what_the_new_node_wins() -> None:
    placement = Rendezvous(NODES)
    before = {cid: placement.owner_of(cid) for cid in IDS}
    placement.update([*NODES, "127.0.0.1:8084"])
    moved = [cid for cid in IDS if placement.owner_of(cid) != before[cid]]
    assert {placement.owner_of(cid) for cid in moved} == {"127.0.0.1:8084"}
    assert 2_100 < len(moved) < 2_900  # ~1/4 of 10,000


def test_a_leave_moves_only_what_the_leaver_held() -> None:
    placement = Rendezvous(NODES)
    before = {cid: placement.owner_of(cid) for cid in IDS}
    placement.update(NODES[:2])
    moved = {cid for cid in IDS if placement.owner_of(cid) != before[cid]}
    assert moved == {cid for cid, owner in before.items() if owner == NODES[2]}


def test_no_live_node_is_an_error() -> None:
    with pytest.raises(LookupError):
        Rendezvous([]).owner_of(IDS[0])


def test_ids_placed_here_all_belong_to_the_node_that_drew_them() -> None:
    placement = Rendezvous(["worker-0", "worker-1", "worker-2"])
    draw = placed_here(placement, "worker-1", new_id)
    ids = [draw() for _ in range(200)]
    assert len(set(ids)) == 200
    assert {placement.owner_of(cid) for cid in ids} == {"worker-1"}
