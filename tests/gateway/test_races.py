"""Concurrent mutations of one conversation: every answer is a 200 or a clean 404, and every
tree the API shows afterwards is consistent (what held when it was tried; kept as a test)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from gateway_helpers import API, Json, chain, conv_path, new_conversation, ok, tree

if TYPE_CHECKING:
    from conftest import Node

ROUNDS = 8


def mixed_writes(cid: str, leaf: str) -> list[tuple[str, str, Json]]:
    """Appends, forks, branches and shares of one conversation, interleaved."""
    writes: list[tuple[str, str, Json]] = []
    for i in range(ROUNDS):
        message = {"role": "human", "content": {"type": "text", "text": f"r{i}"},
                   "created_by": "alice", "parent_message_id": leaf}  # fmt: skip
        branch = {"branch_name": f"b{i}", "leaf_message_id": leaf, "created_by": "alice"}
        shared = {"shared_with": f"user{i}", "permission": "read", "shared_by": "alice"}
        writes += [
            ("POST", conv_path(cid, "/messages"), message),
            ("POST", conv_path(cid, "/fork"), {"title": f"f{i}", "created_by": "bob"}),
            ("POST", conv_path(cid, "/branches"), branch),
            ("POST", conv_path(cid, "/share"), shared),
        ]
    return writes


async def all_at_once(node: Node, writes: list[tuple[str, str, Json]]) -> list[tuple[int, Json]]:
    return await asyncio.gather(*(node.request(m, path, json=body) for m, path, body in writes))


async def assert_consistent(node: Node, cid: str) -> Json:
    """Every message's parent is in the tree and its lineage is its parent's plus itself."""
    shown = await tree(node, cid)
    assert shown["total_messages"] == len(shown["messages"])
    lineages = {m["message_id"]: m["lineage"] for m in shown["messages"]}
    for message in shown["messages"]:
        parent = message["parent_message_id"]
        expected = [*lineages[parent], message["message_id"]] if parent else [message["message_id"]]
        assert message["lineage"] == expected
        served = await ok(node, "GET", conv_path(cid, f"/messages/{message['message_id']}/lineage"))
        assert [m["message_id"] for m in served] == expected
    return shown


async def test_concurrent_writes_all_land_and_leave_one_consistent_tree(node: Node) -> None:
    cid, _ = await new_conversation(node)
    leaf = (await chain(node, cid, 4))[-1]["message_id"]
    answers = await all_at_once(node, mixed_writes(cid, leaf))
    assert [status for status, _ in answers] == [200] * len(answers), answers
    shown = await assert_consistent(node, cid)
    assert shown["total_messages"] == 1 + 4 + ROUNDS
    assert len(await ok(node, "GET", conv_path(cid, "/branches"))) == ROUNDS
    assert len(await ok(node, "GET", conv_path(cid, "/shares"))) == ROUNDS
    forks = [body["conversation_id"] for (_, path, _), (_, body) in zip(
        mixed_writes(cid, leaf), answers, strict=True) if path.endswith("/fork")]  # fmt: skip
    for forked in forks:
        copied = await assert_consistent(node, forked)
        assert 1 + 4 <= copied["total_messages"] <= 1 + 4 + ROUNDS


async def test_a_delete_racing_writes_leaves_nothing_half_done(node: Node) -> None:
    cid, _ = await new_conversation(node)
    leaf = (await chain(node, cid, 4))[-1]["message_id"]
    writes = mixed_writes(cid, leaf)
    writes.insert(len(writes) // 2, ("DELETE", conv_path(cid), None))
    answers = await all_at_once(node, writes)
    assert {status for status, _ in answers} <= {200, 404}, answers
    for suffix in ("", "/tree", "/branches", "/shares", f"/messages/{leaf}"):
        status, _ = await node.request("GET", conv_path(cid, suffix))
        assert status == 404, suffix
    assert cid not in await ok(node, "GET", f"{API}/users/alice/conversations")
    for (_, path, _), (status, body) in zip(writes, answers, strict=True):
        if path.endswith("/fork") and status == 200:
            await assert_consistent(node, body["conversation_id"])
