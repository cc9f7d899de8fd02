"""Conversations over HTTP: create, get, tree, update, delete; and GET /health."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway_helpers import (
    API,
    TREE_KEYS,
    append,
    assert_conversation,
    assert_message,
    assert_timestamp,
    chain,
    conv_path,
    create_branch,
    create_conversation,
    expect_error,
    new_conversation,
    ok,
    tree,
    user_conversations,
)

if TYPE_CHECKING:
    from conftest import Node


async def test_health(node: Node) -> None:
    body = await ok(node, "GET", "/health")
    assert set(body) == {"status", "timestamp"}
    assert body["status"] == "ok"
    assert_timestamp(body["timestamp"])


async def test_head_health(node: Node) -> None:
    """Load balancers probe with HEAD: 200 and the headers of GET, without a body."""
    async with node.session.head(node.base + "/health") as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        assert await response.read() == b""


async def test_create_answers_the_conversation(node: Node) -> None:
    body = await create_conversation(node, title="Trip to Rome", created_by="user123")
    assert_conversation(
        body,
        title="Trip to Rome",
        description=None,
        created_by="user123",
        is_public=False,
        fork_from_conversation_id=None,
        fork_from_message_id=None,
    )


async def test_create_with_description_and_public(node: Node) -> None:
    body = await create_conversation(node, description="planning", is_public=True)
    assert_conversation(body, title="A conversation", description="planning", is_public=True)


async def test_each_create_gets_a_new_id(node: Node) -> None:
    first = await create_conversation(node)
    second = await create_conversation(node)
    assert first["conversation_id"] != second["conversation_id"]


async def test_get_answers_what_create_answered(node: Node) -> None:
    created = await create_conversation(node, description="d", is_public=True)
    assert await ok(node, "GET", conv_path(created["conversation_id"])) == created


async def test_new_tree_holds_only_the_root(node: Node) -> None:
    created = await create_conversation(node, title="T", description="D", is_public=True)
    cid = created["conversation_id"]
    body = await tree(node, cid)
    assert set(body) == TREE_KEYS
    assert body["conversation_id"] == cid and body["total_messages"] == 1
    [root] = body["messages"]
    assert_message(
        root,
        conversation_id=cid,
        parent_message_id=None,
        role="root",
        content={"type": "metadata", "title": "T", "description": "D", "is_public": True},
        content_metadata={},
        lineage=[root["message_id"]],
        depth=1,
        created_by="alice",
    )
    assert root["created_at"] == created["created_at"]


async def test_root_metadata_carries_null_description_and_false_is_public(node: Node) -> None:
    """Defaults are part of the content too: a client reads `is_public` from the root."""
    cid, _ = await new_conversation(node, title="T")
    [root] = (await tree(node, cid))["messages"]
    assert root["content"] == {
        "type": "metadata",
        "title": "T",
        "description": None,
        "is_public": False,
    }


async def test_tree_lists_every_message_in_creation_order(node: Node) -> None:
    cid, root = await new_conversation(node)
    first, second = await chain(node, cid, 2)
    sibling = await append(node, cid, root, "other answer")
    body = await tree(node, cid)
    assert body["total_messages"] == 4
    assert body["messages"][1:] == [first, second, sibling]
    assert [m["lineage"] for m in body["messages"]] == [
        [root],
        [root, first["message_id"]],
        [root, first["message_id"], second["message_id"]],
        [root, sibling["message_id"]],
    ]


async def test_update_title_and_description(node: Node) -> None:
    created = await create_conversation(node, title="Old", is_public=True)
    cid = created["conversation_id"]
    body = {"title": "Updated Title", "description": "New description"}
    updated = await ok(node, "PUT", conv_path(cid), body)
    assert updated == {**created, **body}
    assert await ok(node, "GET", conv_path(cid)) == updated


async def test_update_is_mirrored_in_the_root_metadata(node: Node) -> None:
    cid, _ = await new_conversation(node, title="Old", description="old", is_public=True)
    await ok(node, "PUT", conv_path(cid), {"title": "New", "description": "new"})
    [root] = (await tree(node, cid))["messages"]
    assert root["content"] == {
        "type": "metadata",
        "title": "New",
        "description": "new",
        "is_public": True,
    }


async def test_update_is_public(node: Node) -> None:
    created = await create_conversation(node, description="d")
    cid = created["conversation_id"]
    updated = await ok(node, "PUT", conv_path(cid), {"is_public": True})
    assert updated == {**created, "is_public": True}
    [root] = (await tree(node, cid))["messages"]
    assert root["content"]["is_public"] is True


async def test_update_with_only_a_title_keeps_the_description(node: Node) -> None:
    created = await create_conversation(node, description="keep me")
    cid = created["conversation_id"]
    updated = await ok(node, "PUT", conv_path(cid), {"title": "Renamed"})
    assert updated == {**created, "title": "Renamed"}


async def test_update_keeps_the_messages(node: Node) -> None:
    cid, _ = await new_conversation(node)
    await chain(node, cid, 2)
    before = (await tree(node, cid))["messages"]
    await ok(node, "PUT", conv_path(cid), {"title": "Renamed"})
    after = (await tree(node, cid))["messages"]
    assert after[1:] == before[1:]


async def test_delete(node: Node) -> None:
    cid, root = await new_conversation(node)
    body = await ok(node, "DELETE", conv_path(cid))
    assert body == {"message": "Conversation deleted successfully"}
    for suffix in ("", "/tree", f"/messages/{root}", "/branches", "/shares"):
        await expect_error(node, "GET", conv_path(cid, suffix), 404, "not_found")


async def test_deleted_conversation_accepts_no_writes(node: Node) -> None:
    cid, root = await new_conversation(node)
    await ok(node, "DELETE", conv_path(cid))
    message = {
        "parent_message_id": root,
        "role": "human",
        "created_by": "a",
        "content": {"type": "text", "text": "x"},
    }
    branch = {"branch_name": "b", "leaf_message_id": root, "created_by": "a"}
    share = {"shared_with": "bob", "permission": "read", "shared_by": "alice"}
    for method, suffix, body in [
        ("POST", "/messages", message),
        ("POST", "/branches", branch),
        ("POST", "/share", share),
        ("POST", "/fork", {"title": "f", "created_by": "bob"}),
        ("PUT", "", {"title": "again"}),
        ("DELETE", "", None),
    ]:
        await expect_error(node, method, conv_path(cid, suffix), 404, "not_found", json=body)


async def test_delete_removes_it_from_the_owners_list(node: Node) -> None:
    kept, _ = await new_conversation(node)
    gone, _ = await new_conversation(node)
    assert set(await user_conversations(node, "alice")) == {kept, gone}
    await ok(node, "DELETE", conv_path(gone))
    assert await user_conversations(node, "alice") == [kept]


async def test_delete_leaves_other_conversations_alone(node: Node) -> None:
    kept, root = await new_conversation(node)
    await create_branch(node, kept, root)
    before = [await ok(node, "GET", conv_path(kept, s)) for s in ("", "/tree", "/branches")]
    gone, _ = await new_conversation(node)
    await ok(node, "DELETE", conv_path(gone))
    after = [await ok(node, "GET", conv_path(kept, s)) for s in ("", "/tree", "/branches")]
    assert after == before


async def test_conversations_are_listed_under_the_api_base(node: Node) -> None:
    """The seed's base path: nothing is served at /conversations without /api/v1."""
    cid, _ = await new_conversation(node)
    assert (await ok(node, "GET", f"{API}/conversations/{cid}"))["conversation_id"] == cid
    await expect_error(node, "GET", f"/conversations/{cid}", 404, "not_found")
