"""`limit`, `cursor` and `compact` on the message-list routes: pages that walk every
message once while appends happen, in seed 000's shapes, and 422 for bad values."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway_helpers import append, chain, conv_path, create_branch, new_conversation, ok

if TYPE_CHECKING:
    from conftest import Node


async def _page(node: Node, path: str) -> tuple[Any, str | None, str | None]:
    """(body, X-Next-Cursor, Link) of a GET that must answer 200."""
    async with node.session.get(node.base + path) as response:
        assert response.status == 200, await response.text()
        return (
            await response.json(),
            response.headers.get("X-Next-Cursor"),
            response.headers.get("Link"),
        )


async def test_tree_pages_walk_every_message_once_while_appending(node: Node) -> None:
    cid, root = await new_conversation(node)
    trunk = await chain(node, cid, 12)
    for message in trunk[::3]:  # side branches: creation order is not depth order
        await chain(node, cid, 2, parent=message["message_id"])
    whole = await ok(node, "GET", conv_path(cid, "/tree"))
    assert "next_cursor" not in whole  # unpaged: seed 000's object

    seen: list[str] = []
    query, late = "?limit=7", []
    while True:
        tree, cursor, link = await _page(node, conv_path(cid, "/tree" + query))
        assert len(tree["messages"]) <= 7 and tree["next_cursor"] == cursor
        assert tree["total_messages"] >= whole["total_messages"]  # the conversation's count
        seen += [m["message_id"] for m in tree["messages"]]
        if cursor is None:
            assert link is None
            break
        assert link is not None and f"cursor={cursor}" in link and 'rel="next"' in link
        late.append((await append(node, cid, trunk[-1]["message_id"], "late"))["message_id"])
        query = f"?limit=7&cursor={cursor}"
    final = await ok(node, "GET", conv_path(cid, "/tree"))
    assert seen == [m["message_id"] for m in final["messages"]]  # each once, in order
    assert set(late) <= set(seen) and seen[0] == root


async def test_lineage_and_branch_pages_join_into_the_whole_path(node: Node) -> None:
    cid, _ = await new_conversation(node)
    messages = await chain(node, cid, 24)
    leaf = messages[-1]["message_id"]
    branch = await create_branch(node, cid, leaf)
    for path in (
        conv_path(cid, f"/messages/{leaf}/lineage"),
        conv_path(cid, f"/branches/{branch['branch_id']}/messages"),
    ):
        whole = await ok(node, "GET", path)
        pages, cursor = [], None
        while True:
            query = "?limit=10" + (f"&cursor={cursor}" if cursor else "")
            page, cursor, _ = await _page(node, path + query)
            pages.append(page)
            if cursor is None:
                break
        assert [len(p) for p in pages] == [10, 10, 5]
        assert [m for p in pages for m in p] == whole  # lineages included, as unpaged

        compact, cursor, _ = await _page(node, path + "?limit=10&compact=true")
        assert all("lineage" not in m for m in compact) and len(compact) == 10
        assert [m["depth"] for m in compact] == list(range(1, 11))
        _, _, link = await _page(node, path + f"?limit=10&compact=true&cursor={cursor}")
        assert link is not None and "compact=true" in link


async def test_children_pages_and_cursor_without_limit(node: Node) -> None:
    cid, root = await new_conversation(node)
    kids = [(await append(node, cid, root, f"kid {i}"))["message_id"] for i in range(5)]
    path = conv_path(cid, f"/messages/{root}/children")
    first, cursor, _ = await _page(node, path + "?limit=2")
    assert [m["message_id"] for m in first] == kids[:2] and cursor is not None
    rest, more, _ = await _page(node, path + f"?cursor={cursor}")  # the default page size
    assert [m["message_id"] for m in rest] == kids[2:] and more is None
    assert (await _page(node, path + "?limit=5"))[1] is None  # exactly the rest: no next


BAD = [
    "limit=0",
    "limit=1001",
    "limit=-1",
    "limit=ten",
    "limit=" + "9" * 5000,
    "limit=",
    "cursor=abc",
    "cursor=-5",
    "cursor=" + "1" * 40,
    "compact=maybe",
]


async def test_bad_paging_parameters_answer_422(node: Node) -> None:
    cid, root = await new_conversation(node)
    branch = await create_branch(node, cid, root)
    before = await ok(node, "GET", conv_path(cid, "/tree"))
    for query in BAD:
        for path in (
            f"/messages/{root}/children",
            f"/messages/{root}/lineage",
            "/tree",
            f"/branches/{branch['branch_id']}/messages",
        ):
            status, body = await node.request("GET", conv_path(cid, f"{path}?{query}"))
            assert status == 422 and body["error"]["code"] == "invalid_field", (query, path, body)
    assert await ok(node, "GET", conv_path(cid, "/tree")) == before
