"""The write-behind flusher: coalescing, retries, merge-back of failed batches, exclusivity."""

from __future__ import annotations

import asyncio
import contextlib
import errno
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from msgspec.structs import replace

from persistence.flusher import Flusher, FlusherConfig
from persistence.journal_file import SEGMENT_MAGIC, FileJournal, frame
from persistence.journal_redis import RedisJournal
from persistence.records import Conversation, Message, Snapshot
from persistence.sqlite import SQLiteStore
from persistence.store import Changes, Key, StoreError
from tests.backends import redis_journal
from tests.waiting import until

if TYPE_CHECKING:
    from conftest import Rows


class ScriptedStore:
    """Wraps a real store: records attempts, fails or holds writes on demand, and notes
    any two writes of one conversation that overlap."""

    def __init__(self, inner: SQLiteStore) -> None:
        self.inner = inner
        self.attempts: list[str] = []
        self.written: list[tuple[str, int]] = []  # (conversation, version) of successes
        self.fail_next = 0
        self.failure: Callable[[], Exception] = lambda: StoreError("scripted failure")
        self.gate = asyncio.Event()
        self.gate.set()
        self.success = asyncio.Event()
        self.holds: dict[str, asyncio.Event] = {}  # conversation -> what releases its writes
        self._active: Counter[str] = Counter()
        self.overlaps: list[str] = []

    async def load(self, conversation_id: str) -> Snapshot | None:
        return await self.inner.load(conversation_id)

    async def owned(self, user_id: str, after: Key | None, limit: int) -> list[Conversation]:
        return await self.inner.owned(user_id, after, limit)

    async def shared(self, user_id: str) -> list[tuple[Conversation, str]]:
        return await self.inner.shared(user_id)

    def hold(self, conversation_id: str) -> asyncio.Event:
        """Hold the conversation's writes until the returned event is set."""
        held = self.holds[conversation_id] = asyncio.Event()
        return held

    async def stored(self, conversation_id: str, version: int) -> None:
        """Wait until the conversation's changes up to `version` are written."""
        while (conversation_id, version) not in self.written:
            self.success.clear()
            await self.success.wait()

    async def write(self, conversation_id: str, changes: Changes) -> None:
        self.attempts.append(conversation_id)
        self._active[conversation_id] += 1
        if self._active[conversation_id] > 1:
            self.overlaps.append(conversation_id)
        try:
            await self.gate.wait()
            await self.holds.get(conversation_id, self.gate).wait()
            if self.fail_next:
                self.fail_next -= 1
                raise self.failure()
            await self.inner.write(conversation_id, changes)
            self.written.append((conversation_id, changes.version))
            self.success.set()
        finally:
            self._active[conversation_id] -= 1


class FlakyJournal:
    """Wraps the flusher's view of a real journal: `mark()` fails on demand, as a file
    journal out of descriptors does, and every trim is announced."""

    def __init__(self, inner: FileJournal) -> None:
        self.inner = inner
        self.fail_marks = 0
        self.marks = 0
        self.trimmed = asyncio.Event()

    async def mark(self) -> object:
        self.marks += 1
        if self.fail_marks:
            self.fail_marks -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        return await self.inner.mark()

    async def trim(self, mark: object, flushed: Mapping[str, int]) -> None:
        await self.inner.trim(mark, flushed)
        self.trimmed.set()


