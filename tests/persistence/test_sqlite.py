"""The SQLite store's layout: what a flush writes, and data from the older layout."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from persistence.sqlite import SQLiteStore

if TYPE_CHECKING:
    from conftest import Rows

# Messages keyed by (conversation_id, message_id), as stored before they were clustered by seq.
_OLD_MESSAGES = """
CREATE TABLE messages (
    conversation_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    parent_id TEXT,
    seq INTEGER NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (conversation_id, message_id)
) WITHOUT ROWID;
CREATE INDEX messages_by_parent ON messages (conversation_id, parent_id);
"""


def _uuid(n: int) -> str:
    """Ids that sort unlike their seq (as random UUIDs do): reversed hex digits."""
    return f"{n:032x}"[::-1]


async def _write_messages(store: SQLiteStore, rows: Rows, first: int, count: int) -> None:
    text = b'{"type":"text","text":"%s"}' % (b"x" * 200)  # about a chat line
    messages = tuple(
        rows.message(_uuid(seq), "root", seq, content=text) for seq in range(first, first + count)
    )
    conversation = rows.conversation("c1", version=first + count, message_count=first + count)
    await store.write("c1", rows.changes(conversation, messages))


def _wal_frames(path: Path) -> int:
    """Pages in the WAL since its last reset (what the commits since then wrote)."""
    with sqlite3.connect(path) as db:
        return int(db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1])


async def test_a_flush_of_appends_writes_a_few_pages_not_some_per_message(
    tmp_path: Path, rows: Rows
) -> None:
    path = tmp_path / "canopy.db"
    async with SQLiteStore(path) as store:
        await _write_messages(store, rows, 1, 3000)
        with sqlite3.connect(path) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        await _write_messages(store, rows, 3001, 180)  # one flush cycle at the bench's rate
        frames = _wal_frames(path)
    # 180 rows of ~300 bytes fill ~14 pages, the id index's new entries scatter over its
    # pages: 75 pages. Keyed by message id, rows and their parent index entries scattered
    # alike: 284 pages.
    assert frames < 150, frames


async def test_a_flush_of_many_messages_takes_a_few_statements_not_one_per_row(
    tmp_path: Path, rows: Rows
) -> None:
    """Each statement lets go of the GIL once and, with the event loop busy, waits up to
    a switch interval to get it back: 1,000 messages in 1,000 steps took seconds."""
    async with SQLiteStore(tmp_path / "canopy.db") as store:
        inserts: list[str] = []
        store._conn.set_trace_callback(  # noqa: SLF001 - what the store's connection runs
            lambda sql: inserts.append(sql) if "INTO messages" in sql else None
        )
        await _write_messages(store, rows, 1, 1000)
        loaded = await store.load("c1")
    assert loaded is not None and len(loaded.messages) == 1000
    assert sorted(m.seq for m in loaded.messages) == list(range(1, 1001))
    # 7 of 128 rows, then 64 + 32 + 8 for the last 104
    assert len(inserts) == 10, len(inserts)


async def test_messages_of_the_older_layout_are_moved_and_read_back(
    tmp_path: Path, rows: Rows
) -> None:
    path = tmp_path / "canopy.db"
    async with SQLiteStore(path) as store:
        await _write_messages(store, rows, 0, 5)
        before = await store.load("c1")
        children = await store.children("c1", "root")
        lineage = await store.lineage("c1", _uuid(3))
    with sqlite3.connect(path) as db:  # back to the older layout, rows and all
        db.executescript(
            "DROP INDEX IF EXISTS messages_by_id; DROP INDEX messages_by_parent;"
            " ALTER TABLE messages RENAME TO newer;"
            + _OLD_MESSAGES
            + " INSERT INTO messages (conversation_id, message_id, parent_id, seq, body)"
            " SELECT conversation_id, message_id, parent_id, seq, body FROM newer;"
            " DROP TABLE newer;"
        )
    async with SQLiteStore(path) as store:
        assert await store.load("c1") == before
        assert await store.children("c1", "root") == children
        assert await store.lineage("c1", _uuid(3)) == lineage
        await _write_messages(store, rows, 3, 3)  # rewrites two, adds one
        after = await store.load("c1")
        assert after is not None
        assert [m.seq for m in after.messages] == [0, 1, 2, 3, 4, 5]
    with sqlite3.connect(path) as db:
        key = [row[2] for row in db.execute("PRAGMA index_xinfo(sqlite_autoindex_messages_1)")]
    assert key[:3] == ["conversation_id", "seq", "message_id"]


async def test_writes_made_while_one_is_under_way_go_in_one_transaction(
    tmp_path: Path, rows: Rows
) -> None:
    async with SQLiteStore(tmp_path / "canopy.db") as store:
        began: list[str] = []
        store._conn.set_trace_callback(  # noqa: SLF001 - what the store's connection runs
            lambda sql: began.append(sql) if sql == "BEGIN" else None
        )
        writes = []
        for k in range(16):
            cid = f"c{k}"
            message = rows.message(f"m{k}", "root", 1)
            writes.append(store.write(cid, rows.changes(rows.conversation(cid), (message,))))
        await asyncio.gather(*writes)
        for k in range(16):
            loaded = await store.load(f"c{k}")
            assert loaded is not None and [m.message_id for m in loaded.messages] == [f"m{k}"]
    assert len(began) <= 2, began  # the first alone, the 15 queued behind it together
    assert store.writes_together == (1 if len(began) == 2 else 0)


async def test_a_write_that_fails_in_a_batch_fails_alone(
    tmp_path: Path, rows: Rows, monkeypatch: pytest.MonkeyPatch
) -> None:
    from persistence import sqlite

    real = sqlite._encode  # noqa: SLF001

    def encode(value: object) -> bytes:
        if getattr(value, "message_id", None) == "poison":
            raise ValueError("cannot encode")
        return real(value)

    monkeypatch.setattr(sqlite, "_encode", encode)
    async with SQLiteStore(tmp_path / "canopy.db") as store:
        writes = [
            store.write(cid, rows.changes(rows.conversation(cid), (rows.message(mid, "root", 1),)))
            for cid, mid in [("a", "fine-a"), ("b", "poison"), ("c", "fine-c"), ("d", "fine-d")]
        ]
        results = await asyncio.gather(*writes, return_exceptions=True)
        assert [type(r).__name__ for r in results] == [
            "NoneType",
            "ValueError",
            "NoneType",
            "NoneType",
        ]
        assert await store.load("b") is None  # nothing of it, not a half
        for cid in "acd":
            loaded = await store.load(cid)
            assert loaded is not None and len(loaded.messages) == 1


async def test_a_commit_is_on_disk_before_the_flusher_trims_the_journal(tmp_path: Path) -> None:
    """The flusher deletes journal segments as soon as a write returns: the commit must
    have synced the WAL by then (FULL). Under NORMAL the WAL is synced only at
    checkpoints, and a power loss after the trim lost what the journal had held
    (found by review)."""
    async with SQLiteStore(tmp_path / "canopy.db") as store:
        assert store._db is not None
        [(synchronous,)] = store._db.execute("PRAGMA synchronous").fetchall()
        assert synchronous == 2  # FULL
