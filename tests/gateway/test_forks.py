"""Forks over HTTP: a whole conversation, a branch (its leaf's lineage), or up to one message."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from gateway_helpers import (
    Json,
    append,
    assert_conversation,
    assert_message,
    chain,
    conv_path,
    create_branch,
    fork,
    new_conversation,
    ok,
    share,
    state,
    tree,
    user_conversations,
)

from engine.access import Principal
from gateway.keys import CONVERSATIONS

if TYPE_CHECKING:
    from conftest import Node

COPIED_FIELDS = (
    "message_id",
    "role",
    "content",
    "content_metadata",
    "depth",
    "created_at",
    "created_by",
)


async def small_tree(node: Node) -> tuple[str, str, list[Json]]:
    """root -> a -> b -> c, a -> d (assistant, image), root -> e; returns (cid, root, [a..e])."""
    cid, root = await new_conversation(node, title="Source", description="src")
    a, b, c = await chain(node, cid, 3)
    d = await ok(
        node,
        "POST",
        conv_path(cid, "/messages"),
        {
            "parent_message_id": a["message_id"],
            "role": "assistant",
            "created_by": "bot",
            "content": {"type": "image", "image_url": "s3://i/1.png", "width": 3},
            "content_metadata": {"k": "v"},
        },
    )
    e = await append(node, cid, root, "second thread")
    await create_branch(node, cid, c["message_id"])
    return cid, root, [a, b, c, d, e]


def assert_copies(forked: list[Json], source: list[Json], fork_id: str, fork_root: str) -> None:
    """Forked messages are the source's, same ids, re-hung under the fork's new root."""
    assert [m["message_id"] for m in forked] == [m["message_id"] for m in source]
    for copy, original in zip(forked, source, strict=True):
        assert_message(copy, conversation_id=fork_id, **{k: original[k] for k in COPIED_FIELDS})
        assert copy["lineage"] == [fork_root, *original["lineage"][1:]]
        expected_parent = fork_root if original["depth"] == 2 else original["parent_message_id"]
        assert copy["parent_message_id"] == expected_parent


async def fork_root_of(node: Node, fork_id: str, source_root: str) -> Json:
    messages = (await tree(node, fork_id))["messages"]
    root = messages[0]
    assert root["message_id"] != source_root
    assert_message(
        root,
        conversation_id=fork_id,
        role="root",
        parent_message_id=None,
        lineage=[root["message_id"]],
        depth=1,
        created_by="bob",
    )
    return root


async def test_fork_whole_conversation(node: Node) -> None:
    cid, root, messages = await small_tree(node)
    body = await fork(node, cid, title="Forked Conversation")
    assert_conversation(
        body,
        title="Forked Conversation",
        description=f"Forked from conversation {cid}",
        created_by="bob",
        is_public=False,
        fork_from_conversation_id=cid,
        fork_from_message_id=None,
    )
    fid = body["conversation_id"]
    assert fid != cid
    assert await ok(node, "GET", conv_path(fid)) == body
    forked = await tree(node, fid)
    assert forked["total_messages"] == 6
    new_root = await fork_root_of(node, fid, root)
    assert_copies(forked["messages"][1:], messages, fid, new_root["message_id"])


async def test_fork_root_metadata_names_the_source(node: Node) -> None:
    cid, _, messages = await small_tree(node)
    leaf = messages[1]["message_id"]
    body = await fork(node, cid, f"/messages/{leaf}", title="F")
    [root, *_] = (await tree(node, body["conversation_id"]))["messages"]
    assert root["content"]["type"] == "metadata"
    assert root["content"]["title"] == "F"
    assert root["content"]["fork_from_conversation_id"] == cid
    assert root["content"]["fork_from_message_id"] == leaf


async def test_fork_branch_copies_the_leafs_lineage(node: Node) -> None:
    cid, root, (a, b, c, d, e) = await small_tree(node)
    branch = await create_branch(node, cid, d["message_id"], name="images")
    body = await fork(node, cid, f"/branches/{branch['branch_id']}", title="Forked Branch")
    assert_conversation(
        body,
        title="Forked Branch",
        created_by="bob",
        fork_from_conversation_id=cid,
        fork_from_message_id=d["message_id"],
    )
    fid = body["conversation_id"]
    forked = await tree(node, fid)
    assert forked["total_messages"] == 3
    new_root = await fork_root_of(node, fid, root)
    assert_copies(forked["messages"][1:], [a, d], fid, new_root["message_id"])


async def test_fork_from_message_copies_its_lineage(node: Node) -> None:
    cid, root, (a, b, c, d, e) = await small_tree(node)
    body = await fork(node, cid, f"/messages/{b['message_id']}", title="Forked from Message")
    assert_conversation(
        body,
        title="Forked from Message",
        created_by="bob",
        fork_from_conversation_id=cid,
        fork_from_message_id=b["message_id"],
    )
    fid = body["conversation_id"]
    forked = await tree(node, fid)
    assert forked["total_messages"] == 3
    new_root = await fork_root_of(node, fid, root)
    assert_copies(forked["messages"][1:], [a, b], fid, new_root["message_id"])


async def test_fork_from_the_root_copies_nothing(node: Node) -> None:
    cid, root, _ = await small_tree(node)
    body = await fork(node, cid, f"/messages/{root}")
    assert body["fork_from_message_id"] == root
    forked = await tree(node, body["conversation_id"])
    assert forked["total_messages"] == 1
    assert forked["messages"][0]["message_id"] != root


async def test_fork_of_a_fresh_conversation(node: Node) -> None:
    cid, root = await new_conversation(node)
    body = await fork(node, cid)
    forked = await tree(node, body["conversation_id"])
    assert forked["total_messages"] == 1
    await fork_root_of(node, body["conversation_id"], root)


async def test_forks_leave_the_source_unchanged(node: Node) -> None:
    cid, _, (a, b, c, d, e) = await small_tree(node)
    await share(node, cid, "bob", "fork")
    branch = await create_branch(node, cid, b["message_id"])
    before = await state(node, [cid], ["alice"])
    await fork(node, cid)
    await fork(node, cid, f"/branches/{branch['branch_id']}")
    await fork(node, cid, f"/messages/{d['message_id']}")
    assert await state(node, [cid], ["alice"]) == before


async def test_appends_to_a_fork_stay_in_the_fork(node: Node) -> None:
    cid, _, (a, b, c, d, e) = await small_tree(node)
    source_before = await tree(node, cid)
    fid = (await fork(node, cid))["conversation_id"]
    added = await append(node, fid, c["message_id"], "only in the fork")
    assert added["conversation_id"] == fid
    assert await tree(node, cid) == source_before
    assert (await tree(node, fid))["total_messages"] == 7
    in_source = await ok(node, "GET", conv_path(cid, f"/messages/{c['message_id']}/children"))
    assert in_source == []


async def test_appends_to_the_source_stay_in_the_source(node: Node) -> None:
    cid, _, (a, b, c, d, e) = await small_tree(node)
    fid = (await fork(node, cid))["conversation_id"]
    fork_before = await tree(node, fid)
    await append(node, cid, c["message_id"], "only in the source")
    assert await tree(node, fid) == fork_before


async def test_fork_of_a_fork(node: Node) -> None:
    cid, root, (a, b, c, d, e) = await small_tree(node)
    first = (await fork(node, cid))["conversation_id"]
    first_root = (await tree(node, first))["messages"][0]["message_id"]
    body = await fork(node, first, f"/messages/{c['message_id']}")
    assert body["fork_from_conversation_id"] == first
    assert body["fork_from_message_id"] == c["message_id"]
    fid = body["conversation_id"]
    new_root = await fork_root_of(node, fid, first_root)
    assert new_root["message_id"] != root
    forked = (await tree(node, fid))["messages"]
    assert_copies(forked[1:], [a, b, c], fid, new_root["message_id"])


async def test_fork_is_listed_for_its_creator(node: Node) -> None:
    cid, _ = await new_conversation(node)
    fid = (await fork(node, cid))["conversation_id"]
    assert await user_conversations(node, "bob") == [fid]
    assert await user_conversations(node, "alice") == [cid]


async def test_fork_whose_body_arrives_after_the_source_was_deleted(node: Node) -> None:
    """The handler found the source, then waited for the body; the delete was acked."""
    cid, _, _ = await small_tree(node)
    conversations = node.app[CONVERSATIONS]
    found, body_sent = asyncio.Event(), asyncio.Event()
    original_get = conversations.get

    async def get(principal: Principal, conversation_id: str) -> Any:
        found.set()
        return await original_get(principal, conversation_id)

    async def slow_body() -> AsyncIterator[bytes]:
        yield b'{"title": "late", '  # the headers go out with a first chunk
        await body_sent.wait()
        yield b'"created_by": "bob"}'

    conversations.get = get  # type: ignore[method-assign]
    forking = asyncio.ensure_future(
        node.request(
            "POST",
            conv_path(cid, "/fork"),
            data=slow_body(),
            headers={"Content-Type": "application/json"},
        )
    )
    await found.wait()
    assert (await node.request("DELETE", conv_path(cid)))[0] == 200
    body_sent.set()
    status, answer = await forking
    assert status == 404, answer
    assert answer["error"]["code"] == "not_found"
    assert await user_conversations(node, "bob") == []