@dataclass
class Env:
    directory: Path
    sqlite: SQLiteStore
    store: ScriptedStore
    journal: FileJournal
    flaky: FlakyJournal
    flusher: Flusher
    rows: Rows

    async def mutate(
        self, cid: str, seq: int, *, title: str = "t", messages: tuple[Message, ...] = ()
    ) -> None:
        """What an actor does: journal a record, then record its changes as dirty."""
        with self.flusher.mutation():
            await self.journal.append(cid, seq, self.record(cid, seq))
            conversation = self.rows.conversation(cid, version=seq, title=title)
            changes = self.rows.changes(conversation, messages)
            self.flusher.record(cid, lambda dirty: dirty.absorb(changes))

    @staticmethod
    def record(cid: str, seq: int) -> bytes:
        return f"{cid}:{seq}".encode()

    async def load(self, cid: str) -> Snapshot:
        snapshot = await self.sqlite.load(cid)
        assert snapshot is not None
        return snapshot

    async def trimmed_to_nothing(self) -> None:
        """Wait until the journal on disk holds nothing more to replay."""
        while True:
            self.flaky.trimmed.clear()
            if not await self.replay_from_disk():
                return
            await self.flaky.trimmed.wait()

    async def replay_from_disk(self) -> list[bytes]:
        """What a node restarting now would recover from the journal directory."""
        async with FileJournal(self.directory / "journal") as journal:
            return [entry.payload for entry in await journal.replay()]


OpenEnv = Callable[..., Awaitable[Env]]


@pytest.fixture
async def open_env(tmp_path: Path, rows: Rows) -> AsyncIterator[OpenEnv]:
    """A flusher over a real journal and a scripted wrapper of a real SQLite store."""
    async with contextlib.AsyncExitStack() as stack:
        stores: list[ScriptedStore] = []

        async def open_(**config: Any) -> Env:
            sqlite = await stack.enter_async_context(SQLiteStore(tmp_path / "canopy.db"))
            journal = await stack.enter_async_context(FileJournal(tmp_path / "journal"))
            store = ScriptedStore(sqlite)
            flaky = FlakyJournal(journal)
            stores.append(store)
            settings = {"interval": 3600.0, "backoff_initial": 0.001, "backoff_max": 0.01, **config}
            flusher = await stack.enter_async_context(
                Flusher(store, flaky, FlusherConfig(**settings))  # type: ignore[arg-type]
            )
            stack.callback(release, store, flaky)  # runs before the flusher's final flush
            return Env(tmp_path, sqlite, store, journal, flaky, flusher, rows)

        yield open_


def release(store: ScriptedStore, journal: FlakyJournal) -> None:
    store.fail_next = 0
    journal.fail_marks = 0
    store.gate.set()
    for held in store.holds.values():
        held.set()


@pytest.fixture
async def env(open_env: OpenEnv) -> Env:
    return await open_env()


def root(rows: Rows, cid: str = "c1") -> Message:
    return rows.message(f"{cid}-root", None, 0)


# -- coalescing -----------------------------------------------------------------------------


async def test_many_updates_to_one_conversation_become_one_write(env: Env, rows: Rows) -> None:
    first = root(rows)
    for seq in range(1, 51):
        chunk = rows.message("m", first.message_id, 1, content=b"%d" % seq, status="in_progress")
        await env.mutate("c1", seq, title=f"title {seq}", messages=(first, chunk))
    final = replace(chunk, status="complete")
    await env.mutate("c1", 51, title="final", messages=(final,))
    assert await env.flusher.flush_all()
    assert env.store.attempts == ["c1"]
    assert env.store.written == [("c1", 51)]
    loaded = await env.load("c1")
    assert loaded.conversation == rows.conversation("c1", version=51, title="final")
    assert loaded.messages == [first, final]
    assert env.flusher.unflushed_bytes == 0


