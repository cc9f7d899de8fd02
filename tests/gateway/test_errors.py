"""Errors across the API: every failure is a JSON error with the right status, and changes nothing.

The `world` fixture builds two conversations; each error test runs inside `unchanged`,
which compares everything the API shows about them (and their users) before and after.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import pytest
from gateway_helpers import (
    API,
    Json,
    assert_error,
    chain,
    create_branch,
    expect_error,
    new_conversation,
    ok,
    random_id,
    share,
    unchanged,
)

from engine.access import ANONYMOUS
from gateway.keys import CONVERSATIONS

if TYPE_CHECKING:
    from conftest import Node, NodeFactory

USERS = ("alice", "bob", "carol")
JSON_TYPE = {"Content-Type": "application/json"}  # raw bodies: aiohttp would send octet-stream


@dataclass(frozen=True)
class World:
    cid: str  # root -> mid -> leaf, branch `bid` at leaf, shared with bob
    root: str
    mid: str
    leaf: str
    bid: str
    other_cid: str  # a second conversation, with one message `other_mid`
    other_mid: str

    def path(self, template: str, **overrides: str) -> str:
        return API + template.format(**{**asdict(self), **overrides})


@pytest.fixture
async def world(node: Node) -> World:
    cid, root = await new_conversation(node)
    mid, leaf = (m["message_id"] for m in await chain(node, cid, 2))
    bid = (await create_branch(node, cid, leaf))["branch_id"]
    await share(node, cid, "bob", "branch")
    other_cid, _ = await new_conversation(node, title="Other")
    [other] = await chain(node, other_cid, 1)
    return World(cid, root, mid, leaf, bid, other_cid, other["message_id"])


def still(node: Node, w: World) -> AbstractAsyncContextManager[None]:
    """Nothing the API shows about the world's conversations and users may change."""
    return unchanged(node, w.cid, w.other_cid, users=USERS)


# -- the endpoints ----------------------------------------------------------------------------

Body = Callable[[World], dict[str, Json]]


def _fork(w: World) -> dict[str, Json]:
    return {"title": "Forked", "created_by": "bob"}


# name -> (method, path template, a valid body)
WRITES: dict[str, tuple[str, str, Body]] = {
    "create_conversation": (
        "POST",
        "/conversations",
        lambda w: {"title": "t", "created_by": "alice", "description": "d", "is_public": True},
    ),
    "update_conversation": (
        "PUT",
        "/conversations/{cid}",
        lambda w: {"title": "t2", "description": "d2", "is_public": True},
    ),
    "append": (
        "POST",
        "/conversations/{cid}/messages",
        lambda w: {
            "parent_message_id": w.leaf,
            "role": "human",
            "content": {"type": "text", "text": "x"},
            "created_by": "alice",
            "content_metadata": {"k": "v"},
            "branch_id": w.bid,
        },
    ),
    "create_branch": (
        "POST",
        "/conversations/{cid}/branches",
        lambda w: {"branch_name": "b", "leaf_message_id": w.mid, "created_by": "alice"},
    ),
    "update_branch": (
        "PUT",
        "/conversations/{cid}/branches/{bid}",
        lambda w: {"branch_name": "renamed", "leaf_message_id": w.mid},
    ),
    "fork": ("POST", "/conversations/{cid}/fork", _fork),
    "fork_branch": ("POST", "/conversations/{cid}/branches/{bid}/fork", _fork),
    "fork_message": ("POST", "/conversations/{cid}/messages/{mid}/fork", _fork),
    "share": (
        "POST",
        "/conversations/{cid}/share",
        lambda w: {"shared_with": "carol", "permission": "fork", "shared_by": "alice"},
    ),
}
FIELDS = {
    "create_conversation": ["title", "created_by", "description", "is_public"],
    "update_conversation": ["title", "description", "is_public"],
    "append": [
        "parent_message_id",
        "role",
        "content",
        "created_by",
        "content_metadata",
        "branch_id",
    ],
    "create_branch": ["branch_name", "leaf_message_id", "created_by"],
    "update_branch": ["branch_name", "leaf_message_id"],
    "fork": ["title", "created_by"],
    "fork_branch": ["title", "created_by"],
    "fork_message": ["title", "created_by"],
    "share": ["shared_with", "permission", "shared_by"],
}
REQUIRED = {
    "create_conversation": ["title", "created_by"],
    "append": ["role", "content", "created_by"],
    "create_branch": ["branch_name", "leaf_message_id", "created_by"],
    "fork": ["title", "created_by"],
    "fork_branch": ["title", "created_by"],
    "fork_message": ["title", "created_by"],
    "share": ["shared_with", "permission", "shared_by"],
}
READS = {
    "get_conversation": "/conversations/{cid}",
    "tree": "/conversations/{cid}/tree",
    "get_message": "/conversations/{cid}/messages/{mid}",
    "children": "/conversations/{cid}/messages/{mid}/children",
    "lineage": "/conversations/{cid}/messages/{mid}/lineage",
    "list_branches": "/conversations/{cid}/branches",
    "get_branch": "/conversations/{cid}/branches/{bid}",
    "branch_messages": "/conversations/{cid}/branches/{bid}/messages",
    "list_shares": "/conversations/{cid}/shares",
}
DELETES = {
    "delete_conversation": "/conversations/{cid}",
    "delete_branch": "/conversations/{cid}/branches/{bid}",
    "revoke": "/conversations/{cid}/shares/bob",
}
# every route with a conversation in its path: name -> (method, template, body or None)
ROUTES: dict[str, tuple[str, str, Body | None]] = {
    **{name: ("GET", template, None) for name, template in READS.items()},
    **{name: ("DELETE", template, None) for name, template in DELETES.items()},
    **{name: route for name, route in WRITES.items() if "{cid}" in route[1]},
}
PATH_PARAMS = [
    (name, param)
    for name, (_, template, _) in ROUTES.items()
    for param in ("cid", "mid", "bid")
    if "{" + param + "}" in template
]


