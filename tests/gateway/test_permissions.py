"""The permission matrix: who may call which endpoint of a conversation, with real API keys.

Every caller is a service key acting for a user (`X-Canopy-User`), so it has exactly that
user's permissions: the owner, a holder of each share, a reader of a public conversation
and a stranger to a private one. A refusal changes nothing; what a caller may not see
answers exactly what an unknown conversation answers. Each caller's sidebar lists exactly
what is theirs or shared with them, and a user's own JWT behaves as a service acting for
that user.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jwt
import pytest
from gateway_helpers import API, Json, assert_error, conv_path, random_id, state

if TYPE_CHECKING:
    from conftest import Node, NodeFactory

KEY = "a-service-key-for-the-matrix"
AUTH = {"auth": "api-key", "api_keys": f"svc:{hashlib.sha256(KEY.encode()).hexdigest()}"}
SECRET = "the-matrix-signs-its-own-tokens-with-this"  # 32+ bytes: HS256's minimum
JWT_AUTH = {**AUTH, "auth": "jwt,api-key", "jwt_secret": SECRET}
OWNER, READER, BRANCHER, FORKER, PUBLIC_READER, STRANGER = (
    "olive", "reed", "bran", "forkie", "paula", "stan",
)  # fmt: skip
SHARES = {READER: "read", BRANCHER: "branch", FORKER: "fork"}


class Caller:
    """A service key acting for one user, or for nobody (the unrestricted service)."""

    def __init__(self, node: Node, user: str | None = None, key: str | None = KEY) -> None:
        self.node = node
        self.user = user
        self.headers = {} if key is None else {"X-API-Key": key}
        if user is not None:
            self.headers["X-Canopy-User"] = user

    @classmethod
    def with_token(cls, node: Node, user: str) -> Caller:
        """The user themself, with an HS256 token of the node's secret."""
        caller = cls(node, key=None)
        caller.user = user
        token = jwt.encode({"sub": user, "exp": time.time() + 600}, SECRET, algorithm="HS256")
        caller.headers["Authorization"] = f"Bearer {token}"
        return caller

    async def request(self, method: str, path: str, **kwargs: Any) -> tuple[int, Json]:
        return await self.node.request(method, path, headers=self.headers, **kwargs)

    async def send(self, method: str, path: str, body: Json = None) -> tuple[int, Json]:
        return await self.request(method, path, **({} if body is None else {"json": body}))

    async def ok(self, method: str, path: str, body: Json = None) -> Json:
        status, answer = await self.send(method, path, body)
        assert status == 200, (self.user, method, path, status, answer)
        return answer


@dataclasses.dataclass(frozen=True)
class World:
    """A conversation root -> first -> second with a branch at second, shared with one
    holder of each permission (none if public)."""

    cid: str
    first: str
    second: str
    branch: str


def message(user: str, parent: str) -> Json:
    return {
        "role": "human",
        "content": {"type": "text", "text": "hi"},
        "created_by": user,
        "parent_message_id": parent,
    }


async def build(owner: Caller, *, public: bool = False) -> World:
    conversations = f"{API}/conversations"
    body = {"title": "matrix", "created_by": owner.user, "is_public": public}
    cid = (await owner.ok("POST", conversations, body))["conversation_id"]
    root = (await owner.ok("GET", conv_path(cid, "/tree")))["messages"][0]["message_id"]
    say = conv_path(cid, "/messages")
    first = (await owner.ok("POST", say, message(OWNER, root)))["message_id"]
    second = (await owner.ok("POST", say, message(OWNER, first)))["message_id"]
    branch = {"branch_name": "main", "leaf_message_id": second, "created_by": OWNER}
    branch_id = (await owner.ok("POST", conv_path(cid, "/branches"), branch))["branch_id"]
    for user, permission in ({} if public else SHARES).items():
        share = {"shared_with": user, "permission": permission, "shared_by": OWNER}
        await owner.ok("POST", conv_path(cid, "/share"), share)
    return World(cid, first, second, branch_id)


Body = Callable[[World, str], Json]


@dataclasses.dataclass(frozen=True)
class Endpoint:
    method: str
    suffix: str  # under the conversation; {first} and {branch} name the world's
    body: Body | None = None
    label: str = ""  # tells apart two requests to one route

    def call(self, world: World, user: str) -> tuple[str, str, Json]:
        """(method, path, body) of this endpoint on the world, by the user."""
        path = conv_path(world.cid, self.suffix.format(first=world.first, branch=world.branch))
        return self.method, path, None if self.body is None else self.body(world, user)

    def __str__(self) -> str:
        return f"{self.method} {self.suffix or '/'}{self.label}"


