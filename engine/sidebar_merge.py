"""One listing over several shards (the workers of `--workers N`): their pages merged.

Each shard answers a page after the same key, ranked as of its own pinned moment
(`Sidebar.shard_page`); the merge keeps the first `limit` of all of them in listing
order. Its cursor holds every shard's moment and the last key listed, so the next page
asks each shard for what follows that key as of the moment it pinned: a shard none of
whose items made a page continues from the same point as the others, and nothing is
lost or repeated while conversations move (as engine/sidebar.py promises one node).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence

import msgspec

from engine.sidebar import (
    Filters,
    InvalidCursor,
    Page,
    ShardPage,
    cursor_at,
    filter_fields,
)
from persistence.store import rank


class _Merged(msgspec.Struct, array_like=True):
    moments: list[tuple[str, int]]  # each shard's (incarnation, pinned), in shard order
    activity: int
    conversation_id: str
    filters: tuple[bool, bool | None, str | None, str | None]


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(_Merged).decode


def shard_cursors(cursor: str | None, shards: int, filters: Filters) -> list[str | None]:
    """What to ask each shard for: the merged cursor split into the shards' own."""
    if cursor is None:
        return [None] * shards
    try:
        merged = _decode(base64.urlsafe_b64decode(cursor.encode() + b"=="))
    except (binascii.Error, msgspec.DecodeError, ValueError):
        raise InvalidCursor("cursor is not one this API handed out") from None
    if merged.filters != filter_fields(filters):
        raise InvalidCursor("a cursor continues the listing it came from: same filters")
    if len(merged.moments) != shards:
        raise InvalidCursor("cursor is not one this API handed out")
    last = (merged.activity, merged.conversation_id)
    return [cursor_at(inc, pinned, last, filters) for inc, pinned in merged.moments]


def merge(pages: Sequence[ShardPage], limit: int, filters: Filters) -> Page:
    """The first `limit` items of the shards' pages (given in shard order)."""
    entries = sorted((entry for page in pages for entry in page.entries), key=_rank)
    taken = entries[:limit]
    next_cursor = None
    if taken and (len(entries) > limit or any(page.more for page in pages)):
        last = taken[-1][0]
        moments = [(page.incarnation, page.pinned) for page in pages]
        raw = _encode(_Merged(moments, last[0], last[1], filter_fields(filters)))
        next_cursor = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    return Page([item for _, item in taken], next_cursor)


def _rank(entry: tuple[tuple[int, str], object]) -> tuple[int, str]:
    return rank(entry[0])
