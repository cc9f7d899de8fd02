"""Shares over HTTP (create, list, re-share, revoke) and GET /users/{user}/conversations."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote

import pytest
from gateway_helpers import (
    API,
    append,
    assert_share,
    conv_path,
    expect_error,
    new_conversation,
    ok,
    share,
    unchanged,
    user_conversations,
)

if TYPE_CHECKING:
    from conftest import Node, NodeFactory


@pytest.mark.parametrize("permission", ["read", "branch", "fork"])
async def test_create_answers_the_share(node: Node, permission: str) -> None:
    cid, _ = await new_conversation(node)
    body = await share(node, cid, "user456", permission, shared_by="user123")
    assert_share(
        body, conversation_id=cid, shared_with="user456", permission=permission, shared_by="user123"
    )


async def test_list_in_share_order(node: Node) -> None:
    cid, _ = await new_conversation(node)
    created = [
        await share(node, cid, user, perm)
        for user, perm in [("bob", "read"), ("carol", "fork"), ("dave", "branch")]
    ]
    assert await ok(node, "GET", conv_path(cid, "/shares")) == created


async def test_list_of_an_unshared_conversation_is_empty(node: Node) -> None:
    cid, _ = await new_conversation(node)
    assert await ok(node, "GET", conv_path(cid, "/shares")) == []


async def test_reshare_updates_the_permission(node: Node) -> None:
    cid, _ = await new_conversation(node)
    await share(node, cid, "bob", "read")
    carol = await share(node, cid, "carol", "read")
    again = await share(node, cid, "bob", "fork", shared_by="carol")
    assert_share(again, shared_with="bob", permission="fork", shared_by="carol")
    shares = await ok(node, "GET", conv_path(cid, "/shares"))
    assert sorted(shares, key=lambda s: s["shared_with"]) == [again, carol]


async def test_revoke(node: Node) -> None:
    cid, _ = await new_conversation(node)
    await share(node, cid, "bob")
    carol = await share(node, cid, "carol")
    body = await ok(node, "DELETE", conv_path(cid, "/shares/bob"))
    assert body == {"message": "Share revoked successfully"}
    assert await ok(node, "GET", conv_path(cid, "/shares")) == [carol]
    async with unchanged(node, cid, users=("alice", "bob", "carol")):
        await expect_error(node, "DELETE", conv_path(cid, "/shares/bob"), 404, "not_found")


async def test_revoke_a_user_never_shared_with(node: Node) -> None:
    cid, _ = await new_conversation(node)
    async with unchanged(node, cid):
        await expect_error(node, "DELETE", conv_path(cid, "/shares/nobody"), 404, "not_found")


async def test_share_again_after_revoke(node: Node) -> None:
    cid, _ = await new_conversation(node)
    await share(node, cid, "bob", "fork")
    await ok(node, "DELETE", conv_path(cid, "/shares/bob"))
    again = await share(node, cid, "bob", "read")
    assert await ok(node, "GET", conv_path(cid, "/shares")) == [again]
    assert await user_conversations(node, "bob") == [cid]


@pytest.mark.parametrize("user", ["x@y.com", "a b", "é", "a/b", "a%b"])
async def test_user_ids_with_special_characters(node: Node, user: str) -> None:
    cid, _ = await new_conversation(node)
    await share(node, cid, user, "fork")
    encoded = quote(user, safe="")
    assert await ok(node, "GET", f"{API}/users/{encoded}/conversations") == [cid]
    await ok(node, "DELETE", conv_path(cid, f"/shares/{encoded}"))
    assert await ok(node, "GET", conv_path(cid, "/shares")) == []
    assert await ok(node, "GET", f"{API}/users/{encoded}/conversations") == []


# -- a user's conversations ---------------------------------------------------------------


async def test_user_conversations_is_a_list_of_ids(node: Node) -> None:
    cid, _ = await new_conversation(node)
    body = await ok(node, "GET", f"{API}/users/alice/conversations")
    assert body == [cid]


async def test_unknown_user_has_no_conversations(node: Node) -> None:
    await new_conversation(node)
    assert await user_conversations(node, "nobody") == []


async def test_owned_and_shared_conversations_are_listed(node: Node) -> None:
    mine, _ = await new_conversation(node, created_by="bob")
    shared, _ = await new_conversation(node, created_by="alice")
    other, _ = await new_conversation(node, created_by="alice")
    await share(node, shared, "bob", "read")
    assert set(await user_conversations(node, "bob")) == {mine, shared}
    assert set(await user_conversations(node, "alice")) == {shared, other}


async def test_most_recently_active_first(node: Node) -> None:
    ids = [(await new_conversation(node))[0] for _ in range(3)]
    assert await user_conversations(node, "alice") == ids[::-1]
    first_root = (await ok(node, "GET", conv_path(ids[0], "/tree")))["messages"][0]
    await append(node, ids[0], first_root["message_id"])
    assert await user_conversations(node, "alice") == [ids[0], ids[2], ids[1]]
    await ok(node, "PUT", conv_path(ids[1]), {"title": "touched"})
    assert await user_conversations(node, "alice") == [ids[1], ids[0], ids[2]]


async def test_shared_conversations_rank_by_activity_too(node: Node) -> None:
    older, older_root = await new_conversation(node)
    newer, _ = await new_conversation(node)
    await share(node, older, "bob")
    await share(node, newer, "bob")
    assert await user_conversations(node, "bob") == [newer, older]
    await append(node, older, older_root)
    assert await user_conversations(node, "bob") == [older, newer]


async def test_revoked_share_removes_the_conversation(node: Node) -> None:
    kept, _ = await new_conversation(node)
    revoked, _ = await new_conversation(node)
    await share(node, kept, "bob")
    await share(node, revoked, "bob")
    await ok(node, "DELETE", conv_path(revoked, "/shares/bob"))
    assert await user_conversations(node, "bob") == [kept]
    assert set(await user_conversations(node, "alice")) == {kept, revoked}


async def test_limit(node: Node) -> None:
    ids = [(await new_conversation(node))[0] for _ in range(4)]
    assert await user_conversations(node, "alice", "?limit=2") == ids[:1:-1]
    assert await user_conversations(node, "alice", "?limit=1") == [ids[3]]
    assert await user_conversations(node, "alice", "?limit=1000") == ids[::-1]


@pytest.mark.parametrize(
    "limit",
    ["0", "-1", "abc", "1.5", "1001", "", "²"],
    ids=["zero", "negative", "word", "fraction", "over_max", "empty", "superscript_two"],
)
async def test_bad_limit_is_invalid(node: Node, limit: str) -> None:
    await new_conversation(node)
    await expect_error(
        node,
        "GET",
        f"{API}/users/alice/conversations",
        422,
        "invalid_field",
        params={"limit": limit},
    )


async def test_who_else_it_is_shared_with_is_for_the_owner(start_node: NodeFactory) -> None:
    from gateway.auth import api_key_digest

    node = await start_node(auth="api-key", api_keys=f"k:{api_key_digest('share-key')}")

    def acting_for(user: str) -> dict[str, str]:
        return {"X-API-Key": "share-key", "X-Canopy-User": user}

    status, created = await node.request(
        "POST", "/api/v1/conversations", json={"title": "t"}, headers=acting_for("alice")
    )
    cid = created["conversation_id"]
    for user in ("bob", "carol"):
        status, _ = await node.request(
            "POST", conv_path(cid, "/share"), headers=acting_for("alice"),
            json={"shared_with": user, "permission": "read"},
        )  # fmt: skip
        assert status == 200
    listed = {}
    for user in ("alice", "bob", "dave"):
        status, body = await node.request(
            "GET", conv_path(cid, "/shares"), headers=acting_for(user)
        )
        listed[user] = (status, [s["shared_with"] for s in body] if status == 200 else None)
    assert listed == {"alice": (200, ["bob", "carol"]), "bob": (200, ["bob"]), "dave": (404, None)}