async def test_a_cycle_writes_each_dirty_conversation_once(env: Env, rows: Rows) -> None:
    for seq in range(1, 4):
        for cid in ("c1", "c2", "c3"):
            await env.mutate(cid, seq, messages=(root(rows, cid),))
    dirty = env.flusher.stats()
    assert (dirty["dirty_conversations"], dirty["unflushed_records"]) == (3, 9)
    assert env.flusher.unflushed("c1")[1] == 3 and env.flusher.last_flush("c1") is None
    assert await env.flusher.flush_all()
    assert sorted(env.store.written) == [("c1", 3), ("c2", 3), ("c3", 3)]
    assert env.flusher.batches_written == 3
    stats = env.flusher.stats()
    flushes, batches = stats.pop("flush_seconds"), stats.pop("batch_records")
    assert stats == {
        "dirty_conversations": 0, "writing_conversations": 0, "unflushed_bytes": 0,
        "unflushed_records": 0, "lag_ms": 0,
        "failing_conversations": 0, "batches_written": 3, "messages_written": 3,
        "fenced_writes": 0, "forgotten": 0,
    }  # fmt: skip
    assert flushes["count"] == 3  # type: ignore[index]
    assert (batches["count"], batches["sum"]) == (3, 9)  # type: ignore[index]  # 3 records each
    assert env.flusher.unflushed("c1") == (0, 0) and env.flusher.last_flush("c1") is not None
    assert await env.flusher.flush_all()
    assert len(env.store.attempts) == 3  # nothing dirty: no more writes


async def test_flush_of_a_clean_conversation_writes_nothing(env: Env) -> None:
    await env.flusher.flush("c1")
    assert env.store.attempts == []


# -- a cluster member's fence ----------------------------------------------------------------


async def test_a_fenced_conversation_is_not_written_until_the_fence_lifts(
    env: Env, rows: Rows
) -> None:
    """A node that may have lost a conversation (its lease not renewed in time) stores
    nothing of it: it could put older state over the new owner's."""
    owned = {"c1": False, "c2": True}
    env.flusher.fence(owned.__getitem__)
    await env.mutate("c1", 1, messages=(root(rows, "c1"),))
    await env.mutate("c2", 1, messages=(root(rows, "c2"),))
    assert not await env.flusher.flush_all()
    assert env.store.written == [("c2", 1)]
    assert env.flusher.stats()["fenced_writes"] >= 1
    with pytest.raises(StoreError):
        await env.flusher.flush("c1")  # a passivation's flush is refused too
    owned["c1"] = True  # the renewal went through: still ours
    assert await env.flusher.flush_all()
    assert sorted(env.store.written) == [("c1", 1), ("c2", 1)]


async def test_a_forgotten_conversation_is_never_written(env: Env, rows: Rows) -> None:
    """Another node took it: its records are in the journal the new owner replayed."""
    clean: list[str] = []
    env.flusher.watch_clean(clean.append)
    await env.mutate("c1", 1, messages=(root(rows, "c1"),))
    await env.mutate("c2", 1, messages=(root(rows, "c2"),))
    env.flusher.forget("c1")
    assert clean == ["c1"]  # the hot listing lets go of it
    assert await env.flusher.flush_all()
    assert env.store.written == [("c2", 1)]
    assert env.flusher.unflushed_bytes == 0
    assert env.flusher.stats()["forgotten"] == 1


# -- retries ---------------------------------------------------------------------------------


async def test_retries_after_store_failures_then_trims(env: Env, rows: Rows) -> None:
    await env.mutate("c1", 1, messages=(root(rows),))
    await env.mutate("c1", 2, title="second")
    env.store.fail_next = 3
    assert await env.flusher.flush_all(retries=5)
    assert env.store.attempts == ["c1"] * 4
    assert env.store.written == [("c1", 2)]
    assert (await env.load("c1")).conversation.title == "second"
    assert env.flusher.unflushed_bytes == 0
    assert await env.replay_from_disk() == []


async def test_giving_up_keeps_the_journal_and_the_dirty_data(env: Env, rows: Rows) -> None:
    await env.mutate("c1", 1, messages=(root(rows),))
    env.store.fail_next = 10
    assert not await env.flusher.flush_all(retries=2)
    assert env.store.attempts == ["c1"] * 3
    assert env.flusher.unflushed_bytes > 0
    assert await env.replay_from_disk() == [env.record("c1", 1)]
    assert await env.sqlite.load("c1") is None
    env.store.fail_next = 0
    assert await env.flusher.flush_all()
    assert (await env.load("c1")).messages == [root(rows)]
    assert await env.replay_from_disk() == []


