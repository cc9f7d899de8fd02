"""What a Cassandra write sends: one request for an append's flush, and an owner's listing
row that moves without a read and never leaves a stale copy behind."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from persistence.scylla import ScyllaStore
from persistence.scylla_writes import Listed, Listings
from persistence.store import Changes
from tests.backends import SCYLLA, cassandra_store
from tests.persistence.conftest import Rows


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ScyllaStore]:
    async with cassandra_store(tmp_path) as opened:
        yield opened


def appended(rows: Rows, cid: str, version: int, **fields: Any) -> Changes:
    """The flush of one append: a message and the conversation row, its activity moved."""
    meta = rows.conversation(cid, version=version, updated_at=rows.at(version), **fields)
    return rows.changes(meta, (rows.message(f"{cid}-m{version}", f"{cid}-root", version),))


async def listed_at(store: ScyllaStore, owner: str) -> list[Any]:
    """Every row of the owner's listing, as stored (a stale copy included)."""
    found = await store._query(
        "SELECT last_activity, conversation_id FROM user_conversations WHERE user_id = ?",
        (owner,),
    )
    return [tuple(row) for row in found]


def counting(store: ScyllaStore) -> list[Any]:
    """Record every request the store sends from now on."""
    assert store._session is not None
    sent: list[Any] = []
    real = store._session.execute_async

    def send(statement: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(statement)
        return real(statement, *args, **kwargs)

    store._session.execute_async = send  # type: ignore[method-assign]
    return sent


async def test_an_appends_flush_is_one_request(store: ScyllaStore, rows: Rows) -> None:
    """The listing row's activity is remembered from the last write, not read again."""
    await store.write("c1", appended(rows, "c1", 1))
    sent = counting(store)
    await store.write("c1", appended(rows, "c1", 2))
    assert len(sent) == 1
    assert [cid for _, cid in await listed_at(store, "alice")] == ["c1"]
    listing = await store.owned("alice", None, 10)
    assert [(m.conversation_id, m.version) for m in listing] == [("c1", 2)]


async def test_a_conversation_written_elsewhere_meanwhile_is_listed_once(
    store: ScyllaStore, rows: Rows
) -> None:
    """The conversation moved to another node, which moved its listing row, and came back
    (an activation): the row this store remembered is stale and must not be trusted."""
    await store.write("c1", appended(rows, "c1", 1))
    async with ScyllaStore(SCYLLA) as elsewhere:
        assert await elsewhere.load("c1") is not None
        await elsewhere.write("c1", appended(rows, "c1", 2))
    assert await store.load("c1") is not None
    await store.write("c1", appended(rows, "c1", 3))
    assert [cid for _, cid in await listed_at(store, "alice")] == ["c1"]


async def test_a_failed_write_leaves_no_stale_listing_row(
    store: ScyllaStore, rows: Rows, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that failed after part of it landed (its listing row moved) is retried
    from where the row stands, not from where it stood before."""
    await store.write("c1", appended(rows, "c1", 1))
    real = store._batched

    async def lands_then_fails(statements: Any, **options: Any) -> None:
        await real(statements, **options)
        raise OSError("connection lost before the answer")

    monkeypatch.setattr(store, "_batched", lands_then_fails)
    with pytest.raises(OSError):
        await store.write("c1", appended(rows, "c1", 2))
    monkeypatch.undo()
    await store.write("c1", appended(rows, "c1", 3))
    assert [cid for _, cid in await listed_at(store, "alice")] == ["c1"]


async def test_a_deleted_conversation_leaves_its_owners_listing(
    store: ScyllaStore, rows: Rows
) -> None:
    await store.write("c1", appended(rows, "c1", 1))
    await store.write("c1", appended(rows, "c1", 2))
    gone = rows.conversation("c1", version=3, updated_at=rows.at(3), deleted=True)
    await store.write("c1", rows.changes(gone))
    assert await listed_at(store, "alice") == []
    assert await store.owned("alice", None, 10) == []


def test_the_remembered_listings_are_bounded(rows: Rows) -> None:
    """The least recently written goes first; a deleted conversation is not remembered."""
    listings = Listings(limit=2)
    for cid in ("c1", "c2", "c1", "c3"):
        listings.written(cid, rows.conversation(cid))
    assert len(listings) == 2
    assert listings.get("c2", "alice") is None  # c1 was written again after it
    assert listings.get("c1", "alice") == Listed("alice", rows.at(0), None)
    assert listings.get("c1", "bob") is None  # another owner's row is not this one
    listings.written("c3", rows.conversation("c3", deleted=True))
    assert listings.get("c3", "alice") is None