async def call(node: Node, w: World, name: str, body: Json = None, **ids: str) -> tuple[int, Json]:
    method, template, _ = ROUTES.get(name) or WRITES[name]
    kwargs = {} if body is None else {"json": body}
    return await node.request(method, w.path(template, **ids), **kwargs)


def valid(name: str, w: World) -> dict[str, Json] | None:
    body = (ROUTES.get(name) or WRITES[name])[2]
    return None if body is None else body(w)


# -- the valid bodies work (so every error below is caused by what each test changes) ----


@pytest.mark.parametrize("name", WRITES)
async def test_valid_body_is_accepted(node: Node, world: World, name: str) -> None:
    body = valid(name, world)
    assert body is not None and list(body) == FIELDS[name]
    status, answer = await call(node, world, name, body)
    assert status == 200, answer


@pytest.mark.parametrize("name", ROUTES)
async def test_every_route_answers_for_the_world(node: Node, world: World, name: str) -> None:
    status, answer = await call(node, world, name, valid(name, world))
    assert status == 200, answer


# -- 400: not JSON ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [b'{"title": ', b"{not json}", b"{'a': 1}", b""],
    ids=["truncated", "bare_words", "single_quotes", "empty"],
)
@pytest.mark.parametrize("name", WRITES)
async def test_malformed_json(node: Node, world: World, name: str, raw: bytes) -> None:
    method, template, _ = WRITES[name]
    async with still(node, world):
        await expect_error(
            node, method, world.path(template), 400, "malformed_json", data=raw, headers=JSON_TYPE
        )


# -- 422: fields ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "field"), [(name, field) for name, fields in REQUIRED.items() for field in fields]
)
async def test_missing_field(node: Node, world: World, name: str, field: str) -> None:
    body = valid(name, world)
    assert body is not None
    del body[field]
    async with still(node, world):
        status, answer = await call(node, world, name, body)
        assert_error(status, answer, 422, "invalid_field")


def wrong_type(value: Json) -> Json:
    if isinstance(value, bool):
        return "true"
    if isinstance(value, str):
        return 123
    return "not an object"


