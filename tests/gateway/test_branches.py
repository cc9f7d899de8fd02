"""Branches over HTTP: create, list, get, messages (the leaf's lineage), update, delete."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway_helpers import (
    append,
    assert_branch,
    chain,
    conv_path,
    create_branch,
    expect_error,
    new_conversation,
    ok,
    tree,
)

if TYPE_CHECKING:
    from conftest import Node


async def test_create_answers_the_branch(node: Node) -> None:
    cid, _ = await new_conversation(node)
    [leaf] = await chain(node, cid, 1)
    body = await create_branch(node, cid, leaf["message_id"], name="main", created_by="user123")
    assert_branch(
        body,
        conversation_id=cid,
        branch_name="main",
        leaf_message_id=leaf["message_id"],
        created_by="user123",
        is_active=True,
    )
    assert body["last_updated"] == body["created_at"]


async def test_a_branch_may_point_at_the_root(node: Node) -> None:
    cid, root = await new_conversation(node)
    body = await create_branch(node, cid, root)
    assert body["leaf_message_id"] == root


async def test_a_branch_may_point_at_an_inner_message(node: Node) -> None:
    cid, _ = await new_conversation(node)
    inner, _ = await chain(node, cid, 2)
    body = await create_branch(node, cid, inner["message_id"])
    assert body["leaf_message_id"] == inner["message_id"]


async def test_list_in_creation_order(node: Node) -> None:
    cid, root = await new_conversation(node)
    a, b = await chain(node, cid, 2)
    created = [
        await create_branch(node, cid, b["message_id"], name="main"),
        await create_branch(node, cid, root, name="from-root"),
        await create_branch(node, cid, a["message_id"], name="alt"),
    ]
    assert await ok(node, "GET", conv_path(cid, "/branches")) == created


async def test_list_of_a_new_conversation_is_empty(node: Node) -> None:
    cid, _ = await new_conversation(node)
    assert await ok(node, "GET", conv_path(cid, "/branches")) == []


async def test_get_answers_what_create_answered(node: Node) -> None:
    cid, root = await new_conversation(node)
    created = await create_branch(node, cid, root)
    assert await ok(node, "GET", conv_path(cid, f"/branches/{created['branch_id']}")) == created


async def test_messages_are_the_leafs_lineage(node: Node) -> None:
    cid, root = await new_conversation(node)
    a, b, c = await chain(node, cid, 3)
    await append(node, cid, a["message_id"], "elsewhere")
    branch = await create_branch(node, cid, b["message_id"])
    body = await ok(node, "GET", conv_path(cid, f"/branches/{branch['branch_id']}/messages"))
    lineage = await ok(node, "GET", conv_path(cid, f"/messages/{b['message_id']}/lineage"))
    assert body == lineage
    assert [m["message_id"] for m in body] == [root, a["message_id"], b["message_id"]]
    assert body[1:] == [a, b]


async def test_update_name(node: Node) -> None:
    cid, root = await new_conversation(node)
    created = await create_branch(node, cid, root, name="old")
    bid = created["branch_id"]
    updated = await ok(node, "PUT", conv_path(cid, f"/branches/{bid}"), {"branch_name": "new"})
    assert_branch(updated)
    expected = {**created, "branch_name": "new", "last_updated": updated["last_updated"]}
    assert updated == expected
    assert await ok(node, "GET", conv_path(cid, f"/branches/{bid}")) == updated


async def test_update_leaf_moves_the_branch_messages(node: Node) -> None:
    cid, root = await new_conversation(node)
    a, b = await chain(node, cid, 2)
    created = await create_branch(node, cid, a["message_id"])
    bid = created["branch_id"]
    updated = await ok(
        node, "PUT", conv_path(cid, f"/branches/{bid}"), {"leaf_message_id": b["message_id"]}
    )
    assert updated == {
        **created,
        "leaf_message_id": b["message_id"],
        "last_updated": updated["last_updated"],
    }
    messages = await ok(node, "GET", conv_path(cid, f"/branches/{bid}/messages"))
    assert [m["message_id"] for m in messages] == [root, a["message_id"], b["message_id"]]


async def test_update_name_and_leaf(node: Node) -> None:
    cid, root = await new_conversation(node)
    [a] = await chain(node, cid, 1)
    created = await create_branch(node, cid, a["message_id"], name="x")
    bid = created["branch_id"]
    updated = await ok(
        node,
        "PUT",
        conv_path(cid, f"/branches/{bid}"),
        {"branch_name": "y", "leaf_message_id": root},
    )
    assert (updated["branch_name"], updated["leaf_message_id"]) == ("y", root)
    assert await ok(node, "GET", conv_path(cid, f"/branches/{bid}")) == updated


async def test_update_one_branch_leaves_the_others(node: Node) -> None:
    cid, root = await new_conversation(node)
    first = await create_branch(node, cid, root, name="first")
    second = await create_branch(node, cid, root, name="second")
    await ok(node, "PUT", conv_path(cid, f"/branches/{first['branch_id']}"), {"branch_name": "z"})
    assert await ok(node, "GET", conv_path(cid, f"/branches/{second['branch_id']}")) == second


async def test_delete(node: Node) -> None:
    cid, root = await new_conversation(node)
    [a] = await chain(node, cid, 1)
    gone = await create_branch(node, cid, a["message_id"], name="gone")
    kept = await create_branch(node, cid, root, name="kept")
    before = await tree(node, cid)
    path = conv_path(cid, f"/branches/{gone['branch_id']}")
    assert await ok(node, "DELETE", path) == {"message": "Branch deleted successfully"}
    await expect_error(node, "GET", path, 404, "not_found")
    await expect_error(node, "GET", path + "/messages", 404, "not_found")
    await expect_error(node, "DELETE", path, 404, "not_found")
    assert await ok(node, "GET", conv_path(cid, "/branches")) == [kept]
    assert await tree(node, cid) == before
