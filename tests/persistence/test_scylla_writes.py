"""What a Cassandra write sends: one request for an append's flush, and an owner's listing
row that moves without a read and never leaves a stale copy behind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cassandra.query import BatchType, BoundStatement

from persistence.scylla import ScyllaStore
from persistence.scylla_writes import Listed, Listings
from persistence.store import Changes, StoreError
from tests.backends import cassandra_store, scylla
from tests.persistence.conftest import Rows
from tests.waiting import until


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
    async with ScyllaStore(scylla()) as elsewhere:
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


async def test_a_share_holders_row_that_fails_holds_the_version_back(
    store: ScyllaStore, rows: Rows
) -> None:
    """A share holder's listing row is in its own partition, sent beside the batches; had
    the conversation row landed while it failed, a reload past that version would never
    write it (bob's "shared with me" would miss the conversation for good)."""
    meta = rows.conversation("s1", version=1)
    await store.write("s1", rows.changes(meta, (rows.message("s1-root", None, 0),)))
    assert store._session is not None
    real = store._session.execute_async
    sent: list[Any] = []

    def send(statement: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(statement, BoundStatement) and (
            "shared_conversations" in statement.prepared_statement.query_string
        ):
            raise OSError("connection reset")
        sent.append(statement)
        return real(statement, *args, **kwargs)

    store._session.execute_async = send  # type: ignore[method-assign]
    later = rows.conversation("s1", version=2, updated_at=rows.at(2))
    with pytest.raises(StoreError):
        await store.write("s1", rows.changes(later, shares={"bob": rows.share("bob")}))
    current = asyncio.current_task()
    # nothing of the write goes on behind the failure (before, its batches did)
    await until(lambda: all(t.done() for t in asyncio.all_tasks() if t is not current), 100_000)
    store._session.execute_async = real  # type: ignore[method-assign]
    assert not any(getattr(s, "batch_type", None) == BatchType.LOGGED for s in sent)
    head = await store.head("s1")
    assert head is not None and head.conversation.version == 1
    await store.write("s1", rows.changes(later, shares={"bob": rows.share("bob")}))  # retried
    assert [meta.conversation_id for meta, _ in await store.shared("bob")] == ["s1"]


async def test_a_load_reads_the_messages_after_the_version(
    store: ScyllaStore, rows: Rows, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write sends its conversation row once its messages landed: messages read after
    the row are all there up to its version. Read at once, a write landing in between
    gave the new version over messages read before theirs landed."""
    meta = rows.conversation("l1", version=1)
    await store.write("l1", rows.changes(meta, (rows.message("l1-root", None, 0),)))
    real = store._query
    events: list[str] = []

    async def traced(cql: str, params: Any) -> list[Any]:
        table = cql.split(" FROM ")[1].split()[0]
        events.append(f"{table} asked")
        try:
            return await real(cql, params)
        finally:
            events.append(f"{table} answered")

    monkeypatch.setattr(store, "_query", traced)
    loaded = await store.load("l1")
    assert loaded is not None and [m.message_id for m in loaded.messages] == ["l1-root"]
    assert events.index("conversations answered") < events.index("messages asked")
