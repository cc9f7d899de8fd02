"""A graceful restart on the same data dir serves exactly what was served before it."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from gateway_helpers import (
    API,
    Json,
    append,
    chain,
    conv_path,
    create_branch,
    expect_error,
    fork,
    new_conversation,
    ok,
    share,
    tree,
)

from gateway.app import open_journal

if TYPE_CHECKING:
    from conftest import Node, NodeFactory

USERS = ("alice", "bob", "carol", "dave")


async def build(node: Node) -> list[str]:
    """Conversations with a small tree, branches, shares, an update and a fork; their ids."""
    cid, root = await new_conversation(node, title="Kept", description="d")
    a, b = await chain(node, cid, 2)
    await ok(
        node,
        "POST",
        conv_path(cid, "/messages"),
        {
            "parent_message_id": a["message_id"],
            "role": "tool",
            "created_by": "bot",
            "content": {
                "type": "tool_result",
                "tool_call_id": "c",
                "result": {"x": [1]},
                "success": True,
            },
            "content_metadata": {"k": "v"},
        },
    )
    await append(node, cid, root, "sibling", role="assistant")
    main = await create_branch(node, cid, b["message_id"], name="main")
    await append(node, cid, None, "via branch", branch_id=main["branch_id"])
    alt = await create_branch(node, cid, a["message_id"], name="alt")
    await ok(node, "PUT", conv_path(cid, f"/branches/{alt['branch_id']}"), {"branch_name": "alt2"})
    gone = await create_branch(node, cid, root, name="gone")
    await ok(node, "DELETE", conv_path(cid, f"/branches/{gone['branch_id']}"))
    await share(node, cid, "bob", "read")
    await share(node, cid, "carol", "fork")
    await share(node, cid, "dave", "branch")
    await ok(node, "DELETE", conv_path(cid, "/shares/dave"))
    await ok(node, "PUT", conv_path(cid), {"title": "Kept, renamed", "is_public": True})
    forked = (await fork(node, cid, f"/messages/{b['message_id']}"))["conversation_id"]
    await append(node, forked, b["message_id"], "in the fork")
    quiet, _ = await new_conversation(node, title="Quiet", created_by="carol")
    return [cid, forked, quiet]


async def snapshot(node: Node, cids: list[str]) -> dict[str, Json]:
    """Full JSON of every read the API offers about these conversations and users."""
    seen: dict[str, Json] = {}
    for cid in cids:
        for suffix in ("", "/tree", "/branches", "/shares"):
            seen[conv_path(cid, suffix)] = await ok(node, "GET", conv_path(cid, suffix))
        for branch in seen[conv_path(cid, "/branches")]:
            path = conv_path(cid, f"/branches/{branch['branch_id']}")
            seen[path] = await ok(node, "GET", path)
            seen[path + "/messages"] = await ok(node, "GET", path + "/messages")
        for message in seen[conv_path(cid, "/tree")]["messages"]:
            for suffix in ("", "/children", "/lineage"):
                path = conv_path(cid, f"/messages/{message['message_id']}{suffix}")
                seen[path] = await ok(node, "GET", path)
    for user in USERS:
        path = f"{API}/users/{user}/conversations"
        seen[path] = await ok(node, "GET", path)
    return seen


async def restart(node: Node, start_node: NodeFactory) -> Node:
    await node.close()
    return await start_node(data_dir=node.settings.data_dir)


async def test_restart_serves_identical_state(node: Node, start_node: NodeFactory) -> None:
    cids = await build(node)
    before = await snapshot(node, cids)
    assert before[f"{API}/users/bob/conversations"] == [cids[1], cids[0]]  # fork, share
    assert len(before[conv_path(cids[0], "/tree")]["messages"]) == 6
    again = await restart(node, start_node)
    assert await snapshot(again, cids) == before


async def test_deleted_conversation_stays_not_found_after_restart(
    node: Node, start_node: NodeFactory
) -> None:
    kept, _ = await new_conversation(node)
    deleted, root = await new_conversation(node)
    await chain(node, deleted, 1)
    await ok(node, "DELETE", conv_path(deleted))
    again = await restart(node, start_node)
    for suffix in ("", "/tree", f"/messages/{root}", "/branches", "/shares"):
        await expect_error(again, "GET", conv_path(deleted, suffix), 404, "not_found")
    await expect_error(again, "DELETE", conv_path(deleted), 404, "not_found")
    assert await ok(again, "GET", f"{API}/users/alice/conversations") == [kept]


async def test_restart_twice_without_touching_anything(node: Node, start_node: NodeFactory) -> None:
    cids = await build(node)
    before = await snapshot(node, cids)
    again = await restart(await restart(node, start_node), start_node)
    assert await snapshot(again, cids) == before


async def test_writes_continue_after_restart(node: Node, start_node: NodeFactory) -> None:
    cid, root = await new_conversation(node)
    [a] = await chain(node, cid, 1)
    branch = await create_branch(node, cid, a["message_id"])
    again = await restart(node, start_node)
    added = await append(again, cid, None, "after restart", branch_id=branch["branch_id"])
    assert added["lineage"] == [root, a["message_id"], added["message_id"]]
    moved = await ok(again, "GET", conv_path(cid, f"/branches/{branch['branch_id']}"))
    assert moved["leaf_message_id"] == added["message_id"]
    assert (await tree(again, cid))["total_messages"] == 3


async def test_reshared_permission_survives_restart_in_the_same_order(
    node: Node, start_node: NodeFactory
) -> None:
    """Listing order of shares must not depend on whether the actor was reloaded."""
    cid, _ = await new_conversation(node)
    await share(node, cid, "bob", "read")
    await share(node, cid, "carol", "read")
    await share(node, cid, "bob", "fork")
    before = await ok(node, "GET", conv_path(cid, "/shares"))
    assert [(s["shared_with"], s["permission"]) for s in before] in (
        [("bob", "fork"), ("carol", "read")],
        [("carol", "read"), ("bob", "fork")],
    )
    again = await restart(node, start_node)
    assert await ok(again, "GET", conv_path(cid, "/shares")) == before


async def test_a_graceful_close_leaves_no_journal_record_to_replay(node: Node) -> None:
    """Close flushes, then marks and trims: the next start replays nothing (the Redis
    journal kept 119-159 records after a close under load: trim lagged the flush)."""
    roots = {cid: root for cid, root in [await new_conversation(node) for _ in range(8)]}
    await asyncio.gather(
        *(append(node, cid, root, f"m{i}") for cid, root in roots.items() for i in range(20))
    )
    await node.close()
    if node.settings.cache == "off":
        return  # no journal
    async with open_journal(node.settings) as journal:
        assert await journal.replay() == []