async def test_background_cycle_retries_until_the_store_recovers(
    open_env: OpenEnv, rows: Rows
) -> None:
    env = await open_env(interval=0.001)
    env.store.fail_next = 3
    await env.mutate("c1", 1, messages=(root(rows),))
    await env.store.success.wait()
    assert env.store.attempts[:4] == ["c1"] * 4
    assert env.store.written == [("c1", 1)]
    assert (await env.load("c1")).messages == [root(rows)]


async def test_background_cycle_outlives_failing_marks_and_writes(
    open_env: OpenEnv, rows: Rows
) -> None:
    """EMFILE from the journal's mark() and OSError from the store once killed the loop."""
    env = await open_env(interval=0.001)
    env.flaky.fail_marks = 3
    env.store.fail_next = 2
    env.store.failure = lambda: OSError(errno.EMFILE, "Too many open files")
    for cid in ("c1", "c2"):
        await env.mutate(cid, 1, messages=(root(rows, cid),))
    await env.flaky.trimmed.wait()
    assert env.flaky.marks >= 4
    assert sorted(env.store.written) == [("c1", 1), ("c2", 1)]
    assert env.flusher.unflushed_bytes == 0
    assert await env.replay_from_disk() == []
    await env.mutate("c1", 2, title="after the failures")  # the loop is still there
    env.flaky.trimmed.clear()
    await env.flaky.trimmed.wait()
    assert (await env.load("c1")).conversation.title == "after the failures"


# -- a slow conversation holds back only itself ---------------------------------------------


async def test_a_stuck_conversation_never_holds_back_the_others(
    open_env: OpenEnv, rows: Rows
) -> None:
    env = await open_env(interval=0.001)
    stuck = env.store.hold("stuck")
    await env.mutate("stuck", 1, messages=(root(rows, "stuck"),))
    for seq in range(1, 4):  # each write of "other" waits for its own cycle
        await env.mutate("other", seq, title=f"v{seq}", messages=(root(rows, "other"),))
        await env.store.stored("other", seq)
    assert "stuck" in env.store.attempts and not stuck.is_set()
    assert (await env.load("other")).conversation.title == "v3"
    assert await env.sqlite.load("stuck") is None
    assert env.record("stuck", 1) in await env.replay_from_disk()  # its segment is kept
    stuck.set()
    await env.store.stored("stuck", 1)
    await env.trimmed_to_nothing()
    assert env.flusher.unflushed_bytes == 0


async def test_close_with_a_store_that_never_answers_keeps_the_journal(
    open_env: OpenEnv, rows: Rows
) -> None:
    env = await open_env(interval=0.001, close_timeout=0.2)
    env.store.hold("c1")  # never released before the close
    await env.mutate("c1", 1, messages=(root(rows),))
    await env.mutate("c2", 1, messages=(root(rows, "c2"),))
    await env.store.stored("c2", 1)
    async with asyncio.timeout(10):  # a hang detector, far above the 0.2 s budget
        await env.flusher.__aexit__(None, None, None)
    assert not env.flusher._flushing
    assert await env.sqlite.load("c1") is None
    assert env.record("c1", 1) in await env.replay_from_disk()  # replayed at the next start


# -- failed batches never overwrite newer data -----------------------------------------------


async def test_failed_batch_merged_back_under_newer_changes(env: Env, rows: Rows) -> None:
    first = root(rows)
    older = rows.message("m", first.message_id, 1, content=b"A", status="in_progress")
    only_in_a = rows.message("a", first.message_id, 2)
    await env.mutate("c1", 1, title="A", messages=(first, older, only_in_a))
    env.store.gate.clear()
    env.store.fail_next = 1
    batch_a = asyncio.ensure_future(env.flusher.flush("c1"))
    await until(lambda: env.store.attempts == ["c1"])
    newer = replace(older, content=b"B", status="complete")
    await env.mutate("c1", 2, title="B", messages=(newer,))
    env.store.gate.set()
    with pytest.raises(StoreError):
        await batch_a
    assert await env.flusher.flush_all()
    loaded = await env.load("c1")
    assert loaded.conversation == rows.conversation("c1", version=2, title="B")
    assert loaded.messages == [first, newer, only_in_a]
    assert env.store.written == [("c1", 2)]


