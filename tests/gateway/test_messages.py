"""Messages over HTTP: append (roles, content types, branch leaves), get, children, lineage."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from gateway_helpers import (
    Json,
    append,
    assert_message,
    chain,
    conv_path,
    create_branch,
    new_conversation,
    ok,
    tree,
)

if TYPE_CHECKING:
    from conftest import Node

CONTENTS: dict[str, Json] = {
    "text": {"type": "text", "text": "Hello, world! ✓ émoji 🌲"},
    "image_full": {
        "type": "image",
        "image_url": "s3://aigc-images/a.png",
        "thumbnail_url": "s3://aigc-images/a.thumb.png",
        "width": 1024,
        "height": 768,
        "mime_type": "image/png",
        "size_bytes": 123456,
    },
    "image_minimal": {"type": "image", "image_url": "https://example.com/b.jpg"},
    "image_batch": {
        "type": "image_batch",
        "images": [
            {"image_url": "s3://b/1.png", "prompt": "a cat", "model": "sdxl"},
            {"image_url": "s3://b/2.png"},
        ],
    },
    "tool_call_object": {
        "type": "tool_call",
        "tool_name": "search",
        "arguments": {"q": "weather", "opts": {"n": 3, "deep": [1, 2.5, None, True]}},
        "tool_call_id": "call_1",
    },
    "tool_call_list": {
        "type": "tool_call",
        "tool_name": "f",
        "arguments": [1, "two"],
        "tool_call_id": "c",
    },
    "tool_call_string": {
        "type": "tool_call",
        "tool_name": "f",
        "arguments": "raw",
        "tool_call_id": "c",
    },
    "tool_call_number": {
        "type": "tool_call",
        "tool_name": "f",
        "arguments": -1.5,
        "tool_call_id": "c",
    },
    "tool_call_null": {
        "type": "tool_call",
        "tool_name": "f",
        "arguments": None,
        "tool_call_id": "c",
    },
    "tool_result_ok": {
        "type": "tool_result",
        "tool_call_id": "call_1",
        "result": {"temp": 21, "unit": "C"},
        "success": True,
    },
    "tool_result_failed": {
        "type": "tool_result",
        "tool_call_id": "call_1",
        "result": "timeout",
        "success": False,
    },
    "unknown_type": {
        "type": "audio_clip",
        "url": "s3://x/y.ogg",
        "seconds": 12.25,
        "tags": ["a", {"nested": [None, False]}],
        "extra": {"deep": {"deeper": 1}},
    },
    "text_with_extra_fields": {"type": "text", "text": "hi", "lang": "en", "tokens": 1},
}
ROLES = ["human", "assistant", "system", "tool", "user", "ai"]


async def test_append_answers_the_message(node: Node) -> None:
    cid, root = await new_conversation(node)
    body = await append(node, cid, root, "Hello, world!", created_by="user123")
    assert_message(
        body,
        conversation_id=cid,
        parent_message_id=root,
        role="human",
        content={"type": "text", "text": "Hello, world!"},
        content_metadata={},
        lineage=[root, body["message_id"]],
        depth=2,
        created_by="user123",
    )


@pytest.mark.parametrize("role", ROLES)
async def test_role_is_echoed(node: Node, role: str) -> None:
    cid, root = await new_conversation(node)
    body = await append(node, cid, root, role=role)
    assert body["role"] == role
    stored = await ok(node, "GET", conv_path(cid, f"/messages/{body['message_id']}"))
    assert stored["role"] == role


@pytest.mark.parametrize("content", CONTENTS.values(), ids=CONTENTS.keys())
async def test_content_round_trips(node: Node, content: Json) -> None:
    cid, root = await new_conversation(node)
    body = await ok(
        node,
        "POST",
        conv_path(cid, "/messages"),
        {
            "parent_message_id": root,
            "role": "assistant",
            "content": content,
            "created_by": "bot",
        },
    )
    assert body["content"] == content
    stored = await ok(node, "GET", conv_path(cid, f"/messages/{body['message_id']}"))
    assert stored == body
    assert (await tree(node, cid))["messages"][1] == body


async def test_content_metadata_round_trips(node: Node) -> None:
    cid, root = await new_conversation(node)
    metadata = {"encoding": "utf-8", "language": "en", "empty": ""}
    body = await append(node, cid, root, content_metadata=metadata)
    assert body["content_metadata"] == metadata
    stored = await ok(node, "GET", conv_path(cid, f"/messages/{body['message_id']}"))
    assert stored["content_metadata"] == metadata


async def test_lineage_and_depth_grow_down_a_chain(node: Node) -> None:
    cid, root = await new_conversation(node)
    messages = await chain(node, cid, 4)
    ids = [root] + [m["message_id"] for m in messages]
    for i, message in enumerate(messages, start=1):
        assert message["lineage"] == ids[: i + 1]
        assert message["depth"] == i + 1
        assert message["parent_message_id"] == ids[i - 1]


async def test_get_answers_what_append_answered(node: Node) -> None:
    cid, _ = await new_conversation(node)
    *_, last = await chain(node, cid, 3)
    assert await ok(node, "GET", conv_path(cid, f"/messages/{last['message_id']}")) == last


async def test_get_the_root(node: Node) -> None:
    cid, root = await new_conversation(node)
    body = await ok(node, "GET", conv_path(cid, f"/messages/{root}"))
    assert body == (await tree(node, cid))["messages"][0]
    assert_message(body, role="root", lineage=[root], depth=1, parent_message_id=None)


async def test_children_in_creation_order(node: Node) -> None:
    cid, root = await new_conversation(node)
    [parent] = await chain(node, cid, 1)
    pid = parent["message_id"]
    kids = [await append(node, cid, pid, f"answer {i}", role="assistant") for i in range(3)]
    await append(node, cid, root, "not a child of parent")
    await append(node, cid, kids[0]["message_id"], "a grandchild")
    children = await ok(node, "GET", conv_path(cid, f"/messages/{pid}/children"))
    assert children == kids
    for kid in children:
        assert kid["lineage"] == [root, pid, kid["message_id"]]


async def test_children_of_a_leaf_are_empty(node: Node) -> None:
    cid, _ = await new_conversation(node)
    [leaf] = await chain(node, cid, 1)
    assert await ok(node, "GET", conv_path(cid, f"/messages/{leaf['message_id']}/children")) == []


async def test_children_of_the_root(node: Node) -> None:
    cid, root = await new_conversation(node)
    first = await append(node, cid, root, "a")
    second = await append(node, cid, root, "b")
    assert await ok(node, "GET", conv_path(cid, f"/messages/{root}/children")) == [first, second]


async def test_lineage_runs_from_the_root_to_the_message(node: Node) -> None:
    cid, root = await new_conversation(node)
    messages = await chain(node, cid, 3)
    await append(node, cid, messages[0]["message_id"], "a side branch")
    last = messages[-1]
    lineage = await ok(node, "GET", conv_path(cid, f"/messages/{last['message_id']}/lineage"))
    assert [m["message_id"] for m in lineage] == last["lineage"]
    assert lineage[0]["message_id"] == root and lineage[0]["role"] == "root"
    for i, message in enumerate(lineage):
        assert message["lineage"] == last["lineage"][: i + 1]
        path = conv_path(cid, f"/messages/{message['message_id']}")
        assert message == await ok(node, "GET", path)


async def test_lineage_of_the_root(node: Node) -> None:
    cid, root = await new_conversation(node)
    lineage = await ok(node, "GET", conv_path(cid, f"/messages/{root}/lineage"))
    assert [m["message_id"] for m in lineage] == [root]
    assert lineage[0]["lineage"] == [root]


async def test_append_with_branch_id_moves_the_leaf(node: Node) -> None:
    cid, root = await new_conversation(node)
    [start] = await chain(node, cid, 1)
    branch = await create_branch(node, cid, start["message_id"])
    other = await create_branch(node, cid, start["message_id"], name="other")
    bid = branch["branch_id"]
    first = await append(node, cid, None, "via branch", branch_id=bid)
    assert first["parent_message_id"] == start["message_id"]
    second = await append(node, cid, None, "again", branch_id=bid)
    assert second["lineage"] == [
        root,
        start["message_id"],
        first["message_id"],
        second["message_id"],
    ]
    moved = await ok(node, "GET", conv_path(cid, f"/branches/{bid}"))
    assert moved["leaf_message_id"] == second["message_id"]
    assert {k: moved[k] for k in ("branch_name", "created_at", "created_by")} == {
        k: branch[k] for k in ("branch_name", "created_at", "created_by")
    }
    untouched = await ok(node, "GET", conv_path(cid, f"/branches/{other['branch_id']}"))
    assert untouched == other


async def test_append_with_branch_id_and_parent_uses_the_parent(node: Node) -> None:
    cid, root = await new_conversation(node)
    [leaf] = await chain(node, cid, 1)
    branch = await create_branch(node, cid, leaf["message_id"])
    bid = branch["branch_id"]
    body = await append(node, cid, root, "from the root", branch_id=bid)
    assert body["parent_message_id"] == root
    moved = await ok(node, "GET", conv_path(cid, f"/branches/{bid}"))
    assert moved["leaf_message_id"] == body["message_id"]


async def test_append_without_branch_leaves_branches_alone(node: Node) -> None:
    cid, _ = await new_conversation(node)
    [leaf] = await chain(node, cid, 1)
    branch = await create_branch(node, cid, leaf["message_id"])
    await append(node, cid, leaf["message_id"], "no branch id")
    assert await ok(node, "GET", conv_path(cid, f"/branches/{branch['branch_id']}")) == branch


async def test_each_append_counts_in_the_tree(node: Node) -> None:
    cid, root = await new_conversation(node)
    await chain(node, cid, 3)
    await append(node, cid, root, "sibling")
    body = await tree(node, cid)
    assert body["total_messages"] == len(body["messages"]) == 5
