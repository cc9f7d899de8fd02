"""The admin API: its own bearer, the node's figures, hot actors listed, flushed and
passivated. On the embedded and the Cassandra + Redis backends (--cache off has no
hot actors)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
from typing import TYPE_CHECKING, Any

import pytest
import redis.asyncio as redis
from gateway_helpers import API, ERROR_KEYS, chain, create_branch, new_conversation, ok, tree

from gateway.admin_token import ADMIN
from gateway.auth import api_key_digest
from gateway.keys import FLUSHER, STORE
from persistence import redis_keys

if TYPE_CHECKING:
    from conftest import Node, NodeFactory

HOT = pytest.mark.parametrize("backend", ["embedded", "cassandra+redis"], indirect=True)
TOKEN = "admin-token-of-the-tests-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
NO_FLUSH = 3600.0  # seconds between write-behind cycles: nothing is flushed unasked


async def admin(node: Node, method: str, path: str, status: int = 200) -> Any:
    answered, body = await node.request(method, path, headers=BEARER)
    assert answered == status, (method, path, answered, body)
    return body


async def start(start_node: NodeFactory, **overrides: Any) -> Node:
    return await start_node(**{"admin_token": TOKEN, "flush_interval": NO_FLUSH, **overrides})


REFUSED = (
    {}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"X-API-Key": "k"},
    # a peer's credential: a node with no cluster has no cluster token to match
    {"X-Canopy-Cluster-Token": ""}, {"X-Canopy-Cluster-Token": TOKEN},
)  # fmt: skip
ANY_ID = "6d1f3c1e-8a4b-4c55-9d2e-0f6a7b8c9d0e"


@HOT
async def test_the_admin_api_refuses_without_the_admin_token(start_node: NodeFactory) -> None:
    """No token, a wrong one, one without its scheme, a user's credential: 401."""
    node = await start(start_node, auth="api-key", api_keys=f"svc:{api_key_digest('k')}")
    status, created = await node.request(
        "POST", f"{API}/conversations", json={"title": "t", "created_by": "alice"},
        headers={"X-API-Key": "k"},
    )  # fmt: skip
    assert status == 200, created
    cid = created["conversation_id"]
    for headers in REFUSED:
        for method, path in (("GET", "/admin/nodes"), ("GET", "/admin/actors"),
                             ("GET", f"/admin/actors/{cid}"),
                             ("POST", f"/admin/actors/{cid}/flush"),
                             ("POST", f"/admin/actors/{cid}/passivate")):  # fmt: skip
            status, body = await node.request(method, path, headers=headers)
            assert status == 401, (headers, path, body)
            assert body["error"]["code"] == "invalid_admin_token"
            assert set(body["error"]) == ERROR_KEYS
    assert (await admin(node, "GET", f"/admin/actors/{cid}"))["unflushed_records"] == 1


EMBEDDED = pytest.mark.parametrize("backend", ["embedded"], indirect=True)
AUTHS = {
    "api-key": {"auth": "api-key", "api_keys": f"svc:{api_key_digest('k')}"},
    "jwt": {"auth": "jwt", "jwt_secret": "s" * 32},  # the admin token is no JWT: refused
    "jwt+rate-limit": {"auth": "jwt", "jwt_secret": "s" * 32, "rate_limit": "1000/s"},
}


@EMBEDDED
@pytest.mark.parametrize("auth", sorted(AUTHS))
async def test_the_admin_token_passes_by_the_user_authentication(
    start_node: NodeFactory, auth: str
) -> None:
    """A user authenticator would refuse the admin bearer: /admin is not its to check."""
    node = await start(start_node, **AUTHS[auth])
    body = await admin(node, "GET", "/admin/nodes")
    assert [n["node_id"] for n in body["nodes"]] == [node.settings.node()]
    await admin(node, "GET", "/admin/actors")
    status, _ = await node.request("GET", f"{API}/users/alice/conversations", headers=BEARER)
    assert status == 401  # and the admin token is no user credential


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
async def test_a_node_without_an_admin_token_makes_one_and_logs_it(
    start_node: NodeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="gateway.admin_token"):
        node = await start_node()
    token = node.app[ADMIN].token
    assert len(token) >= 32
    assert [r for r in caplog.records if token in r.getMessage()]
    status, _ = await node.request(
        "GET", "/admin/nodes", headers={"Authorization": f"Bearer {token}"}
    )
    assert status == 200