async def test_unflushed_bytes_follow_mutations_failures_and_merge_back(
    env: Env, rows: Rows
) -> None:
    first = root(rows)
    await env.mutate(
        "c1", 1, messages=(first, rows.message("a", first.message_id, 1, content=b"A" * 40))
    )
    await env.mutate("c2", 1, messages=(root(rows, "c2"),))
    expected = 40 + len(first.content) + len(root(rows, "c2").content)
    assert env.flusher.unflushed_bytes == expected
    env.store.gate.clear()
    env.store.fail_next = 1
    failing = asyncio.ensure_future(env.flusher.flush("c1"))
    await until(lambda: env.store.attempts == ["c1"])
    await env.mutate("c1", 2, messages=(rows.message("b", first.message_id, 2, content=b"B" * 7),))
    assert env.flusher.unflushed_bytes == expected + 7  # the batch being written still counts
    env.store.gate.set()
    with pytest.raises(StoreError):
        await failing
    assert env.flusher.unflushed_bytes == expected + 7  # merged back, counted once
    await env.flusher.flush("c2")
    assert env.flusher.unflushed_bytes == 47 + len(first.content)
    assert await env.flusher.flush_all()
    assert env.flusher.unflushed_bytes == 0


# -- one writer per conversation -----------------------------------------------------------------


async def test_flush_and_cycle_never_write_one_conversation_at_once(env: Env, rows: Rows) -> None:
    await env.mutate("c1", 1, messages=(root(rows),))
    env.store.gate.clear()
    flushing = asyncio.ensure_future(env.flusher.flush("c1"))
    await until(lambda: len(env.store.attempts) == 1)
    await env.mutate("c1", 2, title="second")
    cycle = asyncio.ensure_future(env.flusher.flush_all())
    await until(lambda: env.flusher._exclusive.users("c1") == 2)  # the cycle queued behind
    assert env.store.attempts == ["c1"]
    env.store.gate.set()
    await flushing
    assert await cycle
    assert env.store.overlaps == []
    assert env.store.written == [("c1", 1), ("c1", 2)]
    assert (await env.load("c1")).conversation.title == "second"


async def test_many_concurrent_flushes_and_cycles_keep_writes_serial(env: Env, rows: Rows) -> None:
    env.store.gate.clear()
    pending = []
    for seq in range(1, 11):
        await env.mutate("c1", seq, title=f"v{seq}", messages=(root(rows),))
        pending.append(asyncio.ensure_future(env.flusher.flush("c1")))
        pending.append(asyncio.ensure_future(env.flusher.flush_all()))
    await until(lambda: len(env.store.attempts) == 1)
    env.store.gate.set()
    await asyncio.gather(*pending)
    assert env.store.overlaps == []
    versions = [version for _, version in env.store.written]
    assert versions == sorted(versions) and versions[-1] == 10
    assert (await env.load("c1")).conversation.title == "v10"


# -- trimming never outruns the store ------------------------------------------------------------


async def test_cycle_during_a_failing_flush_does_not_trim_its_records(env: Env, rows: Rows) -> None:
    """A passivation's flush is in flight when a cycle runs; the flush then fails."""
    await env.mutate("c1", 1, title="acknowledged", messages=(root(rows),))
    env.store.gate.clear()
    env.store.fail_next = 1
    passivation = asyncio.ensure_future(env.flusher.flush("c1"))
    await until(lambda: len(env.store.attempts) == 1)
    segment = env.journal.segments()[-1]
    cycle = asyncio.ensure_future(env.flusher.flush_all())
    await until(lambda: env.journal.segments()[-1] != segment)  # the cycle has marked
    env.store.gate.set()
    with pytest.raises(StoreError):
        await passivation
    await cycle
    # A crash now must not lose the acknowledged record: the store or the journal has it.
    stored = await env.sqlite.load("c1")
    assert stored is not None or env.record("c1", 1) in await env.replay_from_disk()


