"""engine/sidebar_merge.py: shards' pages merged in listing order, one cursor for all."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest

from engine.sidebar import Filters, InvalidCursor, Item, ShardPage, _cursor_decode
from engine.sidebar_merge import merge, shard_cursors
from persistence.records import Conversation
from persistence.store import listing_key

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def item(cid: str, minutes: int) -> tuple[tuple[int, str], Item]:
    at = T0 + timedelta(minutes=minutes)
    meta = Conversation(cid, "r", cid, None, at, "u", at, False, None, None, 1, 1)
    return listing_key(meta), Item(meta, "owner")


def test_pages_merge_newest_first_and_the_cursor_continues_each_shard_after_the_last_key() -> None:
    filters = Filters()
    first = ShardPage([item("a", 9), item("c", 5)], True, "inc0", 7)
    second = ShardPage([item("b", 8), item("d", 1)], False, "inc1", 3)
    page = merge([first, second], 3, filters)
    assert [i.meta.conversation_id for i in page.items] == ["a", "b", "c"]
    assert page.next_cursor is not None
    zero, one = shard_cursors(page.next_cursor, 2, filters)
    assert zero is not None and one is not None
    for raw, (incarnation, pinned) in ((zero, ("inc0", 7)), (one, ("inc1", 3))):
        cursor = _cursor_decode(base64.urlsafe_b64decode(raw + "=="))
        assert (cursor.incarnation, cursor.pinned) == (incarnation, pinned)
        assert (cursor.activity, cursor.conversation_id) == item("c", 5)[0]


def test_the_last_page_has_no_cursor_and_a_cursor_keeps_its_filters() -> None:
    page = merge([ShardPage([item("a", 2)], False, "i", 1), ShardPage([], False, "j", 1)], 5,
                 Filters())  # fmt: skip
    assert page.next_cursor is None and len(page.items) == 1
    assert shard_cursors(None, 2, Filters()) == [None, None]
    more = merge([ShardPage([item("a", 2)], True, "i", 1), ShardPage([], False, "j", 1)], 1,
                 Filters())  # fmt: skip
    assert more.next_cursor is not None
    with pytest.raises(InvalidCursor):
        shard_cursors(more.next_cursor, 2, Filters(favorite=True))
    with pytest.raises(InvalidCursor):
        shard_cursors(more.next_cursor, 3, Filters())
    with pytest.raises(InvalidCursor):
        shard_cursors("not-a-cursor", 2, Filters())
