"""The sidebar: GET /api/v1/conversations, paged while messages arrive, filtered."""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING

from gateway_helpers import API, Json, append, create_conversation, expect_error, ok, share

if TYPE_CHECKING:
    from conftest import Node


async def page(node: Node, query: str = "", user: str = "alice") -> Json:
    status, body = await node.request(
        "GET", f"{API}/conversations{query}", headers={"X-Canopy-User": user}
    )
    assert status == 200, body
    return body


async def everything(node: Node, query: str = "", user: str = "alice") -> list[Json]:
    """Every page of a listing, followed to its end."""
    items: list[Json] = []
    body = await page(node, query, user)
    while True:
        items += body["conversations"]
        if body["next_cursor"] is None:
            return items
        joiner = "&" if query else "?"
        body = await page(node, f"{query}{joiner}cursor={body['next_cursor']}", user)


async def test_paging_while_messages_arrive_sees_each_conversation_once(node: Node) -> None:
    made = [await create_conversation(node, title=f"c{i}") for i in range(300)]
    roots = {}
    for conversation in made:
        tree = await ok(node, "GET", f"{API}/conversations/{conversation['conversation_id']}/tree")
        roots[conversation["conversation_id"]] = tree["messages"][0]["message_id"]
    ids = list(roots)
    stop = asyncio.Event()
    progress = asyncio.Condition()
    appended = 0
    rng = random.Random(11)

    async def appender() -> None:
        nonlocal appended
        while not stop.is_set():
            cid = rng.choice(ids)
            await append(node, cid, roots[cid], f"more {appended}")
            async with progress:
                appended += 1
                progress.notify_all()

    task = asyncio.create_task(appender())
    seen: list[str] = []
    try:
        body = await page(node, "?limit=30")
        while True:
            seen += [item["conversation_id"] for item in body["conversations"]]
            assert len(body["conversations"]) <= 30
            if body["next_cursor"] is None:
                break
            target = appended + 3  # some messages arrive between any two pages
            async with progress:
                await progress.wait_for(lambda: appended >= target)  # noqa: B023
            body = await page(node, f"?limit=30&cursor={body['next_cursor']}")
    finally:
        stop.set()
        await task
    assert appended >= 27
    assert len(seen) == len(set(seen)) == 300
    assert set(seen) == set(ids)


async def test_items_carry_the_session_and_newest_activity_comes_first(node: Node) -> None:
    first = (await create_conversation(node, title="first"))["conversation_id"]
    second = (await create_conversation(node, title="second"))["conversation_id"]
    tree = await ok(node, "GET", f"{API}/conversations/{first}/tree")
    await append(node, first, tree["messages"][0]["message_id"], "x" * 300)
    [top, other] = (await page(node))["conversations"]
    assert (top["conversation_id"], other["conversation_id"]) == (first, second)
    assert top["last_message"] == "x" * 200 and top["message_count"] == 2
    assert other["last_message"] is None and top["permission"] == "owner"
    assert (await page(node))["next_cursor"] is None


async def test_filters_and_title_search(node: Node) -> None:
    ids = {}
    for name, patch in (
        ("Plain", {}),
        ("Favorite", {"is_favorite": True}),
        ("Archived", {"archived": True}),
        ("Tagged plan", {"tags": ["plan"]}),
    ):
        cid = (await create_conversation(node, title=name))["conversation_id"]
        if patch:
            await ok(node, "PATCH", f"{API}/conversations/{cid}", patch)
        ids[name] = cid

    async def listed(query: str) -> set[str]:
        return {item["title"] for item in await everything(node, query)}

    assert await listed("") == {"Plain", "Favorite", "Tagged plan"}
    assert await listed("?archived=true") == {"Archived"}
    assert await listed("?favorite=true") == {"Favorite"}
    assert await listed("?tag=plan") == {"Tagged plan"}
    assert await listed("?q=PLA") == {"Plain", "Tagged plan"}
    assert await listed("?q=nothing") == set()
    await expect_error(node, "GET", f"{API}/conversations?favorite=maybe", 422, "invalid_field")
    await expect_error(node, "GET", f"{API}/conversations?limit=101", 422, "invalid_field",
                       headers={"X-Canopy-User": "alice"})  # fmt: skip


async def test_filters_page_through_many_that_do_not_match(node: Node) -> None:
    for i in range(40):
        cid = (await create_conversation(node, title=f"c{i}"))["conversation_id"]
        if i % 10 == 0:
            await ok(node, "PATCH", f"{API}/conversations/{cid}", {"is_favorite": True})
    favorites = await everything(node, "?favorite=true&limit=2")
    assert sorted(item["title"] for item in favorites) == ["c0", "c10", "c20", "c30"]


async def test_shared_conversations_come_with_their_permission(node: Node) -> None:
    read = (await create_conversation(node, title="read"))["conversation_id"]
    branch = (await create_conversation(node, title="branch"))["conversation_id"]
    await create_conversation(node, title="public, not shared", is_public=True)
    await share(node, read, "bob", "read")
    await share(node, branch, "bob", "branch")
    mine = (await create_conversation(node, title="bob's", created_by="bob"))["conversation_id"]
    items = await everything(node, user="bob")
    assert {(i["conversation_id"], i["permission"]) for i in items} == {
        (read, "read"), (branch, "branch"), (mine, "owner"),
    }  # fmt: skip
    await ok(node, "DELETE", f"{API}/conversations/{read}/shares/bob")
    assert {i["conversation_id"] for i in await everything(node, user="bob")} == {branch, mine}


async def test_a_listing_needs_a_user(node: Node) -> None:
    await expect_error(node, "GET", f"{API}/conversations", 422, "invalid_field")


async def test_bad_cursors_answer_400(node: Node) -> None:
    for _ in range(3):
        await create_conversation(node)
    body = await page(node, "?limit=1")
    await expect_error(node, "GET", f"{API}/conversations?cursor=nonsense", 400, "invalid_cursor",
                       headers={"X-Canopy-User": "alice"})  # fmt: skip
    cursor = body["next_cursor"]
    await expect_error(node, "GET", f"{API}/conversations?archived=true&cursor={cursor}", 400,
                       "invalid_cursor", headers={"X-Canopy-User": "alice"})  # fmt: skip
