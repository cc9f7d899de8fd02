"""Factory helpers and shape checks for the HTTP API suite (seed 000's wire format).

Kept in a module with a suite-specific name: test directories have no `__init__.py`,
so a plain `helpers` module could be shadowed by another directory's.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conftest import Node

API = "/api/v1"
Json = Any

CONVERSATION_KEYS = frozenset(
    {
        "conversation_id",
        "title",
        "description",
        "created_at",
        "created_by",
        "is_public",
        "fork_from_conversation_id",
        "fork_from_message_id",
    }
)
MESSAGE_KEYS = frozenset(
    {
        "conversation_id",
        "message_id",
        "parent_message_id",
        "role",
        "content",
        "content_metadata",
        "lineage",
        "depth",
        "created_at",
        "created_by",
    }
)
TREE_KEYS = frozenset({"conversation_id", "messages", "total_messages"})
BRANCH_KEYS = frozenset(
    {
        "conversation_id",
        "branch_id",
        "branch_name",
        "leaf_message_id",
        "created_at",
        "last_updated",
        "created_by",
        "is_active",
    }
)
SHARE_KEYS = frozenset({"conversation_id", "shared_with", "permission", "shared_at", "shared_by"})
ERROR_KEYS = frozenset({"code", "message"})


def conv_path(cid: str, suffix: str = "") -> str:
    return f"{API}/conversations/{cid}{suffix}"


def random_id() -> str:
    return str(uuid.uuid4())


# -- requests -------------------------------------------------------------------------------


async def ok(node: Node, method: str, path: str, json: Json = None) -> Json:
    """The body of a request that must answer 200."""
    kwargs = {} if json is None else {"json": json}
    status, body = await node.request(method, path, **kwargs)
    assert status == 200, (method, path, status, body)
    return body


async def create_conversation(node: Node, **fields: Json) -> Json:
    body = {"title": "A conversation", "created_by": "alice", **fields}
    return await ok(node, "POST", f"{API}/conversations", body)


async def root_id(node: Node, cid: str) -> str:
    tree = await ok(node, "GET", conv_path(cid, "/tree"))
    root: str = tree["messages"][0]["message_id"]
    return root


async def new_conversation(node: Node, **fields: Json) -> tuple[str, str]:
    """(conversation id, root message id) of a fresh conversation."""
    cid = (await create_conversation(node, **fields))["conversation_id"]
    return cid, await root_id(node, cid)


async def append(
    node: Node,
    cid: str,
    parent: str | None,
    text: str = "hello",
    *,
    role: str = "human",
    **fields: Json,
) -> Json:
    body: dict[str, Json] = {
        "role": role,
        "content": {"type": "text", "text": text},
        "created_by": "alice",
        **fields,
    }
    if parent is not None:
        body["parent_message_id"] = parent
    return await ok(node, "POST", conv_path(cid, "/messages"), body)


async def chain(node: Node, cid: str, n: int, parent: str | None = None) -> list[Json]:
    """Append `n` messages, each the child of the previous (the first under `parent` or root)."""
    parent = parent or await root_id(node, cid)
    messages = []
    for i in range(n):
        message = await append(node, cid, parent, f"message {i}")
        messages.append(message)
        parent = message["message_id"]
    return messages


async def create_branch(
    node: Node, cid: str, leaf: str, name: str = "main", created_by: str = "alice"
) -> Json:
    body = {"branch_name": name, "leaf_message_id": leaf, "created_by": created_by}
    return await ok(node, "POST", conv_path(cid, "/branches"), body)


async def share(
    node: Node, cid: str, user: str, permission: str = "read", shared_by: str = "alice"
) -> Json:
    body = {"shared_with": user, "permission": permission, "shared_by": shared_by}
    return await ok(node, "POST", conv_path(cid, "/share"), body)


async def fork(node: Node, cid: str, suffix: str = "", title: str = "Fork") -> Json:
    body = {"title": title, "created_by": "bob"}
    return await ok(node, "POST", conv_path(cid, suffix + "/fork"), body)


async def tree(node: Node, cid: str) -> Json:
    return await ok(node, "GET", conv_path(cid, "/tree"))


async def user_conversations(node: Node, user: str, query: str = "") -> list[str]:
    ids: list[str] = await ok(node, "GET", f"{API}/users/{user}/conversations{query}")
    return ids


# -- state snapshots ------------------------------------------------------------------------


async def state(node: Node, cids: Iterable[str], users: Iterable[str] = ()) -> Json:
    """Everything the API shows about some conversations and users, as (status, body) pairs."""
    paths = [
        conv_path(cid, suffix) for cid in cids for suffix in ("", "/tree", "/branches", "/shares")
    ]
    paths += [f"{API}/users/{user}/conversations" for user in users]
    return {path: await node.request("GET", path) for path in paths}


@asynccontextmanager
async def unchanged(
    node: Node, *cids: str, users: Iterable[str] = ("alice",)
) -> AsyncIterator[None]:
    """Assert that what runs inside changes nothing the API shows about `cids` and `users`."""
    users = tuple(users)
    before = await state(node, cids, users)
    yield
    assert await state(node, cids, users) == before


# -- shape checks ---------------------------------------------------------------------------


def assert_timestamp(value: Json) -> None:
    """RFC 3339 in UTC, as msgspec writes it."""
    assert isinstance(value, str) and value.endswith("Z"), value
    assert datetime.fromisoformat(value.replace("Z", "+00:00")).utcoffset() is not None


def assert_uuid(value: Json) -> None:
    assert isinstance(value, str) and str(uuid.UUID(value)) == value, value


def assert_conversation(body: Json, **expected: Json) -> None:
    assert set(body) == CONVERSATION_KEYS, body
    assert_uuid(body["conversation_id"])
    assert_timestamp(body["created_at"])
    assert {k: body[k] for k in expected} == expected


def assert_message(body: Json, **expected: Json) -> None:
    assert set(body) == MESSAGE_KEYS, body
    assert_uuid(body["message_id"])
    assert_timestamp(body["created_at"])
    assert body["depth"] == len(body["lineage"])
    assert body["lineage"][-1] == body["message_id"]
    assert {k: body[k] for k in expected} == expected


def assert_branch(body: Json, **expected: Json) -> None:
    assert set(body) == BRANCH_KEYS, body
    assert_uuid(body["branch_id"])
    assert_timestamp(body["created_at"])
    assert_timestamp(body["last_updated"])
    assert {k: body[k] for k in expected} == expected


def assert_share(body: Json, **expected: Json) -> None:
    assert set(body) == SHARE_KEYS, body
    assert_timestamp(body["shared_at"])
    assert {k: body[k] for k in expected} == expected


def assert_error(status: int, body: Json, expected_status: int, code: str) -> None:
    """The JSON error shape `{"error": {"code", "message"}}` with this status and code."""
    assert status == expected_status, (status, body)
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert set(body["error"]) == ERROR_KEYS, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body


async def expect_error(
    node: Node, method: str, path: str, status: int, code: str, **kwargs: Json
) -> Json:
    got, body = await node.request(method, path, **kwargs)
    assert_error(got, body, status, code)
    return body
