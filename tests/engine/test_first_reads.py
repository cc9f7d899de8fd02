"""A first page's kept store rows: served from memory, never once they may be stale."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest

import engine.actor
from engine.access import Principal
from engine.first_reads import FirstReads
from engine.moves import ActivityMoves
from engine.sidebar import GRACE_SECONDS, Filters, HotListing, Sidebar
from persistence.records import Conversation, Deleted, Share, ShareRevoked, Updated
from persistence.sqlite import SQLiteStore
from persistence.store import Changes, Key

ALICE = Principal("alice", "user")
START = datetime(2026, 1, 1, tzinfo=UTC)


def row(cid: str, seconds: int, owner: str = "alice", **fields: object) -> Conversation:
    at = START + timedelta(seconds=seconds)
    meta = Conversation(cid, f"{cid}-root", cid, None, at, owner, at, False, None, None, 1, 1)
    return msgspec.structs.replace(meta, **fields)


class Counting(SQLiteStore):
    """SQLite that counts the sidebar's owned-rows reads, and may hold them."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.owned_reads = 0
        self.read = asyncio.Event()  # an owned read found its rows
        self.hold: asyncio.Event | None = None  # set: they are returned

    async def owned(self, user_id: str, after: Key | None, limit: int) -> list[Conversation]:
        self.owned_reads += 1
        found = await super().owned(user_id, after, limit)
        self.read.set()
        if self.hold is not None:
            await self.hold.wait()
        return found


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def sidebar_over(
    tmp_path: Path, clock: Clock, max_age: float = 60
) -> AsyncIterator[tuple[Sidebar, Counting, HotListing]]:
    async with Counting(tmp_path / "canopy.db") as store:
        hot = HotListing(clock=clock)
        kept = FirstReads(max_age, clock=clock)
        yield Sidebar(store, hot, ActivityMoves(), clock=clock, first_reads=kept), store, hot


async def listed(sidebar: Sidebar) -> list[tuple[str, str]]:
    page = await sidebar.page(ALICE, Filters(), 30, None)
    return [(item.meta.conversation_id, item.meta.title) for item in page.items]


@pytest.fixture
def expiry_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[datetime]]:
    """What `engine.actor.gone` takes for now."""
    now = [datetime.now(UTC)]
    monkeypatch.setattr(engine.actor, "now", lambda: now[0])
    yield now


async def test_a_first_page_is_served_from_memory_long_after_it_was_read(tmp_path: Path) -> None:
    clock = Clock()
    async with sidebar_over(tmp_path, clock) as (sidebar, store, hot):
        await store.write("a", Changes(conversation=row("a", 1), version=1))
        assert await listed(sidebar) == [("a", "a")]
        clock.now = 30.0  # past the 5 s the rows used to be kept
        assert await listed(sidebar) == [("a", "a")]
        assert store.owned_reads == 1
        clock.now = 61.0  # past the age limit
        assert await listed(sidebar) == [("a", "a")]
        assert store.owned_reads == 2


async def test_an_age_limit_of_zero_reads_the_store_for_every_first_page(tmp_path: Path) -> None:
    async with sidebar_over(tmp_path, Clock(), max_age=0) as (sidebar, store, _):
        await store.write("a", Changes(conversation=row("a", 1), version=1))
        assert await listed(sidebar) == await listed(sidebar) == [("a", "a")]
        assert store.owned_reads == 2


async def test_kept_rows_never_outlive_a_change_the_hot_listing_let_go(
    tmp_path: Path, expiry_clock: list[datetime]
) -> None:
    clock = Clock()
    later = expiry_clock[0] + timedelta(hours=1)
    share = Share("alice", "read", START, "bob")
    async with sidebar_over(tmp_path, clock) as (sidebar, store, hot):
        rows = {
            "a": row("a", 1),
            "s": row("s", 2, owner="bob"),
            "t": row("t", 3, owner="bob"),
            "e": row("e", 4, expires_at=later),
        }
        for cid, meta in rows.items():
            shares: dict[str, Share | None] = {"alice": share} if meta.created_by == "bob" else {}
            await store.write(cid, Changes(conversation=meta, shares=shares, version=1))
        assert await listed(sidebar) == [("e", "e"), ("t", "t"), ("s", "s"), ("a", "a")]

        # Changed through this node: a deleted, s's share revoked, t renamed by bob.
        changes = {
            "a": (msgspec.structs.replace(rows["a"], deleted=True), Deleted(START), {}),
            "s": (rows["s"], ShareRevoked("alice"), {"alice": None}),
            "t": (msgspec.structs.replace(rows["t"], title="renamed"),
                  Updated(START, "renamed", None, None), {}),
        }  # fmt: skip
        for cid, (after, event, share_changes) in changes.items():
            sidebar.observe(rows[cid], after, event)
            await store.write(cid, Changes(conversation=after, shares=share_changes, version=2))
        expected = [("e", "e"), ("t", "renamed")]
        assert await listed(sidebar) == expected  # the hot listing corrects the kept rows
        for cid in changes:
            sidebar.flushed(cid)  # the store has them
        clock.now = GRACE_SECONDS + 1
        sidebar.flushed("e")  # the next flush lets them go from the hot listing
        reads = store.owned_reads
        assert await listed(sidebar) == expected
        assert store.owned_reads == reads + 1  # read again, not the kept rows

        expiry_clock[0] = later  # e expires: nothing is written, no read needed
        assert await listed(sidebar) == [("t", "renamed")]


async def test_a_kept_shared_row_goes_when_its_owner_changed_it(tmp_path: Path) -> None:
    clock = Clock()
    async with sidebar_over(tmp_path, clock) as (sidebar, store, hot):
        before = row("s", 1, owner="bob")
        share = Share("alice", "read", START, "bob")
        await store.write("s", Changes(conversation=before, shares={"alice": share}, version=1))
        assert await listed(sidebar) == [("s", "s")]
        renamed = msgspec.structs.replace(before, title="renamed")
        sidebar.observe(before, renamed, Updated(START, "renamed", None, None))  # by bob
        await store.write("s", Changes(conversation=renamed, version=2))
        sidebar.flushed("s")
        clock.now = GRACE_SECONDS + 1
        sidebar.flushed("another")  # lets it go: only alice's kept rows knew her share
        assert hot.meta("s") is None
        assert await listed(sidebar) == [("s", "renamed")]


async def test_rows_read_while_the_hot_listing_let_go_are_not_kept(tmp_path: Path) -> None:
    clock = Clock()
    async with sidebar_over(tmp_path, clock) as (sidebar, store, hot):
        before = row("a", 1)
        await store.write("a", Changes(conversation=before, version=1))
        renamed = msgspec.structs.replace(before, title="renamed")
        sidebar.observe(before, renamed, Updated(START, "renamed", None, None))
        store.hold = asyncio.Event()
        reading = asyncio.create_task(listed(sidebar))  # reads the old row, held
        await store.read.wait()
        await store.write("a", Changes(conversation=renamed, version=2))
        sidebar.flushed("a")
        clock.now = GRACE_SECONDS + 1
        sidebar.flushed("another")  # the next flush lets it go from the hot listing
        assert hot.meta("a") is None
        store.hold.set()
        await reading  # (its page may be stale: a read outliving the grace, see GRACE_SECONDS)
        store.hold = None
        assert await listed(sidebar) == [("a", "renamed")]