def _to_branch(world: World, user: str) -> Json:
    body = message(user, world.first)
    del body["parent_message_id"]
    return {**body, "branch_id": world.branch}


def _fork(world: World, user: str) -> Json:
    return {"title": "my fork", "created_by": user}


def _branch(world: World, user: str) -> Json:
    return {"branch_name": "side", "leaf_message_id": world.first, "created_by": user}


def _share(world: World, user: str) -> Json:
    return {"shared_with": "newcomer", "permission": "read", "shared_by": user}


# The expected status of each endpoint for each caller, written out rather than derived.
#        owner read branch fork public stranger
READS = (200, 200, 200, 200, 200, 404)
BRANCH = (200, 403, 200, 200, 403, 404)
FORK = (200, 403, 403, 200, 403, 404)
OWNS = (200, 403, 403, 403, 403, 404)
MATRIX: dict[Endpoint, tuple[int, ...]] = {
    Endpoint("GET", ""): READS,
    Endpoint("GET", "/tree"): READS,
    Endpoint("PUT", "", lambda w, u: {"title": "renamed", "is_public": True}): OWNS,
    Endpoint("PATCH", "", lambda w, u: {"title": "patched", "is_favorite": True}): OWNS,
    Endpoint("DELETE", ""): OWNS,
    Endpoint("POST", "/messages", lambda w, u: message(u, w.second)): BRANCH,
    Endpoint("POST", "/messages", _to_branch, " (to a branch)"): BRANCH,
    Endpoint("GET", "/messages/{first}"): READS,
    Endpoint("GET", "/messages/{first}/children"): READS,
    Endpoint("GET", "/messages/{first}/lineage"): READS,
    Endpoint("POST", "/branches", _branch): BRANCH,
    Endpoint("GET", "/branches"): READS,
    Endpoint("GET", "/branches/{branch}"): READS,
    Endpoint("GET", "/branches/{branch}/messages"): READS,
    Endpoint("PUT", "/branches/{branch}", lambda w, u: {"leaf_message_id": w.first}): BRANCH,
    Endpoint("DELETE", "/branches/{branch}"): BRANCH,
    Endpoint("POST", "/fork", _fork): FORK,
    Endpoint("POST", "/branches/{branch}/fork", _fork): FORK,
    Endpoint("POST", "/messages/{first}/fork", _fork): FORK,
    Endpoint("POST", "/share", _share): OWNS,
    Endpoint("GET", "/shares"): READS,
    Endpoint("DELETE", f"/shares/{READER}"): OWNS,
}
CALLERS = [  # (user, column in MATRIX, whether their world is public)
    pytest.param(OWNER, 0, False, id="owner"),
    pytest.param(READER, 1, False, id="read"),
    pytest.param(BRANCHER, 2, False, id="branch"),
    pytest.param(FORKER, 3, False, id="fork"),
    pytest.param(PUBLIC_READER, 4, True, id="public-reader"),
    pytest.param(STRANGER, 5, False, id="stranger"),
]
ERROR_CODES = {403: "permission_denied", 404: "not_found"}


async def snapshot(system: Caller, world: World, user: str) -> Json:
    """What the API shows about the world and the two users' listings (a fork or a new
    share would show there), read by the unrestricted service."""
    return await state(system, [world.cid], users=(OWNER, user))  # type: ignore[arg-type]


@pytest.mark.parametrize(("user", "column", "public"), CALLERS)
async def test_matrix(start_node: NodeFactory, user: str, column: int, public: bool) -> None:
    node = await start_node(**AUTH)
    system, owner, caller = Caller(node), Caller(node, OWNER), Caller(node, user)
    world = await build(owner, public=public)
    for endpoint in MATRIX:  # the owner reads first: the response cache holds each listing
        if endpoint.method == "GET":
            await owner.ok(*endpoint.call(world, OWNER)[:2])
    problems: list[str] = []
    for endpoint, statuses in MATRIX.items():
        want = statuses[column]
        if want == 200 and endpoint.method != "GET":  # it changes the world: a fresh one
            status, body = await caller.send(*endpoint.call(await build(owner), user))
        else:
            before = await snapshot(system, world, user)
            status, body = await caller.send(*endpoint.call(world, user))
            if want != 200 and await snapshot(system, world, user) != before:
                problems.append(f"{endpoint}: refused ({status}) but changed the conversation")
        if status != want:
            problems.append(f"{endpoint}: {status} {body}, expected {want}")
        elif want in ERROR_CODES and body["error"]["code"] != ERROR_CODES[want]:
            problems.append(f"{endpoint}: {body}, expected code {ERROR_CODES[want]}")
        if want == 404:
            problems += await _same_as_unknown(caller, endpoint, world, (status, body))
    assert not problems, "\n".join(problems)