@pytest.mark.parametrize(
    ("name", "field"), [(name, field) for name, fields in FIELDS.items() for field in fields]
)
async def test_wrong_type(node: Node, world: World, name: str, field: str) -> None:
    body = valid(name, world)
    assert body is not None
    body[field] = wrong_type(body[field])
    async with still(node, world):
        status, answer = await call(node, world, name, body)
        assert_error(status, answer, 422, "invalid_field")


# name -> {case: changes to the valid body}; each makes the request invalid (422)
INVALID: dict[str, dict[str, Callable[[World], dict[str, Json]]]] = {
    "create_conversation": {
        "is_public_as_string": lambda w: {"is_public": "false"},
        "title_null": lambda w: {"title": None},
        "empty_created_by": lambda w: {"created_by": ""},
    },
    "append": {
        "unknown_role": lambda w: {"role": "robot"},
        "role_root": lambda w: {"role": "root"},
        "empty_role": lambda w: {"role": ""},
        "malformed_parent": lambda w: {"parent_message_id": "not-a-uuid"},
        "malformed_branch": lambda w: {"branch_id": "nope"},
        "parent_from_other_conversation": lambda w: {
            "parent_message_id": w.other_mid,
            "branch_id": None,
        },
        "unknown_parent": lambda w: {"parent_message_id": random_id(), "branch_id": None},
        "no_parent_no_branch": lambda w: {"parent_message_id": None, "branch_id": None},
        "content_without_type": lambda w: {"content": {"text": "x"}},
        "content_type_not_string": lambda w: {"content": {"type": 5, "text": "x"}},
        "content_type_list": lambda w: {"content": {"type": ["text"], "text": "x"}},
        "content_not_object": lambda w: {"content": ["text"]},
        "text_missing": lambda w: {"content": {"type": "text"}},
        "text_not_string": lambda w: {"content": {"type": "text", "text": {"nested": [1]}}},
        "image_without_url": lambda w: {"content": {"type": "image", "width": 3}},
        "image_width_as_string": lambda w: {
            "content": {"type": "image", "image_url": "u", "width": "100"}
        },
        "image_batch_not_list": lambda w: {"content": {"type": "image_batch", "images": "x"}},
        "image_batch_item_junk": lambda w: {
            "content": {"type": "image_batch", "images": [{"image_url": ["x"]}]}
        },
        "tool_call_without_id": lambda w: {
            "content": {"type": "tool_call", "tool_name": "f", "arguments": {}}
        },
        "tool_result_success_string": lambda w: {
            "content": {"type": "tool_result", "tool_call_id": "c", "result": 1, "success": "yes"}
        },
        "metadata_value_not_string": lambda w: {"content_metadata": {"k": 1}},
        "metadata_not_object": lambda w: {"content_metadata": ["k"]},
        "empty_created_by": lambda w: {"created_by": ""},
    },
    "create_branch": {
        "empty_branch_name": lambda w: {"branch_name": ""},
        "empty_created_by": lambda w: {"created_by": ""},
        "malformed_leaf": lambda w: {"leaf_message_id": "123"},
        "leaf_from_other_conversation": lambda w: {"leaf_message_id": w.other_mid},
        "unknown_leaf": lambda w: {"leaf_message_id": random_id()},
    },
    "update_branch": {
        "empty_branch_name": lambda w: {"branch_name": ""},
        "malformed_leaf": lambda w: {"leaf_message_id": "xyz"},
        "leaf_from_other_conversation": lambda w: {"leaf_message_id": w.other_mid},
        "unknown_leaf": lambda w: {"leaf_message_id": random_id()},
    },
    "share": {
        "unknown_permission": lambda w: {"permission": "admin"},
        "uppercase_permission": lambda w: {"permission": "READ"},
        "empty_permission": lambda w: {"permission": ""},
        "empty_shared_with": lambda w: {"shared_with": ""},
        "empty_shared_by": lambda w: {"shared_by": ""},
    },
    **{
        name: {"empty_created_by": lambda w: {"created_by": ""}}
        for name in ("fork", "fork_branch", "fork_message")
    },
}


