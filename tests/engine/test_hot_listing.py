"""The sidebar's hot listing and its reuse of a first page's store reads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from engine.access import Principal
from engine.moves import ActivityMoves
from engine.sidebar import GRACE_SECONDS, Filters, HotListing, Sidebar
from persistence.records import Conversation, Created
from persistence.sqlite import SQLiteStore
from persistence.store import Changes

ALICE = Principal("alice", "user")
START = datetime(2026, 1, 1, tzinfo=UTC)


def row(cid: str, seconds: int) -> Conversation:
    at = START + timedelta(seconds=seconds)
    return Conversation(cid, f"{cid}-root", cid, None, at, "alice", at, False, None, None, 1, 1)


async def listed(sidebar: Sidebar) -> list[str]:
    page = await sidebar.page(ALICE, Filters(), 30, None)
    return [item.meta.conversation_id for item in page.items]


async def test_what_the_hot_listing_forgets_is_in_the_next_store_read(tmp_path: Path) -> None:
    now = [0.0]
    hot = HotListing(clock=lambda: now[0])
    async with SQLiteStore(tmp_path / "canopy.db") as store:
        sidebar = Sidebar(store, hot, ActivityMoves(), clock=lambda: now[0])
        await store.write("a", Changes(conversation=row("a", 1), version=1))
        assert await listed(sidebar) == ["a"]  # its store reads are kept a little
        b = row("b", 2)
        sidebar.observe(None, b, Created(b, []))
        assert await listed(sidebar) == ["b", "a"]
        now[0] = 1.0
        await store.write("b", Changes(conversation=b, version=1))
        sidebar.flushed("b")
        now[0] = 4.0
        assert await listed(sidebar) == ["b", "a"]  # the kept reads, b from the hot side
        now[0] = 1.0 + GRACE_SECONDS + 1
        later = row("c", 3)
        sidebar.observe(None, later, Created(later, []))
        sidebar.flushed("c")  # lets b go from the hot listing
        assert hot.meta("b") is None
        assert await listed(sidebar) == ["c", "b", "a"]  # read again: b from the store