async def _same_as_unknown(
    caller: Caller, endpoint: Endpoint, world: World, seen: tuple[int, Json]
) -> list[str]:
    """No existence leak: the answer is the one for an unknown conversation id."""
    unknown = dataclasses.replace(world, cid=random_id())
    status, body = await caller.send(*endpoint.call(unknown, caller.user or ""))
    answer = (status, json.loads(json.dumps(body).replace(unknown.cid, world.cid)))
    return [] if answer == seen else [f"{endpoint}: {seen}, but {answer} for an unknown id"]


async def test_a_fork_holder_forks_into_their_own_conversation(start_node: NodeFactory) -> None:
    node = await start_node(**AUTH)
    owner, forker = Caller(node, OWNER), Caller(node, FORKER)
    world = await build(owner)
    before = await snapshot(Caller(node), world, FORKER)
    forks: list[str] = []
    for suffix in ("", f"/branches/{world.branch}", f"/messages/{world.first}"):
        body = {"title": "mine", "created_by": FORKER}
        forked = await forker.ok("POST", conv_path(world.cid, suffix + "/fork"), body)
        assert forked["created_by"] == FORKER
        assert forked["fork_from_conversation_id"] == world.cid
        fork = forked["conversation_id"]
        forks.insert(0, fork)
        # the fork's owner: they update and share it; the source's owner does not see it
        await forker.ok("PUT", conv_path(fork), {"title": "renamed"})
        await forker.ok("POST", conv_path(fork, "/share"), _share(world, FORKER))
        status, body = await owner.send("GET", conv_path(fork))
        assert (status, body["error"]["code"]) == (404, "not_found")
    listing = f"{API}/users/{FORKER}/conversations"
    assert await forker.ok("GET", listing) == [*forks, world.cid]
    after = await snapshot(Caller(node), world, FORKER)
    assert after.pop(listing) != before.pop(listing)
    assert after == before  # the source is as it was


async def test_a_service_acting_for_a_user_names_any_author(start_node: NodeFactory) -> None:
    """Services are trusted with `created_by` / `shared_by`: only a user's own token is not."""
    node = await start_node(**AUTH)
    owner = Caller(node, OWNER)
    body = {"title": "for someone", "created_by": "someone-else"}
    created = await owner.ok("POST", f"{API}/conversations", body)
    assert created["created_by"] == "someone-else"
    world = await build(owner)
    brancher = Caller(node, BRANCHER)
    said = await brancher.ok(
        "POST", conv_path(world.cid, "/messages"), message("ghost", world.first)
    )
    assert said["created_by"] == "ghost"
    branched = await brancher.ok("POST", conv_path(world.cid, "/branches"), _branch(world, "ghost"))
    assert branched["created_by"] == "ghost"
    shared = await owner.ok("POST", conv_path(world.cid, "/share"), _share(world, "ghost"))
    assert shared["shared_by"] == "ghost"


async def test_without_a_valid_key_nothing_is_answered(start_node: NodeFactory) -> None:
    node = await start_node(**AUTH)
    world = await build(Caller(node, OWNER))
    before = await snapshot(Caller(node), world, OWNER)
    create = ("POST", f"{API}/conversations", {"title": "t", "created_by": OWNER})
    for key, code in ((None, "unauthorized"), ("not-the-key", "invalid_api_key")):
        intruder = Caller(node, OWNER, key=key)
        for call in [create, *(endpoint.call(world, OWNER) for endpoint in MATRIX)]:
            status, body = await intruder.send(*call)
            assert_error(status, body, 401, code)
    assert await snapshot(Caller(node), world, OWNER) == before


async def test_a_users_listing_is_theirs_or_a_services(start_node: NodeFactory) -> None:
    node = await start_node(**AUTH)
    world = await build(Caller(node, OWNER))
    listing = f"{API}/users/{READER}/conversations"
    assert await Caller(node, READER).ok("GET", listing) == [world.cid]
    assert await Caller(node).ok("GET", listing) == [world.cid]
    status, body = await Caller(node, OWNER).send("GET", listing)
    assert_error(status, body, 403, "permission_denied")