@pytest.mark.parametrize(
    ("name", "case"), [(name, case) for name, cases in INVALID.items() for case in cases]
)
async def test_invalid_field(node: Node, world: World, name: str, case: str) -> None:
    body = valid(name, world)
    assert body is not None
    body.update(INVALID[name][case](world))
    async with still(node, world):
        status, answer = await call(node, world, name, body)
        assert_error(status, answer, 422, "invalid_field")


@pytest.mark.parametrize("name", ["update_conversation", "update_branch"])
@pytest.mark.parametrize(
    "body",
    [{}, {"bogus": 1}, {"title": None, "branch_name": None}],
    ids=["empty", "unknown", "nulls"],
)
async def test_update_that_changes_nothing(
    node: Node, world: World, name: str, body: dict[str, Json]
) -> None:
    """422, and not even the conversation's version moves."""
    revision = await node.app[CONVERSATIONS].revision(ANONYMOUS, world.cid)
    async with still(node, world):
        status, answer = await call(node, world, name, body)
        assert_error(status, answer, 422, "invalid_field")
    assert await node.app[CONVERSATIONS].revision(ANONYMOUS, world.cid) == revision


@pytest.mark.parametrize("limit", ["9" * 5000, "0" * 5000 + "1", "-1", "1e3", "10001"])
async def test_listing_limit_out_of_range(node: Node, world: World, limit: str) -> None:
    async with still(node, world):
        await expect_error(
            node, "GET", f"{API}/users/alice/conversations?limit={limit}", 422, "invalid_field"
        )


async def test_revoke_an_empty_user(node: Node, world: World) -> None:
    async with still(node, world):
        status, answer = await node.request("DELETE", world.path("/conversations/{cid}/shares/"))
        assert_error(status, answer, 404, "not_found")


@pytest.mark.parametrize(("name", "param"), PATH_PARAMS)
@pytest.mark.parametrize("junk", ["not-a-uuid", "1234", "0" * 36])
async def test_malformed_uuid_in_path(
    node: Node, world: World, name: str, param: str, junk: str
) -> None:
    async with still(node, world):
        status, answer = await call(node, world, name, valid(name, world), **{param: junk})
        assert_error(status, answer, 422, "invalid_field")


async def test_depth_beyond_max_lineage_depth(start_node: NodeFactory) -> None:
    node = await start_node(max_lineage_depth=3)
    cid, root = await new_conversation(node)
    deepest = (await chain(node, cid, 2))[-1]
    assert deepest["depth"] == 3
    branch = await create_branch(node, cid, deepest["message_id"])
    body = {"role": "human", "content": {"type": "text", "text": "x"}, "created_by": "a"}
    path = f"{API}/conversations/{cid}/messages"
    async with unchanged(node, cid):
        for extra in (
            {"parent_message_id": deepest["message_id"]},
            {"branch_id": branch["branch_id"]},
        ):
            await expect_error(node, "POST", path, 422, "invalid_field", json={**body, **extra})
    await ok(node, "POST", path, {**body, "parent_message_id": root})


# -- 404 --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ROUTES)
async def test_unknown_conversation(node: Node, world: World, name: str) -> None:
    async with still(node, world):
        status, answer = await call(node, world, name, valid(name, world), cid=random_id())
        assert_error(status, answer, 404, "not_found")


@pytest.mark.parametrize("name", [name for name, param in PATH_PARAMS if param == "mid"])
async def test_unknown_message(node: Node, world: World, name: str) -> None:
    async with still(node, world):
        for mid in (random_id(), world.other_mid):
            status, answer = await call(node, world, name, valid(name, world), mid=mid)
            assert_error(status, answer, 404, "not_found")


@pytest.mark.parametrize("name", [name for name, param in PATH_PARAMS if param == "bid"])
async def test_unknown_branch(node: Node, world: World, name: str) -> None:
    async with still(node, world):
        status, answer = await call(node, world, name, valid(name, world), bid=random_id())
        assert_error(status, answer, 404, "not_found")


async def test_append_to_an_unknown_branch(node: Node, world: World) -> None:
    body = {**WRITES["append"][2](world), "branch_id": random_id()}
    async with still(node, world):
        status, answer = await call(node, world, "append", body)
        assert_error(status, answer, 404, "not_found")


