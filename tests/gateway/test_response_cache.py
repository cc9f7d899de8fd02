"""Cached encoded responses: served again while the conversation is unchanged, never stale."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway_helpers import chain, conv_path, create_branch, new_conversation, ok

from gateway.keys import RESPONSES
from gateway.paging import WHOLE
from gateway.response_cache import Encoded, ResponseCache

if TYPE_CHECKING:
    from conftest import Node


def test_lru_keeps_within_its_byte_budget() -> None:
    cache = ResponseCache(max_bytes=400, min_bytes=10)
    cache.put(("/a", WHOLE, 1), Encoded(b"a" * 100, {}))
    cache.put(("/b", WHOLE, 1), Encoded(b"b" * 100, {}))
    cache.put(("/tiny", WHOLE, 1), Encoded(b"t", {}))  # not worth keeping
    cache.put(("/huge", WHOLE, 1), Encoded(b"h" * 101, {}))  # over a quarter of the budget
    assert cache.get(("/a", WHOLE, 1)) == Encoded(b"a" * 100, {})  # now the most recent
    cache.put(("/c", WHOLE, 1), Encoded(b"c" * 100, {}))
    cache.put(("/d", WHOLE, 1), Encoded(b"d" * 100, {}))
    cache.put(("/e", WHOLE, 1), Encoded(b"e" * 100, {}))  # evicts /b, the least recent
    assert cache.get(("/b", WHOLE, 1)) is None and cache.get(("/tiny", WHOLE, 1)) is None
    assert cache.get(("/a", WHOLE, 1)) is not None and cache.get(("/huge", WHOLE, 1)) is None
    assert cache.nbytes == 400 and len(cache) == 4
    assert cache.get(("/a", WHOLE, 2)) is None  # another version is another entry


async def test_reads_are_fresh_after_every_kind_of_change(node: Node) -> None:
    cid, _ = await new_conversation(node, title="before")
    messages = await chain(node, cid, 30)  # lineages of ~30 ids: worth caching
    leaf = messages[-1]["message_id"]
    branch = await create_branch(node, cid, leaf, "main")
    lineage = conv_path(cid, f"/messages/{leaf}/lineage")
    on_branch = conv_path(cid, f"/branches/{branch['branch_id']}/messages")
    reads = (lineage, on_branch, conv_path(cid, "/tree"))
    first = [await ok(node, "GET", path) for path in reads]
    assert [await ok(node, "GET", path) for path in reads] == first

    await ok(node, "PUT", conv_path(cid), {"title": "after"})  # the root's content changes
    assert (await ok(node, "GET", lineage))[0]["content"]["title"] == "after"
    assert (await ok(node, "GET", on_branch))[0]["content"]["title"] == "after"
    tree = await ok(node, "GET", conv_path(cid, "/tree"))
    assert tree["messages"][0]["content"]["title"] == "after"

    body = {"role": "human", "content": {"type": "text", "text": "new"}, "created_by": "a"}
    await ok(node, "POST", conv_path(cid, "/messages"), {**body, "branch_id": branch["branch_id"]})
    assert len(await ok(node, "GET", on_branch)) == 32  # the branch moved to the new leaf
    assert (await ok(node, "GET", conv_path(cid, "/tree")))["total_messages"] == 32

    cache = node.app[RESPONSES]
    if node.settings.cache == "off":
        assert len(cache) == 0 and cache.hits == 0  # the comparison baseline never caches
    else:
        assert cache.hits >= 3 and len(cache) > 0


async def test_a_parameter_the_route_ignores_is_not_another_entry(node: Node) -> None:
    """Keyed by the query's text, `?x=1`, `?x=2`, ... were each a whole encode and a new
    entry, evicting other conversations' answers (found by review)."""
    cid, _ = await new_conversation(node)
    await chain(node, cid, 30)
    tree = conv_path(cid, "/tree")
    first = await ok(node, "GET", tree)
    cache = node.app[RESPONSES]
    entries, hits = len(cache), cache.hits
    for k in range(5):
        assert await ok(node, "GET", f"{tree}?x={k}") == first
    if node.settings.cache == "off":
        assert len(cache) == 0 and cache.hits == 0
        return
    assert len(cache) == entries and cache.hits == hits + 5
    paged = await ok(node, "GET", f"{tree}?limit=5")  # a page is another entry
    assert len(paged["messages"]) == 5 and len(cache) <= entries + 1
