"""Message lists in seed 000's shapes: a root..leaf path, a message's children, the tree.

Each builder takes a snapshot of the nodes a page holds and a `render` that makes the
i-th one's wire Struct only when the encoder gets to it, so a list's lineages (O(n ×
depth) ids) are never all in memory at once. `answer` sends a listing through the
response cache (keyed by path, query and conversation version) and `gateway.responses`.
"""

from __future__ import annotations

import bisect
from collections.abc import Awaitable, Callable, Sequence

import msgspec
from aiohttp import web

from gateway.keys import CONVERSATIONS, PRINCIPAL, RESPONSES, SENDER
from gateway.paging import Page, next_headers
from gateway.response_cache import Encoded
from gateway.responses import Listing
from gateway.schemas import TreeOut, compact_out, message_out
from persistence.records import Message

_MEMO_IDS = 1_000_000  # lineage ids a tree listing keeps for its nodes' children (8 MB)
_encoder = msgspec.json.Encoder()


def path_listing(conversation_id: str, path: list[Message], page: Page) -> Listing:
    """A root..node path, each message with its own lineage (a prefix of the path's).
    Its cursor is the depth of a page's last message."""
    start = max(page.after, 0)
    stop = len(path) if page.limit is None else start + page.limit
    nodes = path[start:stop]
    more = stop < len(path) and bool(nodes)
    cursor = str(nodes[-1].depth) if more else None
    if page.compact:
        return Listing(nodes, lambda i: compact_out(conversation_id, nodes[i]), page, cursor)
    ids = [node.message_id for node in path[:stop]]

    def render(i: int) -> msgspec.Struct:
        return message_out(conversation_id, nodes[i], ids[: start + i + 1])

    return Listing(nodes, render, page, cursor)


def children_listing(
    conversation_id: str, parent_lineage: list[str], children: Sequence[Message], page: Page
) -> Listing:
    """A message's children in creation order; the cursor is a page's last child's seq."""
    start = bisect.bisect_right(children, page.after, key=_seq) if page.after >= 0 else 0
    stop = len(children) if page.limit is None else start + page.limit
    nodes = list(children[start:stop])  # a copy: the live list grows with appends
    cursor = str(nodes[-1].seq) if stop < len(children) and nodes else None
    if page.compact:
        return Listing(nodes, lambda i: compact_out(conversation_id, nodes[i]), page, cursor)

    def render(i: int) -> msgspec.Struct:
        return message_out(conversation_id, nodes[i], [*parent_lineage, nodes[i].message_id])

    return Listing(nodes, render, page, cursor)


def tree_listing(
    conversation_id: str,
    nodes: Sequence[Message],
    total: int,
    more: bool,
    lineage: Callable[[str], list[Message]],
    page: Page,
) -> Listing:
    """The conversation's messages in creation order (`nodes`: this page of them), each
    with its lineage, built from its parent's while that is remembered, else walked
    with `lineage`. The cursor is a page's last message's seq, also in `next_cursor`."""
    cursor = str(nodes[-1].seq) if more and nodes else None
    empty = TreeOut(conversation_id, [], total, cursor if page.paged else msgspec.UNSET)
    head, _, tail = _encoder.encode(empty).partition(b'"messages":[]')
    wrap = (head + b'"messages":', tail)
    if page.compact:
        return Listing(nodes, lambda i: compact_out(conversation_id, nodes[i]), page, cursor, wrap)
    memo: dict[str, list[str]] = {}
    held = 0

    def render_full(i: int) -> msgspec.Struct:
        nonlocal held
        node = nodes[i]
        if node.parent_id is None:
            ids = [node.message_id]
        else:
            above = memo.get(node.parent_id)
            if above is None:
                above = [n.message_id for n in lineage(node.parent_id)]
            ids = [*above, node.message_id]
        if held > _MEMO_IDS:
            memo.clear()
            held = 0
        memo[node.message_id] = ids
        held += len(ids)
        return message_out(conversation_id, node, ids)

    return Listing(nodes, render_full, page, cursor, wrap)


async def answer(request: web.Request, listing: Listing) -> web.StreamResponse:
    headers = next_headers(request, listing.page, listing.next_cursor)
    response, _ = await request.app[SENDER].listing(request, listing, headers)
    return response


async def answer_cached(
    request: web.Request,
    conversation_id: str,
    page: Page,
    build: Callable[[], Awaitable[Listing]],
) -> web.StreamResponse:
    """A listing that depends only on the conversation's state, encoded once per version
    of it (see gateway.response_cache); store-backed mode never caches. Keyed by the
    path and the page the query asks for, not the query's text: parameters the route
    ignores (`?x=1`, `?x=2`, ...) made each a new entry, a whole encode that evicted
    other conversations' answers (found by review)."""
    app = request.app
    revision = await app[CONVERSATIONS].revision(request[PRINCIPAL], conversation_id)
    if revision is None:
        return await answer(request, await build())
    cache, key = app[RESPONSES], (request.path, page, revision)
    found = cache.get(key)
    if found is not None:
        return await app[SENDER].body(request, found.body, found.headers)
    listing = await build()
    headers = next_headers(request, listing.page, listing.next_cursor)
    response, chunks = await app[SENDER].listing(request, listing, headers)
    if cache.worth(sum(map(len, chunks))):
        cache.put(key, Encoded(b"".join(chunks), headers))
    return response


def _seq(node: Message) -> int:
    return node.seq