async def test_revoke_an_unknown_share(node: Node, world: World) -> None:
    async with still(node, world):
        await expect_error(
            node, "DELETE", world.path("/conversations/{cid}/shares/carol"), 404, "not_found"
        )


async def test_deleted_conversation_is_not_found_everywhere(node: Node, world: World) -> None:
    await ok(node, "DELETE", world.path("/conversations/{cid}"))
    async with still(node, world):
        for name in ROUTES:
            status, answer = await call(node, world, name, valid(name, world))
            assert_error(status, answer, 404, "not_found")


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/nothing",
        "/api/v2/conversations",
        "/api/v1/conversations/{cid}/nope",
        "/api/v1/users/alice",
        "/api/v1/conversations/{cid}/messages/{mid}/parent",
        "/",
    ],
)
async def test_unknown_route(node: Node, world: World, path: str) -> None:
    async with still(node, world):
        await expect_error(node, "GET", path.format(**asdict(world)), 404, "not_found")


# -- 405, 413 ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("POST", "/api/v1/conversations/{cid}", {"GET", "PUT", "PATCH", "DELETE"}),
        ("DELETE", "/api/v1/conversations", {"GET", "POST"}),
        ("POST", "/api/v1/conversations/{cid}/tree", {"GET"}),
        ("PUT", "/api/v1/conversations/{cid}/messages/{mid}", {"GET"}),
        ("GET", "/api/v1/conversations/{cid}/share", {"POST"}),
        ("POST", "/api/v1/users/alice/conversations", {"GET"}),
        ("POST", "/health", {"GET"}),
    ],
)
async def test_wrong_method(
    node: Node, world: World, method: str, path: str, allowed: set[str]
) -> None:
    url = node.base + path.format(**asdict(world))
    async with still(node, world), node.session.request(method, url) as response:
        body = json.loads(await response.read())
        assert response.content_type == "application/json"
        assert_error(response.status, body, 405, "method_not_allowed")
        assert set(response.headers["Allow"].split(",")) - {"HEAD"} == allowed


async def test_body_over_the_limit(start_node: NodeFactory) -> None:
    node = await start_node(max_body_bytes=2000)
    cid, root = await new_conversation(node)
    mid = (await chain(node, cid, 1))[0]["message_id"]
    bid = (await create_branch(node, cid, mid))["branch_id"]
    w = World(cid, root, mid, mid, bid, cid, mid)
    async with unchanged(node, cid, users=USERS):
        for method, template, body in WRITES.values():
            padded = json.dumps({**body(w), "padding": "x" * 5000}).encode()
            assert len(padded) > 5000
            got, answer = await node.request(
                method, w.path(template), data=padded, headers=JSON_TYPE
            )
            assert_error(got, answer, 413, "payload_too_large")
    small = json.dumps({"title": "t", "description": "d" * 1500, "created_by": "alice"}).encode()
    status, answer = await node.request(
        "POST", f"{API}/conversations", data=small, headers=JSON_TYPE
    )
    assert status == 200, answer


# -- junk never makes a 500 -------------------------------------------------------------------


def _deep(depth: int = 100_000) -> bytes:
    return b"[" * depth + b"]" * depth


def _non_utf8_string(body: dict[str, Json]) -> bytes:
    key = next(k for k in ("title", "branch_name", "shared_with", "created_by") if k in body)
    raw = json.dumps({**body, key: "MARK"}).encode()
    return raw.replace(b'"MARK"', b'"bad \xff\xfe bytes"')


TYPED_FIELDS = frozenset(
    {
        "is_public",
        "parent_message_id",
        "branch_id",
        "leaf_message_id",
        "role",
        "permission",
        "content",
        "content_metadata",
    }
)


def _numbers_as_strings(body: dict[str, Json]) -> bytes:
    """A numeric string where a bool, UUID, enum or object goes; a number where text goes."""
    return json.dumps({k: "12" if k in TYPED_FIELDS else 12 for k in body}).encode()


