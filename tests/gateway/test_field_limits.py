"""Field limits: a title, description, name, user id or metadata past its limit answers
422 with the JSON error shape and changes nothing; at the limit it is accepted."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from gateway_helpers import (
    API,
    append,
    conv_path,
    create_branch,
    expect_error,
    new_conversation,
    ok,
    unchanged,
)

from gateway.schemas import (
    MAX_DESCRIPTION,
    MAX_METADATA_ENTRIES,
    MAX_METADATA_KEY,
    MAX_METADATA_VALUE,
    MAX_NAME,
    MAX_TITLE,
    MAX_USER_ID,
)

if TYPE_CHECKING:
    from conftest import Node

# Decoding does not depend on the storage: one backend is enough.
pytestmark = pytest.mark.parametrize("backend", ["embedded"], indirect=True)

LONG_USER = "u" * (MAX_USER_ID + 1)
TEXT = {"type": "text", "text": "hi"}


def message(**fields: Any) -> dict[str, Any]:
    body = {"role": "human", "content": TEXT, "created_by": "alice"}
    return {**body, "parent_message_id": "{leaf}", **fields}


def too_many_entries() -> dict[str, str]:
    return {f"k{i}": "v" for i in range(MAX_METADATA_ENTRIES + 1)}


# (method, path under the conversation ("" is the collection), body); {leaf}, {branch}
# stand for the conversation's root message and its branch.
CASES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "create title": ("POST", "", {"title": "t" * (MAX_TITLE + 1), "created_by": "alice"}),
    "create description": (
        "POST",
        "",
        {"title": "t", "created_by": "alice", "description": "d" * (MAX_DESCRIPTION + 1)},
    ),
    "create created_by": ("POST", "", {"title": "t", "created_by": LONG_USER}),
    "update title": ("PUT", "/", {"title": "t" * (MAX_TITLE + 1)}),
    "update description": ("PUT", "/", {"description": "d" * (MAX_DESCRIPTION + 1)}),
    "message created_by": ("POST", "/messages", message(created_by=LONG_USER)),
    "metadata entries": ("POST", "/messages", message(content_metadata=too_many_entries())),
    "metadata key": (
        "POST",
        "/messages",
        message(content_metadata={"k" * (MAX_METADATA_KEY + 1): "v"}),
    ),
    "metadata value": (
        "POST",
        "/messages",
        message(content_metadata={"k": "v" * (MAX_METADATA_VALUE + 1)}),
    ),
    "branch name": (
        "POST",
        "/branches",
        {"branch_name": "b" * (MAX_NAME + 1), "leaf_message_id": "{leaf}", "created_by": "alice"},
    ),
    "branch rename": ("PUT", "/branches/{branch}", {"branch_name": "b" * (MAX_NAME + 1)}),
    "fork title": ("POST", "/fork", {"title": "t" * (MAX_TITLE + 1), "created_by": "alice"}),
    "share with": (
        "POST",
        "/share",
        {"shared_with": LONG_USER, "permission": "read", "shared_by": "alice"},
    ),
    "share by": (
        "POST",
        "/share",
        {"shared_with": "bob", "permission": "read", "shared_by": LONG_USER},
    ),
}


def fill(value: Any, leaf: str, branch: str) -> Any:
    if isinstance(value, dict):
        return {k: fill(v, leaf, branch) for k, v in value.items()}
    if isinstance(value, str):
        return value.replace("{leaf}", leaf).replace("{branch}", branch)
    return value


@pytest.mark.parametrize("case", sorted(CASES))
async def test_a_field_past_its_limit_is_refused_and_changes_nothing(node: Node, case: str) -> None:
    cid, root = await new_conversation(node)
    branch = (await create_branch(node, cid, root))["branch_id"]
    method, suffix, body = CASES[case]
    path = f"{API}/conversations" if suffix == "" else conv_path(cid, suffix.rstrip("/"))
    path = fill(path, root, branch)
    async with unchanged(node, cid, users=("alice", "bob", LONG_USER)):
        await expect_error(node, method, path, 422, "invalid_field", json=fill(body, root, branch))


async def test_a_long_user_header_is_refused(node: Node) -> None:
    cid, _ = await new_conversation(node)
    headers = {"X-Canopy-User": LONG_USER}
    await expect_error(node, "GET", conv_path(cid), 422, "invalid_field", headers=headers)
    async with unchanged(node, cid):
        await expect_error(
            node, "PUT", conv_path(cid), 422, "invalid_field", json={"title": "x"}, headers=headers
        )


async def test_fields_at_their_limits_are_accepted(node: Node) -> None:
    user = "u" * MAX_USER_ID
    created = await ok(
        node,
        "POST",
        f"{API}/conversations",
        {"title": "t" * MAX_TITLE, "created_by": user, "description": "d" * MAX_DESCRIPTION},
    )
    cid = created["conversation_id"]
    root = (await ok(node, "GET", conv_path(cid, "/tree")))["messages"][0]["message_id"]
    metadata = {
        f"{i:0{MAX_METADATA_KEY}d}": "v" * MAX_METADATA_VALUE for i in range(MAX_METADATA_ENTRIES)
    }
    sent = await append(node, cid, root, created_by=user, content_metadata=metadata)
    assert sent["content_metadata"] == metadata
    branch = await create_branch(node, cid, root, name="b" * MAX_NAME, created_by=user)
    assert branch["branch_name"] == "b" * MAX_NAME
    status, _ = await node.request("GET", conv_path(cid), headers={"X-Canopy-User": user})
    assert status == 200
