"""Session features: PATCH, what a create adds, expiry, and delete on every backend."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest
from gateway_helpers import (
    API,
    Json,
    append,
    chain,
    conv_path,
    create_branch,
    create_conversation,
    expect_error,
    new_conversation,
    ok,
    share,
)

from gateway.auth import api_key_digest

if TYPE_CHECKING:
    from conftest import Node, NodeFactory

SESSION_KEYS = {
    "conversation_id", "title", "description", "created_at", "created_by", "is_public",
    "fork_from_conversation_id", "fork_from_message_id", "updated_at", "message_count",
    "last_message", "is_favorite", "archived", "tags", "expires_at",
}  # fmt: skip


def rfc3339(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


async def test_patch_sets_each_field_and_answers_the_session(node: Node) -> None:
    cid, root = await new_conversation(node, title="Before")
    await append(node, cid, root, "the newest words " * 20)
    later = datetime.now(UTC) + timedelta(days=3)
    body = await ok(
        node,
        "PATCH",
        conv_path(cid),
        {"title": "After", "description": "d", "is_favorite": True, "archived": True,
         "tags": ["work", "q3"], "expires_at": rfc3339(later)},
    )  # fmt: skip
    assert set(body) == SESSION_KEYS
    assert (body["title"], body["description"], body["is_favorite"], body["archived"]) == (
        "After", "d", True, True,
    )  # fmt: skip
    assert body["tags"] == ["work", "q3"]
    assert datetime.fromisoformat(body["expires_at"]) == later
    assert body["message_count"] == 2
    assert body["last_message"] == ("the newest words " * 20)[:200]
    # seed 000's GET keeps its fields, with the new title
    got = await ok(node, "GET", conv_path(cid))
    assert "is_favorite" not in got and got["title"] == "After"
    one = await ok(node, "PATCH", conv_path(cid), {"is_favorite": False})
    assert (one["is_favorite"], one["archived"], one["title"]) == (False, True, "After")
    cleared = await ok(node, "PATCH", conv_path(cid), {"expires_at": None})
    assert cleared["expires_at"] is None and cleared["tags"] == ["work", "q3"]


async def test_ttl_seconds_sets_an_expiry_from_now(node: Node) -> None:
    cid, _ = await new_conversation(node)
    before = datetime.now(UTC)
    body = await ok(node, "PATCH", conv_path(cid), {"ttl_seconds": 3600})
    expires = datetime.fromisoformat(body["expires_at"])
    assert before + timedelta(seconds=3600) <= expires <= datetime.now(UTC) + timedelta(hours=1)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"unknown": 1},
        {"tags": [f"t{i}" for i in range(21)]},
        {"tags": ["x" * 65]},
        {"tags": [""]},
        {"expires_at": "tomorrow"},
        {"expires_at": "2030-01-01T00:00:00"},  # no offset
        {"ttl_seconds": 0},
        {"ttl_seconds": 60, "expires_at": "2030-01-01T00:00:00Z"},
        {"is_favorite": "yes"},
        {"title": None},
        {"ttl_seconds": 10**12},  # past any date: was a 500 (timedelta overflow)
        {"expires_at": None, "ttl_seconds": 60},  # clear and set at once
        {"title": "t" * 1001},  # PUT's limits hold for PATCH too
        {"description": "d" * 10_001},
    ],
)
async def test_invalid_patches_answer_422_and_change_nothing(node: Node, body: Json) -> None:
    cid, _ = await new_conversation(node)
    await ok(node, "PATCH", conv_path(cid), {"tags": ["kept"]})
    before = await listing_of(node)
    await expect_error(node, "PATCH", conv_path(cid), 422, "invalid_field", json=body)
    assert await listing_of(node) == before


async def listing_of(node: Node, user: str = "alice", query: str = "") -> list[Json]:
    body = await ok_as(node, user, "GET", f"{API}/conversations{query}")
    items: list[Json] = body["conversations"]
    return items


async def ok_as(node: Node, user: str, method: str, path: str, json: Json = None) -> Json:
    kwargs: dict[str, Json] = {"headers": {"X-Canopy-User": user}}
    if json is not None:
        kwargs["json"] = json
    status, body = await node.request(method, path, **kwargs)
    assert status == 200, (method, path, status, body)
    return body


KEY = "session-test-key"
SHARE_BOB = {"shared_with": "bob", "permission": "fork", "shared_by": "alice"}


def acting_for(user: str) -> dict[str, str]:
    return {"X-API-Key": KEY, "X-Canopy-User": user}


async def test_only_the_owner_patches(start_node: NodeFactory) -> None:
    node = await start_node(auth="api-key", api_keys=f"test:{api_key_digest(KEY)}")
    alice = {"headers": acting_for("alice")}
    status, created = await node.request(
        "POST", f"{API}/conversations", json={"title": "t", "created_by": "alice"}, **alice
    )
    assert status == 200, created
    cid = created["conversation_id"]
    status, _ = await node.request("POST", conv_path(cid, "/share"), json=SHARE_BOB, **alice)
    assert status == 200
    for user, status, code in (("bob", 403, "permission_denied"), ("eve", 404, "not_found")):
        got, body = await node.request(
            "PATCH", conv_path(cid), json={"is_favorite": True}, headers=acting_for(user)
        )
        assert (got, body["error"]["code"]) == (status, code)
    status, listed = await node.request("GET", f"{API}/conversations", **alice)
    assert [item["is_favorite"] for item in listed["conversations"]] == [False]
    status, theirs = await node.request("GET", f"{API}/conversations", headers=acting_for("bob"))
    assert [item["permission"] for item in theirs["conversations"]] == ["fork"]
    status, body = await node.request("GET", f"{API}/conversations", headers={"X-API-Key": KEY})
    assert (status, body["error"]["code"]) == (422, "invalid_field")  # a service, no user


async def test_create_takes_session_fields_and_the_node_default_ttl(
    start_node: NodeFactory,
) -> None:
    node = await start_node(default_ttl_seconds=7200)
    body = await create_conversation(node, is_favorite=True, tags=["a"])
    assert set(body) == {
        "conversation_id",
        "title",
        "description",
        "created_at",
        "created_by",
        "is_public",
        "fork_from_conversation_id",
        "fork_from_message_id",
    }  # fmt: skip: seed 000's create answer
    [item] = await listing_of(node)
    assert (item["is_favorite"], item["tags"]) == (True, ["a"])
    expires = datetime.fromisoformat(item["expires_at"])
    assert timedelta(seconds=7000) < expires - datetime.now(UTC) <= timedelta(seconds=7200)
    at = rfc3339(datetime.now(UTC) + timedelta(days=1))
    explicit = await create_conversation(node, expires_at=at)
    listed = {i["conversation_id"]: i for i in await listing_of(node)}
    assert listed[explicit["conversation_id"]]["expires_at"] == at
    await expect_error(
        node, "POST", f"{API}/conversations", 422, "invalid_field",
        json={"title": "t", "created_by": "alice", "tags": ["x" * 65]},
    )  # fmt: skip
    past = rfc3339(datetime.now(UTC) - timedelta(seconds=1))
    for refused in ({"expires_at": past}, {"ttl_seconds": 10**12}):
        await expect_error(
            node, "POST", f"{API}/conversations", 422, "invalid_field",
            json={"title": "t", "created_by": "alice", **refused},
        )  # fmt: skip
    assert len(await listing_of(node)) == 2  # nothing was created


async def test_ttl_seconds_null_clears_the_expiry(node: Node) -> None:
    cid, _ = await new_conversation(node, ttl_seconds=60)
    cleared = await ok(node, "PATCH", conv_path(cid), {"ttl_seconds": None})
    assert cleared["expires_at"] is None


async def test_a_fork_expires_with_the_node_default_and_no_later_than_its_source(
    start_node: NodeFactory,
) -> None:
    node = await start_node(default_ttl_seconds=7200)
    source, _ = await new_conversation(node, ttl_seconds=60)
    fork = await ok(node, "POST", conv_path(source, "/fork"), {"title": "f", "created_by": "bob"})
    src = await ok(node, "PATCH", conv_path(source), {"tags": ["x"]})
    forked = await ok(node, "PATCH", conv_path(fork["conversation_id"]), {"tags": ["x"]})
    assert forked["expires_at"] == src["expires_at"]  # the sooner: the source's
    lasting, _ = await new_conversation(node)
    await ok(node, "PATCH", conv_path(lasting), {"expires_at": None})
    fork = await ok(node, "POST", conv_path(lasting, "/fork"), {"title": "f", "created_by": "bob"})
    forked = await ok(node, "PATCH", conv_path(fork["conversation_id"]), {"tags": ["x"]})
    expires = datetime.fromisoformat(forked["expires_at"])  # the node's default
    assert timedelta(seconds=7000) < expires - datetime.now(UTC) <= timedelta(seconds=7200)


async def test_an_expired_conversation_vanishes_from_every_read(
    node: Node, start_node: NodeFactory
) -> None:
    kept, _ = await new_conversation(node, title="kept")
    cid, root = await new_conversation(node, title="expiring", ttl_seconds=3600)
    [message] = await chain(node, cid, 1)
    branch = await create_branch(node, cid, message["message_id"])
    await share(node, cid, "bob", "read")
    assert {i["conversation_id"] for i in await listing_of(node)} == {kept, cid}
    just_past = rfc3339(datetime.now(UTC) - timedelta(seconds=1))
    await ok(node, "PATCH", conv_path(cid), {"expires_at": just_past})
    reads = ("", "/tree", f"/messages/{root}", f"/messages/{message['message_id']}/lineage",
             f"/messages/{root}/children", "/branches", f"/branches/{branch['branch_id']}",
             "/shares")  # fmt: skip
    for suffix in reads:
        await expect_error(node, "GET", conv_path(cid, suffix), 404, "not_found")
    await expect_error(node, "PATCH", conv_path(cid), 404, "not_found", json={"title": "x"})
    await expect_error(node, "POST", conv_path(cid, "/fork"), 404, "not_found",
                       json={"title": "f", "created_by": "alice"})  # fmt: skip
    assert [i["conversation_id"] for i in await listing_of(node)] == [kept]
    assert await listing_of(node, "bob") == []
    assert await ok(node, "GET", f"{API}/users/alice/conversations") == [kept]
    await node.close()
    again = await start_node(data_dir=node.settings.data_dir)
    await expect_error(again, "GET", conv_path(cid), 404, "not_found")
    assert [i["conversation_id"] for i in await listing_of(again)] == [kept]


async def test_session_fields_survive_a_restart(node: Node, start_node: NodeFactory) -> None:
    cid, root = await new_conversation(node)
    await append(node, cid, root, "last words")
    later = rfc3339(datetime.now(UTC) + timedelta(days=2))
    body = {"is_favorite": True, "archived": True, "tags": ["t"], "expires_at": later}
    await ok(node, "PATCH", conv_path(cid), body)
    before = await listing_of(node, query="?archived=true")
    await node.close()
    again = await start_node(data_dir=node.settings.data_dir)
    after = await listing_of(again, query="?archived=true")
    assert after == before
    [item] = after
    assert (item["is_favorite"], item["tags"], item["expires_at"]) == (True, ["t"], later)
    assert item["last_message"] == "last words"


async def test_delete_removes_it_with_its_messages_branches_and_shares(
    node: Node, start_node: NodeFactory
) -> None:
    cid, root = await new_conversation(node)
    [message] = await chain(node, cid, 1)
    await create_branch(node, cid, message["message_id"])
    await share(node, cid, "bob", "branch")
    await ok(node, "DELETE", conv_path(cid))
    await node.close()
    again = await start_node(data_dir=node.settings.data_dir)
    for suffix in ("", "/tree", f"/messages/{root}", "/branches", "/shares"):
        await expect_error(again, "GET", conv_path(cid, suffix), 404, "not_found")
    assert await listing_of(again) == [] and await listing_of(again, "bob") == []