JUNK: dict[str, Callable[[dict[str, Json]], bytes]] = {
    "empty": lambda b: b"",
    "whitespace": lambda b: b"  \n ",
    "json_array": lambda b: json.dumps([b]).encode(),
    "json_string": lambda b: b'"hello"',
    "json_number": lambda b: b"42",
    "json_null": lambda b: b"null",
    "nan": lambda b: b'{"title": NaN}',
    "truncated": lambda b: json.dumps(b).encode()[:-1],
    "trailing_garbage": lambda b: json.dumps(b).encode() + b"}",
    "types_swapped": lambda b: json.dumps({k: wrong_type(v) for k, v in b.items()}).encode(),
    "numbers_as_strings": _numbers_as_strings,
    "huge_ints": lambda b: json.dumps({k: 10**40 for k in b}).encode(),
    "nested_junk": lambda b: json.dumps({k: {"a": [[{"b": None}], {}]} for k in b}).encode(),
    "deep_nesting": lambda b: json.dumps(b).encode()[:-1] + b', "junk": ' + _deep() + b"}",
    "non_utf8_bare": lambda b: b"\xff\xfe" + json.dumps(b).encode(),
    "non_utf8_in_string": _non_utf8_string,
}


def is_client_error(status: int, answer: Json) -> bool:
    try:
        assert_error(status, answer, status, answer["error"]["code"])
    except (AssertionError, KeyError, TypeError):
        return False
    return 400 <= status < 500


@pytest.mark.parametrize("junk", JUNK)
async def test_junk_never_makes_a_500(node: Node, world: World, junk: str) -> None:
    """Each junk body at every POST/PUT endpoint: a 4xx JSON error, and nothing changes."""
    answers = {}
    async with still(node, world):
        for name, (method, template, body) in WRITES.items():
            raw = JUNK[junk](body(world))
            answers[name] = await node.request(
                method, world.path(template), data=raw, headers=JSON_TYPE
            )
    assert {name: a for name, a in answers.items() if not is_client_error(*a)} == {}


# raw JSON of a message's `content`: malformed in assorted ways
CONTENT_JUNK: dict[str, bytes] = {
    "deep_arguments": b'{"type": "tool_call", "tool_name": "f", "tool_call_id": "c", "arguments": '
    + _deep()
    + b"}",
    "deep_unknown_type": b'{"type": "x", "a": {"b": ' + _deep() + b"}}",
    "null_type": b'{"type": null}',
    "empty_object": b"{}",
    "object_type": b'{"type": {"type": "text"}, "text": "x"}',
    "images_of_numbers": b'{"type": "image_batch", "images": [1, 2, 3]}',
    "arguments_missing": b'{"type": "tool_call", "tool_name": "f", "tool_call_id": "c"}',
    "non_utf8_text": b'{"type": "text", "text": "\xff"}',
}


@pytest.mark.parametrize("case", CONTENT_JUNK)
async def test_content_junk_never_makes_a_500(node: Node, world: World, case: str) -> None:
    body = json.dumps({**WRITES["append"][2](world), "content": "MARK"}).encode()
    raw = body.replace(b'"MARK"', CONTENT_JUNK[case])
    async with still(node, world):
        answer = await node.request(
            "POST", world.path("/conversations/{cid}/messages"), data=raw, headers=JSON_TYPE
        )
    assert is_client_error(*answer), answer


@pytest.mark.parametrize(
    "content",
    [
        {"type": "image", "image_url": "u", "width": 10**40},
        {"type": "image", "image_url": "u", "size_bytes": -(10**40)},
        {"type": "audio", "samples": [10**40, -(10**40)]},
    ],
    ids=["image_width", "image_size", "unknown_type"],
)
async def test_huge_ints_in_content_are_stored_exactly_or_rejected(
    node: Node, world: World, content: Json
) -> None:
    body = {**WRITES["append"][2](world), "content": content}
    status, answer = await call(node, world, "append", body)
    assert status in (200, 422), (status, answer)
    if status == 200:
        assert answer["content"] == content
        stored = await ok(
            node, "GET", world.path(f"/conversations/{{cid}}/messages/{answer['message_id']}")
        )
        assert stored["content"] == content
    else:
        assert_error(status, answer, 422, "invalid_field")