class HeldTrim:
    """The flusher's view of a real journal whose first trim up to `held` is held until
    released (never, in the test: a close cancels it)."""

    def __init__(self, inner: RedisJournal, held: Mapping[str, int]) -> None:
        self.inner = inner
        self.held = held
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def mark(self) -> object:
        return await self.inner.mark()

    async def trim(self, mark: object, flushed: Mapping[str, int]) -> None:
        if flushed == self.held and not self.entered.is_set():
            self.entered.set()
            await self.release.wait()
        await self.inner.trim(mark, flushed)


async def test_a_close_during_a_cycles_trim_still_trims_what_it_had_stored(
    tmp_path: Path, rows: Rows
) -> None:
    """A close cancels the background cycle; one cancelled in its trim used to lose the
    versions it was trimming, so the next start replayed them (119-159 Redis records
    after a clean shutdown under load)."""
    async with redis_journal(tmp_path) as journal, SQLiteStore(tmp_path / "c.db") as store:
        held = HeldTrim(journal, {"c1": 3})
        flusher = Flusher(store, held, FlusherConfig(interval=0.001))  # type: ignore[arg-type]
        async with flusher:
            await journal.acquire("c1")
            for seq in range(1, 4):
                with flusher.mutation():
                    await journal.append("c1", seq, b"record %d" % seq)
                    changes = rows.changes(rows.conversation("c1", version=seq), (root(rows),))
                    flusher.record("c1", lambda dirty, changes=changes: dirty.absorb(changes))
            async with asyncio.timeout(10):  # a hang detector: the cycle stores, then trims
                await held.entered.wait()
            assert flusher.unflushed_bytes == 0  # all stored: only that trim is left
        assert [entry.payload for entry in await journal.tail("c1", 0)] == []


async def test_a_mark_taken_while_recovery_loads_never_trims_the_recovered_segments(
    tmp_path: Path, open_env: OpenEnv, rows: Rows
) -> None:
    """A cycle marked while the conversations were still being replayed; with nothing
    written yet, the mark after `recovered()` had the same segment number, and a trim by
    the earlier one deleted the recovered segment while a conversation replayed after it
    was still unstored (found by review: a crash then lost it)."""
    (tmp_path / "journal").mkdir()
    (tmp_path / "journal" / "journal-0000000001.log").write_bytes(
        SEGMENT_MAGIC + frame(Env.record("a", 1)) + frame(Env.record("b", 1))
    )
    env = await open_env()
    await env.journal.replay()
    replayed = {cid: rows.changes(rows.conversation(cid), (root(rows, cid),)) for cid in "ab"}
    env.flusher.record("a", lambda dirty: dirty.absorb(replayed["a"]))  # loaded first
    assert await env.flusher.flush_all()  # a cycle meanwhile: marks before `recovered()`
    held = env.store.hold("b")
    env.flusher.record("b", lambda dirty: dirty.absorb(replayed["b"]))  # loaded later
    env.journal.recovered()
    recovery_flush = asyncio.ensure_future(env.flusher.flush_all())  # b's write held
    await until(lambda: "b" in env.store.attempts)
    await env.mutate("a", 2)
    await env.flusher.flush("a")
    await env.flusher._cycle()  # trims by the newest complete mark: the early one
    assert "journal-0000000001.log" in env.journal.segments()
    assert Env.record("b", 1) in await env.replay_from_disk()
    held.set()
    assert await recovery_flush
    assert await env.sqlite.load("b") is not None
