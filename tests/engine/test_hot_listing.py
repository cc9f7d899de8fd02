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


def test_stored_rows_kept_for_the_grace_stay_under_their_byte_cap() -> None:
    """A flood of creations within one grace: the stored rows kept for it are capped
    (oldest stored first), while rows not stored yet are never dropped."""
    now = [0.0]
    one_row = 640 + len(row("x000", 0).title)  # the estimate HotListing uses
    hot = HotListing(clock=lambda: now[0], max_clean_bytes=10 * one_row)
    unstored = row("unstored", 0)
    hot.noted(unstored, Created(unstored, []))
    for k in range(100):
        made = row(f"x{k:03}", k)
        hot.noted(made, Created(made, []))
        hot.flushed(made.conversation_id)
        now[0] += 0.01  # all within the grace
    stats = hot.stats()
    assert stats["stored_rows"] == 10 and stats["stored_bytes"] <= 10 * one_row
    assert stats["forgotten_early"] == 90
    assert hot.meta("x000") is None and hot.meta("x099") is not None  # the oldest went
    assert hot.meta("unstored") is not None and stats["rows"] == 11
    again = row("x099", 200)  # changed again: not stored, out of the capped ones
    hot.noted(again, Created(again, []))
    assert hot.stats()["stored_rows"] == 9


async def test_a_conversation_that_moves_while_a_page_reads_keeps_its_place(
    tmp_path: Path,
) -> None:
    """The store-backed mode: an append to b is applied (its move noted, its store write
    behind) while a later page reads the rows of what moved before it. b was then
    counted as moved with no row to show, and left off the page (a flake of the suite
    under a slow disk)."""
    async with SQLiteStore(tmp_path / "canopy.db") as store:
        sidebar = Sidebar(store, None, ActivityMoves())
        rows = {cid: row(cid, k) for k, cid in enumerate("abcde", start=1)}
        for cid, meta in rows.items():
            await store.write(cid, Changes(conversation=meta, version=1))
        first = await sidebar.page(ALICE, Filters(), 2, None)
        assert [item.meta.conversation_id for item in first.items] == ["e", "d"]

        def moved(cid: str, seconds: int) -> Conversation:
            after = row(cid, seconds)
            sidebar.observe(rows[cid], after, Created(after, []))
            return after

        await store.write("e", Changes(conversation=moved("e", 10), version=2))
        read_moved = store.conversations

        async def b_moves_meanwhile(ids: list[str]) -> list[Conversation]:
            found = await read_moved(ids)
            moved("b", 11)  # applied; its store write has not landed
            return found

        store.conversations = b_moves_meanwhile  # type: ignore[method-assign]
        assert first.next_cursor is not None
        second = await sidebar.page(ALICE, Filters(), 5, first.next_cursor)  # the rest
        assert [item.meta.conversation_id for item in second.items] == ["c", "b", "a"]
