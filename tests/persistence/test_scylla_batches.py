"""A large Cassandra write goes as bounded batches, bound by our own serializers, with the
event loop running between them; a failed batch fails the write, which is retried whole."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cassandra.query import BatchStatement, BatchType, BoundStatement

from persistence import scylla_writes as writes
from persistence.scylla import MAX_REMOVALS_WITH_ROW, ScyllaStore
from persistence.scylla_batches import Binder
from persistence.store import Changes, StoreError
from tests.backends import cassandra_store
from tests.persistence.conftest import Rows


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ScyllaStore]:
    async with cassandra_store(tmp_path) as opened:
        yield opened


def fork(rows: Rows, cid: str, messages: int = 1000, text: str = "x") -> Changes:
    """A fork's flush: a new conversation with `messages` messages below its root."""
    meta = rows.conversation(cid, message_count=messages + 1, expires_at=rows.at(9))
    root = rows.message(f"{cid}-root", None, 0)
    content = b'{"type":"text","text":"%s"}' % text.encode()
    below = tuple(
        rows.message(f"{cid}-m{i}", f"{cid}-root", i, content=content)
        for i in range(1, messages + 1)
    )
    return rows.changes(meta, (root, *below))


def sending(store: ScyllaStore, on_batch: Any = None) -> list[BatchStatement]:
    """Record the batches the store sends; `on_batch(n)` may refuse the n-th (raise)."""
    assert store._session is not None
    sent: list[BatchStatement] = []
    real = store._session.execute_async

    def send(statement: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(statement, BatchStatement):
            sent.append(statement)
            if on_batch is not None:
                on_batch(len(sent))
        return real(statement, *args, **kwargs)

    store._session.execute_async = send  # type: ignore[method-assign]
    return sent


async def test_a_forks_rows_go_as_bounded_batches_and_all_land(
    store: ScyllaStore, rows: Rows
) -> None:
    sent = sending(store)
    await store.write("f1", fork(rows, "f1"))
    assert len(sent) >= 10
    assert all(len(batch) <= store._config.batch_size for batch in sent)
    loaded = await store.load("f1")
    assert loaded is not None
    assert [m.seq for m in loaded.messages] == list(range(1001))
    assert loaded.messages[5] == fork(rows, "f1").messages["f1-m5"]


@contextlib.asynccontextmanager
async def binding_passes(store: ScyllaStore) -> AsyncIterator[list[int]]:
    """The loop passes (a ticker's count) at which each batch is bound, in order. Bind
    time, not send time: sends wait for the in-flight limit and for a busy connection,
    and several may go in one pass on a loaded Cassandra."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    seen: list[int] = []
    cut = store._batches.cut

    def counted_cut(bound: Any) -> Any:
        for batch in cut(bound):
            seen.append(ticks)
            yield batch

    store._batches.cut = counted_cut  # type: ignore[method-assign]
    running = asyncio.create_task(ticker())
    try:
        yield seen
    finally:
        running.cancel()


def one_pass_each(seen: list[int]) -> bool:
    return all(later > earlier for earlier, later in zip(seen, seen[1:], strict=False))


async def test_the_loop_runs_between_a_large_writes_batches(store: ScyllaStore, rows: Rows) -> None:
    """Each batch is bound in its own loop pass: another task runs between them,
    and two forks' write-behinds take turns rather than binding in the same pass."""
    async with binding_passes(store) as seen:
        await store.write("f1", fork(rows, "f1"))
        assert len(seen) >= 10
        assert one_pass_each(seen)
        seen.clear()
        await asyncio.gather(
            store.write("f2", fork(rows, "f2")), store.write("f3", fork(rows, "f3"))
        )
    assert len(seen) >= 20
    assert one_pass_each(seen)


async def test_a_writes_last_batch_holds_the_turn_over_the_next_pass(
    store: ScyllaStore, rows: Rows
) -> None:
    """Let go at once after its last binding, the turn went to a write that reached it in
    the same pass, and two batches were bound in one pass (a flake of the suite under
    load: another write's sends had landed in that pass)."""

    def one_batch(cid: str) -> list[tuple[str, Any]]:
        changes = rows.changes(rows.conversation(cid), (rows.message(f"{cid}-root", None, 0),))
        return writes.rows(cid, changes, 3)

    await store._batched(one_batch("w0"))  # its statements prepared: no await left to bind
    async with binding_passes(store) as seen:
        await asyncio.gather(store._batched(one_batch("w1")), store._batched(one_batch("w2")))
    assert len(seen) == 2 and seen[1] > seen[0]


async def test_a_failed_batch_fails_the_write_and_a_retry_lands_it_whole(
    store: ScyllaStore, rows: Rows
) -> None:
    def third_fails(n: int) -> None:
        if n == 3:
            raise OSError("connection reset")

    sending(store, on_batch=third_fails)
    with pytest.raises(StoreError):
        await store.write("f1", fork(rows, "f1"))
    await store.write("f1", fork(rows, "f1"))  # the flusher's retry: the same changes
    loaded = await store.load("f1")
    assert loaded is not None and len(loaded.messages) == 1001
    assert [m.conversation_id for m in await store.owned("alice", None, 10)] == ["f1"]


async def test_our_binding_serializes_every_write_statement_as_the_driver_does(
    store: ScyllaStore, rows: Rows
) -> None:
    changes = fork(rows, "f1", messages=3)
    changes.branches = {"b1": rows.branch("b1", "f1-m3"), "b2": None}
    changes.shares = {"bob": rows.share("bob"), "carol": None}
    meta = changes.conversation
    assert meta is not None
    statements = writes.rows("f1", changes, 7) + [writes.conversation("f1", meta, 7)]
    old = writes.Listed("alice", rows.at(1), rows.at(5))
    statements += writes.owner_listing("f1", meta, old, 7)
    statements += writes.shared_rows(changes.shares, "f1", 7) + writes.deletion("f1", 7)
    assert len({cql for cql, _ in statements}) >= 12
    for cql, params in statements:
        prepared = await store._statement(cql)
        assert Binder(prepared).values(params) == BoundStatement(prepared).bind(params).values


async def test_a_large_write_logs_no_batch_size_warning(
    store: ScyllaStore, rows: Rows, caplog: pytest.LogCaptureFixture
) -> None:
    """Cassandra warns of a batch over 5 KiB that spans partitions (the driver logs it):
    one table's rows go up to 32 KiB a batch, the conversation's other rows stay small."""
    with caplog.at_level(logging.WARNING, logger="cassandra"):
        # 32 KiB batches of 100 messages, the last 51 with the conversation's other rows
        await store.write("f1", fork(rows, "f1", messages=1050, text="x" * 200))
    assert [r.getMessage() for r in caplog.records if "Batch for" in r.getMessage()] == []


async def test_an_appends_flush_is_still_one_batch(store: ScyllaStore, rows: Rows) -> None:
    """Its few rows span several tables, well under the 5 KiB Cassandra warns at; the
    batch is logged, as every one holding a conversation row is (all of it or none)."""
    await store.write("c1", fork(rows, "c1", messages=1, text="x" * 200))
    sent = sending(store)
    meta = rows.conversation("c1", version=2, updated_at=rows.at(2))
    await store.write("c1", rows.changes(meta, (rows.message("c1-m2", "c1-root", 2),)))
    assert [batch.batch_type for batch in sent] == [BatchType.LOGGED]


async def test_a_deletion_is_one_logged_batch(store: ScyllaStore, rows: Rows) -> None:
    """Its partition deletes and its row land together or not at all: rows gone under a
    row not yet marked deleted would leave a conversation without its root."""
    await store.write("f1", fork(rows, "f1"))
    sent = sending(store)
    gone = rows.conversation("f1", version=3, updated_at=rows.at(3), deleted=True)
    await store.write("f1", Changes(conversation=gone, version=3))
    assert [batch.batch_type for batch in sent] == [BatchType.LOGGED]
    head = await store.head("f1")
    assert head is not None and head.conversation.deleted


async def test_a_large_writes_conversation_row_goes_once_its_other_rows_landed(
    store: ScyllaStore, rows: Rows
) -> None:
    """The row carries the version a reload replays the journal after: had it landed
    while a batch of messages failed, those messages' records would be skipped and
    trimmed. Here the fourth of a fork's batches fails; the row never goes."""

    failing = [True]

    def fourth_fails(n: int) -> None:
        if n == 4 and failing.pop():
            raise OSError("connection reset")

    sent = sending(store, on_batch=fourth_fails)
    with pytest.raises(StoreError):
        await store.write("f1", fork(rows, "f1"))
    assert await store.head("f1") is None  # no version: the journal replays it all
    assert all(batch.batch_type == BatchType.UNLOGGED for batch in sent)
    sent.clear()
    failing.append(False)
    await store.write("f1", fork(rows, "f1"))  # the retry, whole
    assert [batch.batch_type for batch in sent][-1] == BatchType.LOGGED
    assert {b.batch_type for b in sent[:-1]} == {BatchType.UNLOGGED}


async def test_a_branch_or_share_removal_lands_only_with_the_conversation_row(
    store: ScyllaStore, rows: Rows
) -> None:
    """A removal ahead of the row breaks replay where a row ahead does not: reloaded, the
    state lacks the branch that the records after the version still append to, and
    they were set aside (found by review). Here a long description pushes the write
    into two batches, and the one with the row fails."""
    base = rows.conversation("b1")
    await store.write("b1", rows.changes(base, (rows.message("b1-root", None, 0),),
                                         branches={"b": rows.branch("b", "b1-root")}))  # fmt: skip
    failing = [True]
    sent: list[BatchStatement] = []

    def last_fails(n: int) -> None:  # the logged one, which holds the row
        if failing[0] and sent[n - 1].batch_type == BatchType.LOGGED:
            raise OSError("connection reset")

    sent = sending(store, on_batch=last_fails)
    meta = rows.conversation("b1", version=3, updated_at=rows.at(3), description="d" * 6000)
    moved = rows.changes(meta, (rows.message("b1-m1", "b1-root", 1),), branches={"b": None})
    with pytest.raises(StoreError):
        await store.write("b1", moved)
    assert len(sent) >= 2  # cut into several batches
    snapshot = await store.load("b1")
    assert snapshot is not None and snapshot.conversation.version == 1
    assert [b.branch_id for b in snapshot.branches] == ["b"]  # not removed without the row
    failing[0] = False
    await store.write("b1", moved)  # the retry, whole
    snapshot = await store.load("b1")
    assert snapshot is not None and snapshot.conversation.version == 3
    assert snapshot.branches == [] and "b1-m1" in {m.message_id for m in snapshot.messages}


async def test_removals_beside_a_large_conversation_row_stay_under_the_batch_limit(
    store: ScyllaStore, rows: Rows
) -> None:
    """A 10,000-character description of four-byte characters is ~40 KB of body; with
    2,000 branch removals the logged batch passes 50 KiB many times over. Cassandra
    refuses such a batch over several partitions, and would refuse this write at every
    retry: it lands because the row and its removals are one partition's mutation."""
    names = [f"branch-{i:04d}-{'x' * 60}" for i in range(MAX_REMOVALS_WITH_ROW)]
    base = rows.conversation("b2")
    branches = {name: rows.branch(name, "b2-root") for name in names}
    await store.write("b2", rows.changes(base, (rows.message("b2-root", None, 0),),
                                         branches=branches))  # fmt: skip
    meta = rows.conversation("b2", version=2, updated_at=rows.at(2), description="𝄞" * 10_000)
    sent = sending(store)
    await store.write("b2", rows.changes(meta, (), branches=dict.fromkeys(names)))
    assert sent[-1].batch_type == BatchType.LOGGED
    assert len(sent[-1]) == MAX_REMOVALS_WITH_ROW + 1  # every removal with the row
    snapshot = await store.load("b2")
    assert snapshot is not None and snapshot.conversation.version == 2
    assert snapshot.branches == []


async def test_a_snapshot_is_never_torn_by_a_write_landing_while_it_is_read(
    store: ScyllaStore, rows: Rows, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The branches are read after a write removed one (the flusher process's, while an
    activation reads), the row before it: read at once, that state at version 1 lacked a
    branch version 1 has, and the records after it that append to it were set aside
    (found by review). Read again, it is all version 2's."""
    base = rows.conversation("t1")
    await store.write("t1", rows.changes(base, (rows.message("t1-root", None, 0),),
                                         branches={"b": rows.branch("b", "t1-root")}))  # fmt: skip
    removal = rows.changes(rows.conversation("t1", version=2, updated_at=rows.at(2)), (),
                           branches={"b": None})  # fmt: skip
    query, landed = store._query, []

    async def a_write_lands_first(cql: str, params: Any) -> list[Any]:
        if cql.startswith("SELECT body FROM branches") and not landed:
            landed.append(True)
            await store.write("t1", removal)
        return await query(cql, params)

    monkeypatch.setattr(store, "_query", a_write_lands_first)
    for read in (store.load, store.head):
        landed.clear()
        snapshot = await read("t1")
        assert landed and snapshot is not None
        held = [b.branch_id for b in snapshot.branches]
        assert (snapshot.conversation.version, held) in ((1, ["b"]), (2, []))
