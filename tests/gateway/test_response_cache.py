"""Cached encoded responses: served again while the conversation is unchanged, never stale."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway_helpers import chain, conv_path, create_branch, new_conversation, ok

from gateway.keys import RESPONSES
from gateway.response_cache import Encoded, ResponseCache

if TYPE_CHECKING:
    from conftest import Node


def test_lru_keeps_within_its_byte_budget() -> None:
    cache = ResponseCache(max_bytes=400, min_bytes=10)
    cache.put(("/a", 1), Encoded(b"a" * 100, {}))
    cache.put(("/b", 1), Encoded(b"b" * 100, {}))
    cache.put(("/tiny", 1), Encoded(b"t", {}))  # not worth keeping
    cache.put(("/huge", 1), Encoded(b"h" * 101, {}))  # over a quarter of the budget
    assert cache.get(("/a", 1)) == Encoded(b"a" * 100, {})  # now the most recent
    cache.put(("/c", 1), Encoded(b"c" * 100, {}))
    cache.put(("/d", 1), Encoded(b"d" * 100, {}))
    cache.put(("/e", 1), Encoded(b"e" * 100, {}))  # evicts /b, the least recent
    assert cache.get(("/b", 1)) is None and cache.get(("/tiny", 1)) is None
    assert cache.get(("/a", 1)) is not None and cache.get(("/huge", 1)) is None
    assert cache.nbytes == 400 and len(cache) == 4
    assert cache.get(("/a", 2)) is None  # another version is another entry


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