@HOT
async def test_the_node_figures_follow_what_was_written(start_node: NodeFactory) -> None:
    node = await start(start_node)
    before = (await admin(node, "GET", "/admin/nodes"))["nodes"][0]
    assert before["actors"] == before["hot_messages"] == before["unflushed_records"] == 0
    cid, root = await new_conversation(node)
    await chain(node, cid, 4, root)
    [figures] = (await admin(node, "GET", "/admin/nodes"))["nodes"]
    assert figures["actors"] == 1
    assert figures["hot_messages"] == (await tree(node, cid))["total_messages"] == 5
    assert figures["unflushed_records"] == 5  # the creation and four appends
    assert figures["unflushed_bytes"] > 0 and figures["memory_bytes"] > 0
    assert figures["rss_bytes"] > figures["memory_bytes"]
    assert figures["address"] == f"http://127.0.0.1:{node.settings.port}"
    assert figures["heartbeat_age_seconds"] == 0
    assert figures["stats"]["requests"]["requests"] > before["stats"]["requests"]["requests"]


@HOT
async def test_actors_are_sorted_and_paged(start_node: NodeFactory) -> None:
    node = await start(start_node)
    sizes = {}
    for n in (3, 1, 5):
        cid, root = await new_conversation(node)
        await chain(node, cid, n, root)
        sizes[cid] = n
    small = min(sizes, key=sizes.__getitem__)
    await tree(node, small)  # the most recently accessed

    by_memory = await admin(node, "GET", "/admin/actors?sort=memory&limit=2")
    assert by_memory["total"] == 3 and by_memory["next_cursor"] is not None
    rest = await admin(
        node, "GET", f"/admin/actors?sort=memory&limit=2&cursor={by_memory['next_cursor']}"
    )
    assert rest["next_cursor"] is None
    listed = [a["conversation_id"] for a in by_memory["actors"] + rest["actors"]]
    assert listed == sorted(sizes, key=sizes.__getitem__, reverse=True)
    memory = [a["memory_bytes"] for a in by_memory["actors"] + rest["actors"]]
    assert memory == sorted(memory, reverse=True)

    unflushed = (await admin(node, "GET", "/admin/actors?sort=unflushed"))["actors"]
    assert [a["unflushed_records"] for a in unflushed] == [6, 4, 2]
    latest = (await admin(node, "GET", "/admin/actors?sort=last_access&limit=1"))["actors"]
    assert [a["conversation_id"] for a in latest] == [small]


@HOT
async def test_bad_paging_is_refused(start_node: NodeFactory) -> None:
    node = await start(start_node)
    for query in ("sort=size", "limit=0", "limit=1001", "limit=x", "cursor=-1", "cursor=x",
                  "scope=all", "scope=node&limit=0"):  # fmt: skip
        body = await admin(node, "GET", f"/admin/actors?{query}", status=422)
        assert set(body["error"]) == ERROR_KEYS, query
    # a peer's call (scope=node) may take more than a page: every row up to its page end
    listed = await admin(node, "GET", "/admin/actors?scope=node&limit=5000")
    assert listed == {"actors": [], "total": 0, "next_cursor": None}


@HOT
async def test_an_actor_detail_then_flush_then_passivate(start_node: NodeFactory) -> None:
    node = await start(start_node)
    cid, root = await new_conversation(node)
    messages = await chain(node, cid, 3, root)
    await create_branch(node, cid, messages[-1]["message_id"])
    detail = await admin(node, "GET", f"/admin/actors/{cid}")
    assert detail["conversation_id"] == cid and detail["owner_node"] == node.settings.node()
    assert (detail["messages"], detail["branches"]) == (4, 1)
    assert detail["unflushed_records"] == 5 and detail["unflushed_bytes"] > 0  # 1 + 3 + branch
    assert detail["last_flush"] is None and detail["pending_mutations"] == 0
    assert detail["idle_seconds"] >= 0 and detail["memory_bytes"] > 0
    if node.settings.journal == "redis":  # fenced: the epoch of this activation
        assert detail["epoch"] >= 1
    else:
        assert detail["epoch"] == 0

    flushed = await admin(node, "POST", f"/admin/actors/{cid}/flush")
    assert flushed["unflushed_records"] == flushed["unflushed_bytes"] == 0
    assert flushed["last_flush"] is not None
    assert (await admin(node, "GET", "/admin/nodes"))["nodes"][0]["unflushed_records"] == 0

    assert await admin(node, "POST", f"/admin/actors/{cid}/passivate") == {
        "conversation_id": cid,
        "passivated": True,
    }
    listed = (await admin(node, "GET", "/admin/actors"))["actors"]
    assert cid not in [a["conversation_id"] for a in listed]
    await admin(node, "GET", f"/admin/actors/{cid}", status=404)
    assert (await tree(node, cid))["total_messages"] == 4  # read back from the store
    assert await ok(node, "GET", f"{API}/conversations/{cid}/branches")