async def test_losing_access_loses_every_listing(start_node: NodeFactory) -> None:
    """A revoked share, or a public conversation made private, answers 404 at once, also
    for listings the response cache holds."""
    node = await start_node(**AUTH)
    owner = Caller(node, OWNER)
    private, public = await build(owner), await build(owner, public=True)
    reads = [endpoint for endpoint in MATRIX if endpoint.method == "GET"]
    for world, user in ((private, READER), (public, PUBLIC_READER)):
        for endpoint in reads:
            await Caller(node, user).ok(*endpoint.call(world, user))
    await owner.ok("DELETE", conv_path(private.cid, f"/shares/{READER}"))
    await owner.ok("PUT", conv_path(public.cid), {"is_public": False})
    for world, user in ((private, READER), (public, PUBLIC_READER)):
        for endpoint in reads:
            status, body = await Caller(node, user).send(*endpoint.call(world, user))
            assert (status, body["error"]["code"]) == (404, "not_found"), (endpoint, user)


@pytest.mark.parametrize(("user", "column"), [(READER, 1), (STRANGER, 5)], ids=["read", "stranger"])
async def test_unknown_messages_and_branches_tell_nothing_more(
    start_node: NodeFactory, user: str, column: int
) -> None:
    """Message and branch ids the conversation does not hold: a stranger still gets the
    unknown conversation's 404 (never a 422 about a bad parent or a branch not found), and
    a holder who may not change it a 403 before any id is looked at."""
    node = await start_node(**AUTH)
    world = await build(Caller(node, OWNER))
    ghosts = dataclasses.replace(world, first=random_id(), second=random_id(), branch=random_id())
    caller, problems = Caller(node, user), []
    before = await snapshot(Caller(node), world, user)
    for endpoint, statuses in MATRIX.items():
        status, body = await caller.send(*endpoint.call(ghosts, user))
        want = statuses[column]
        if want == 200 and "{" in endpoint.suffix:  # a read of an id it does not hold
            want = 404
        if status != want or (want != 200 and body["error"]["code"] != ERROR_CODES[want]):
            problems.append(f"{endpoint}: {status} {body}, expected {want}")
        if user == STRANGER:
            problems += await _same_as_unknown(caller, endpoint, ghosts, (status, body))
    assert not problems, "\n".join(problems)
    assert await snapshot(Caller(node), world, user) == before


async def test_each_sidebar_lists_what_is_theirs_or_shared_with_them(
    start_node: NodeFactory,
) -> None:
    node = await start_node(**AUTH)
    owner = Caller(node, OWNER)
    shared, public = await build(owner), await build(owner, public=True)
    mine = await Caller(node, STRANGER).ok("POST", f"{API}/conversations", {"title": "own"})
    expected = {
        OWNER: [(public.cid, "owner"), (shared.cid, "owner")],
        **{user: [(shared.cid, permission)] for user, permission in SHARES.items()},
        PUBLIC_READER: [],  # public is readable, not theirs: not in their sidebar
        STRANGER: [(mine["conversation_id"], "owner")],
    }
    for user, want in expected.items():
        listed = (await Caller(node, user).ok("GET", f"{API}/conversations"))["conversations"]
        assert [(item["conversation_id"], item["permission"]) for item in listed] == want, user


async def test_a_users_own_token_has_that_users_permissions(start_node: NodeFactory) -> None:
    node = await start_node(**JWT_AUTH)
    world = await build(Caller(node, OWNER))
    problems: list[str] = []
    for user, column in ((READER, 1), (STRANGER, 5)):  # refusals only: the world stays
        caller = Caller.with_token(node, user)
        for endpoint, statuses in MATRIX.items():
            status, body = await caller.send(*endpoint.call(world, user))
            if status != statuses[column]:
                problems.append(f"{user} {endpoint}: {status} {body}, expected {statuses[column]}")
    assert not problems, "\n".join(problems)
    sidebar = await Caller.with_token(node, READER).ok("GET", f"{API}/conversations")
    assert [(i["conversation_id"], i["permission"]) for i in sidebar["conversations"]] == [
        (world.cid, "read")
    ]
    owner = Caller.with_token(node, OWNER)
    patched = await owner.ok("PATCH", conv_path(world.cid), {"title": "by token", "tags": ["t"]})
    assert (patched["title"], patched["tags"]) == ("by token", ["t"])
    status, body = await Caller.with_token(node, READER).send(
        "PATCH", conv_path(world.cid), {"title": "not mine"}
    )
    assert_error(status, body, 403, "permission_denied")
    assert (await owner.ok("GET", conv_path(world.cid)))["title"] == "by token"