@HOT
async def test_an_actor_that_is_not_hot_is_a_json_404(start_node: NodeFactory) -> None:
    node = await start(start_node)
    for method, suffix in (("GET", ""), ("POST", "/flush"), ("POST", "/passivate")):
        body = await admin(node, method, f"/admin/actors/{ANY_ID}{suffix}", status=404)
        assert body["error"]["code"] == "not_found"
    body = await admin(node, "GET", "/admin/actors/not-a-uuid", status=422)
    assert set(body["error"]) == ERROR_KEYS


@pytest.mark.parametrize("backend", ["embedded-cache-off"], indirect=True)
async def test_a_node_without_hot_actors_answers_with_none(start_node: NodeFactory) -> None:
    """--cache off keeps nothing hot: the node is listed, its actors are not."""
    node = await start(start_node)
    cid, root = await new_conversation(node)
    await chain(node, cid, 2, root)
    [figures] = (await admin(node, "GET", "/admin/nodes"))["nodes"]
    assert figures["actors"] == figures["hot_messages"] == 0
    assert "registry" not in figures["stats"] and figures["stats"]["journal"] == {"kind": "none"}
    assert await admin(node, "GET", "/admin/actors") == {
        "actors": [],
        "total": 0,
        "next_cursor": None,
    }
    await admin(node, "GET", f"/admin/actors/{cid}", status=404)


@pytest.mark.parametrize("backend", ["cassandra+redis"], indirect=True)
async def test_with_a_flusher_process_unflushed_records_follow_its_progress(
    start_node: NodeFactory,
) -> None:
    """The flusher process stores; the node learns of it and the figures follow."""
    node = await start(start_node, flusher_process="on", flush_interval=0.05)
    pid = node.app[FLUSHER].stats()["flusher_process_pid"]
    assert isinstance(pid, int) and pid
    os.kill(pid, signal.SIGSTOP)  # nothing reaches the store meanwhile
    try:
        cid, root = await new_conversation(node)
        await chain(node, cid, 3, root)
        detail = await admin(node, "GET", f"/admin/actors/{cid}")
        assert detail["unflushed_records"] == 4 and detail["last_flush"] is None
    finally:
        os.kill(pid, signal.SIGCONT)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60.0
    while (detail := await admin(node, "GET", f"/admin/actors/{cid}"))["unflushed_records"]:
        assert loop.time() < deadline, detail  # polling another process, bounded
        await asyncio.sleep(0.05)
    assert detail["unflushed_bytes"] == 0 and detail["last_flush"] is not None
    assert (await admin(node, "GET", "/admin/nodes"))["nodes"][0]["unflushed_records"] == 0


@pytest.mark.parametrize("backend", ["cassandra+redis"], indirect=True)
async def test_with_a_flusher_process_the_flush_button_answers_once_stored(
    start_node: NodeFactory,
) -> None:
    """The flush waits for the flusher process to tell it stored the actor (it used to
    answer at once, unflushed records and all); a flusher that does not is a JSON 503."""
    node = await start(start_node, flusher_process="on", flush_interval=0.05)
    flusher = node.app[FLUSHER]
    pid = flusher.stats()["flusher_process_pid"]
    assert isinstance(pid, int) and pid
    cid, root = await new_conversation(node)
    os.kill(pid, signal.SIGSTOP)
    try:
        await chain(node, cid, 3, root)
        flusher._remote = dataclasses.replace(flusher._remote, flush_now_timeout=0.2)
        refused = await admin(node, "POST", f"/admin/actors/{cid}/flush", status=503)
        assert refused["error"]["code"] == "unavailable"
        assert "has not stored" in refused["error"]["message"]
        flusher._remote = dataclasses.replace(flusher._remote, flush_now_timeout=60.0)
        asked = redis.Redis.from_url(node.settings.redis_url)
        now = redis_keys.flush_now(node.settings.node())
        try:  # the flush asks for it again while nothing can store, and waits
            await asked.delete(now)  # what the refused flush asked for
            flushing = asyncio.create_task(admin(node, "POST", f"/admin/actors/{cid}/flush"))
            deadline = asyncio.get_running_loop().time() + 60.0
            while not await asked.sismember(now, cid):
                assert asyncio.get_running_loop().time() < deadline and not flushing.done()
                await asyncio.sleep(0.01)
        finally:
            await asked.aclose()
    finally:
        os.kill(pid, signal.SIGCONT)
    flushed = await flushing
    assert flushed["unflushed_records"] == flushed["unflushed_bytes"] == 0
    assert flushed["last_flush"] is not None
    stored = await node.app[STORE].load(cid)
    assert stored is not None and stored.conversation.message_count == 4
