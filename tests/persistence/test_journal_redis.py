"""Redis-journal specifics: epoch fencing between two owners, scripts Redis forgot, a
bounded close."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.exceptions import ResponseError

from persistence import redis_keys
from persistence.journal import Entry, JournalError
from persistence.journal_redis import _APPEND, Fenced, RedisJournal, append_keys
from persistence.redis_pool import Lean, RedisPool
from persistence.resp import Arg
from tests.backends import redis_journal, redis_settings, wipe_redis
from tests.services import REDIS_URL, require
from tests.waiting import until


def payloads(entries: list[Entry]) -> list[bytes]:
    return [entry.payload for entry in entries]


async def test_a_node_that_lost_ownership_cannot_append(tmp_path: Path) -> None:
    async with redis_journal(tmp_path) as old_owner, redis_journal(tmp_path) as new_owner:
        await old_owner.acquire("c1")
        await old_owner.append("c1", 1, b"first")
        await new_owner.acquire("c1")  # another node activates the conversation
        with pytest.raises(Fenced):
            await old_owner.append("c1", 2, b"stale")
        await new_owner.append("c1", 2, b"second")
        assert payloads(await new_owner.tail("c1", 0)) == [b"first", b"second"]


async def test_appending_without_acquiring_is_refused(tmp_path: Path) -> None:
    async with redis_journal(tmp_path) as journal:
        with pytest.raises(Fenced):
            await journal.append("c9", 1, b"x")
        assert payloads(await journal.tail("c9", 0)) == []


async def test_appends_and_trims_survive_redis_forgetting_its_scripts(tmp_path: Path) -> None:
    """A Redis restart or SCRIPT FLUSH drops cached scripts: they are loaded again, and a
    record whose script never ran is sent again, once, in its place in the order."""
    async with redis_journal(tmp_path) as journal, redis_journal(tmp_path) as rival:
        await journal.acquire("c1")
        await journal.append("c1", 1, b"first")
        with redis.Redis.from_url(REDIS_URL) as client:
            client.script_flush()
        second, third = journal.append("c1", 2, b"second"), journal.append("c1", 3, b"third")
        await second
        await third
        assert payloads(await journal.tail("c1", 0)) == [b"first", b"second", b"third"]
        await rival.acquire("c1")  # fencing still holds on the reloaded script
        with pytest.raises(Fenced):
            await journal.append("c1", 4, b"stale")
        with redis.Redis.from_url(REDIS_URL) as client:
            client.script_flush()
        await rival.trim(await rival.mark(), {"c1": 2})
        assert payloads(await rival.tail("c1", 0)) == [b"third"]


class CountingLean:
    """The pool's lean channel, counting the script calls of each write (reads, such as
    a tail's XRANGE, are not counted)."""

    def __init__(self, lean: Lean) -> None:
        self._lean = lean
        self.script_calls: list[int] = []
        self.at_once = 0  # writes made without awaiting (`send_now`)

    def _count(self, commands: Sequence[Sequence[Arg]]) -> None:
        calls = sum(command[0] == "EVALSHA" for command in commands)
        if calls:
            self.script_calls.append(calls)

    async def execute(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        self._count(commands)
        return await self._lean.execute(commands)

    def send_now(self, commands: Sequence[Sequence[Arg]]) -> list[asyncio.Future[Any]] | None:
        replies = self._lean.send_now(commands)
        if replies is not None:
            self._count(commands)
            self.at_once += 1
        return replies

    def close(self) -> None:
        self._lean.close()


class GatedLean:
    """The pool's lean channel, holding every batch until `gate` opens: a send in flight
    for as long as a test needs. `calls` counts the batches sent."""

    def __init__(self, lean: Lean) -> None:
        self._lean = lean
        self.gate = asyncio.Event()
        self.calls = 0

    async def execute(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        self.calls += 1
        await self.gate.wait()
        return await self._lean.execute(commands)

    def send_now(self, commands: Sequence[Sequence[Arg]]) -> None:
        return None  # through `execute`, where the gate holds it

    def close(self) -> None:
        self._lean.close()


@contextlib.asynccontextmanager
async def gated_journal(
    close_timeout: float = 3.0,
) -> AsyncIterator[tuple[RedisJournal, GatedLean]]:
    settings = redis_settings()
    wipe_redis()
    async with RedisPool(settings) as pool:
        gated = pool.lean = GatedLean(pool.lean)
        gated.gate.set()  # open while the journal starts and acquires c1
        journal = await RedisJournal(pool, close_timeout=close_timeout).__aenter__()
        await journal.acquire("c1")
        gated.gate.clear()
        gated.calls = 0
        yield journal, gated


async def test_close_while_a_send_is_stalled_finishes_within_its_bound() -> None:
    """Redis does not answer with an append in flight: close cuts the send short at its
    deadline, and the appender hears of it."""
    async with gated_journal(close_timeout=0.2) as (journal, gated):
        append = journal.append("c1", 1, b"stalled")
        await until(lambda: gated.calls == 1)
        async with asyncio.timeout(5):  # a hang detector, far above the 0.2 s bound
            await journal.__aexit__(None, None, None)
        assert append.done() and not journal._sends
        with pytest.raises(JournalError):
            await append


async def test_a_batch_queued_behind_a_send_keeps_the_epoch_it_was_appended_under() -> None:
    """Prepared only when its turn came, a queued batch read the epoch as it was then:
    after the conversation was lost and taken again here, the old actor's record went
    out under the new epoch, passed the fence and landed among the new actor's (found
    by review; on a Redis Cluster every batch is queued so)."""
    async with gated_journal() as (journal, gated):
        first = asyncio.ensure_future(journal.append("c1", 1, b"in flight"))
        await until(lambda: gated.calls == 1)
        queued = asyncio.ensure_future(journal.append("c1", 2, b"old actor's"))
        await until(lambda: len(journal._sends) == 2)  # behind the first
        journal.release("c1")  # lost...
        with redis.Redis.from_url(REDIS_URL) as client:  # ...and taken again: the lease's INCR
            epoch = client.incr(redis_keys.epoch("c1"))
        journal.own("c1", int(epoch))
        gated.gate.set()
        for append in (first, queued):
            with pytest.raises(Fenced):
                await append
        assert await journal.tail("c1", 0) == []


async def test_close_waits_for_the_send_in_flight_and_starts_none_after() -> None:
    """Close with a send in flight: that send completes and its appender is acked; an
    append made while close waits is refused at once, never sent on a closing pool."""
    async with gated_journal() as (journal, gated):
        first = asyncio.ensure_future(journal.append("c1", 1, b"in flight"))
        await until(lambda: gated.calls == 1)
        closing = asyncio.ensure_future(journal.__aexit__(None, None, None))
        await until(lambda: journal._closed)  # close began: it waits for the send
        late = journal.append("c1", 2, b"during close")
        with pytest.raises(JournalError, match="closed"):
            async with asyncio.timeout(5):  # a hang detector
                await late
        gated.gate.set()
        await closing
        await first  # acked: it went out before close began
        assert gated.calls == 1 and not journal._sends
        assert payloads(await journal.tail("c1", 0)) == [b"in flight"]


async def test_a_record_set_aside_is_copied_once_and_keeps_its_place(tmp_path: Path) -> None:
    """Replay meets a stranded record at every activation until a trim passes it: one copy,
    and it stays in its stream so new records are numbered past it."""
    async with redis_journal(tmp_path) as journal:
        await journal.acquire("c1")
        for seq in (1, 2, 3):
            await journal.append("c1", seq, b"record %d" % seq)
        stranded = (await journal.tail("c1", 0))[1]
        for _ in range(2):
            await journal.set_aside(stranded, "after seq 1, where replay stopped")
        assert payloads(await journal.tail("c1", 0)) == [b"record 1", b"record 2", b"record 3"]
        with redis.Redis.from_url(REDIS_URL) as client:
            kept = client.xrange(redis_keys.SET_ASIDE)
        assert [(f[b"origin"].decode(), f[b"r"]) for _, f in kept] == [
            (stranded.origin, b"record 2")
        ]


async def test_appends_go_over_the_lean_connection_not_redis_py(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py's EVALSHA costs ~88 µs of CPU against the lean connection's ~38: the
    appends' script calls never go through it, and a script Redis forgot is still
    loaded and the record sent again, once."""
    async with redis_journal(tmp_path) as journal:
        await journal.acquire("c1")

        def not_here(*args: object, **kwargs: object) -> None:
            raise AssertionError("an append went through redis-py")

        monkeypatch.setattr(journal._client, "pipeline", not_here)
        monkeypatch.setattr(journal._client, "evalsha", not_here)
        await journal.append("c1", 1, b"first")
        with redis.Redis.from_url(REDIS_URL) as client:
            client.script_flush()
        await journal.append("c1", 2, b"second")
        monkeypatch.undo()
        assert payloads(await journal.tail("c1", 0)) == [b"first", b"second"]


async def test_a_conversations_records_of_one_tick_go_in_one_script_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An actor's queued appends reach the journal in one tick: each conversation's go
    as one EVALSHA (atomic: all land or none), the conversations' calls in one pipeline;
    a fenced conversation fails alone."""
    async with redis_journal(tmp_path) as journal, redis_journal(tmp_path) as rival:
        for conversation_id in ("c1", "c2", "c3"):
            await journal.acquire(conversation_id)
        await rival.acquire("c3")  # c3 is fenced for `journal`
        counting = CountingLean(journal._lean)
        monkeypatch.setattr(journal, "_lean", counting)
        sent = counting.script_calls
        c1 = [journal.append("c1", seq, b"c1-%d" % seq) for seq in range(1, 6)]
        c2 = [journal.append("c2", seq, b"c2-%d" % seq) for seq in range(1, 4)]
        c3 = journal.append("c3", 1, b"stale")
        await asyncio.gather(*c1, *c2)
        with pytest.raises(Fenced):
            await c3
        assert sent == [3]
        assert payloads(await journal.tail("c1", 0)) == [b"c1-%d" % s for s in range(1, 6)]
        assert payloads(await journal.tail("c2", 1)) == [b"c2-2", b"c2-3"]
        assert payloads(await rival.tail("c3", 0)) == []


async def test_a_node_upgraded_in_place_finds_what_the_older_layout_journaled() -> None:
    """An older version tagged keys by conversation id and kept one node-wide journaled
    set: at start the journal moves them into the shards, records, order and epoch kept."""
    require("redis")
    wipe_redis()
    with redis.Redis.from_url(REDIS_URL) as client:  # what the older version left
        for seq in (1, 2, 3):
            client.xadd(redis_keys.legacy_journal("c1"), {"r": b"old %d" % seq}, id=f"{seq}-1")
        client.set(redis_keys.legacy_epoch("c1"), 7)
        client.sadd(redis_keys.LEGACY_JOURNALED, "c1", "c-flushed")  # c-flushed: trimmed away
    settings = redis_settings()
    async with RedisPool(settings) as pool, RedisJournal(pool) as journal:
        assert payloads(await journal.replay()) == [b"old 1", b"old 2", b"old 3"]
        await journal.append("c1", 4, b"new 4")
        assert await journal.journaled() == ["c1"]
    with redis.Redis.from_url(REDIS_URL) as client:
        assert int(client.get(redis_keys.epoch("c1")) or 0) == 8  # past the older owner's
        legacy = [redis_keys.LEGACY_JOURNALED, redis_keys.legacy_journal("c1"),
                  redis_keys.legacy_epoch("c1")]  # fmt: skip
        assert client.exists(*legacy) == 0
    async with RedisPool(settings) as pool, RedisJournal(pool) as journal:
        assert payloads(await journal.replay()) == [b"old 1", b"old 2", b"old 3", b"new 4"]


def test_every_key_of_a_conversation_shares_one_slot() -> None:
    """On a Redis Cluster each script runs on one master: the keys it names share a slot."""
    from redis.crc import key_slot

    for cid in ("c1", "a{b}c", "}{", "0f8fad5b-d9cb-469f-a165-70867728950e"):
        keys = [redis_keys.journal(cid), redis_keys.epoch(cid), redis_keys.journaled_of(cid),
                redis_keys.journal_blobs(cid), redis_keys.lease(cid)]  # fmt: skip
        assert len({key_slot(key.encode()) for key in keys}) == 1, keys
    set_aside = {key_slot(k.encode()) for k in (redis_keys.SET_ASIDE, redis_keys.SET_ASIDE_SEEN)}
    assert len(set_aside) == 1


# -- records too large for the stream go beside it (a fork's copy) -------------------------

BIG = b"fork copy " * 5_000  # 50 KB: over BESIDE


def big(n: int) -> bytes:
    return b"%d:" % n + BIG


def blob_fields(cid: str) -> list[bytes]:
    with redis.Redis.from_url(REDIS_URL) as client:
        return sorted(client.hkeys(redis_keys.journal_blobs(cid)))


async def test_a_large_record_goes_beside_the_stream_and_its_trim_takes_it(
    tmp_path: Path,
) -> None:
    async with redis_journal(tmp_path) as journal:
        await journal.acquire("c1")
        epoch = journal.epoch("c1")
        records = [b"one", big(2), b"three", big(4)]
        for seq, record in enumerate(records, start=1):
            await journal.append("c1", seq, record)
        with redis.Redis.from_url(REDIS_URL) as client:
            entries = dict(client.xrange(redis_keys.journal("c1")))
        assert entries[b"1-1"] == {b"r": b"one"}
        assert entries[b"2-1"] == {b"b": b"2:%d" % epoch}  # the stream holds a name only
        assert blob_fields("c1") == [b"2:%d" % epoch, b"4:%d" % epoch]
        assert journal.stats()["records_beside"] == 2
        assert payloads(await journal.tail("c1", 0)) == records
        assert payloads(await journal.tail("c1", 2)) == records[2:]

        await journal.trim(None, {"c1": 3})
        assert blob_fields("c1") == [b"4:%d" % epoch]
        assert payloads(await journal.tail("c1", 0)) == [big(4)]
        await journal.trim(None, {"c1": 4})
        with redis.Redis.from_url(REDIS_URL) as client:
            assert client.exists(redis_keys.journal("c1"), redis_keys.journal_blobs("c1")) == 0


async def test_a_fenced_large_append_leaves_no_blob(tmp_path: Path) -> None:
    async with redis_journal(tmp_path) as old_owner, redis_journal(tmp_path) as new_owner:
        await old_owner.acquire("c1")
        await old_owner.append("c1", 1, big(1))
        await new_owner.acquire("c1")
        with pytest.raises(Fenced):
            await old_owner.append("c1", 2, big(2))
        assert blob_fields("c1") == [b"1:%d" % old_owner.epoch("c1")]
        await new_owner.append("c1", 2, big(3))
        assert payloads(await new_owner.tail("c1", 0)) == [big(1), big(3)]


async def test_an_entry_whose_blob_never_arrived_is_refused_whole(tmp_path: Path) -> None:
    """The script checks every blob its call names before it adds any entry: a call whose
    HSET was refused (here the blob key holds a string) acknowledges nothing of it, and
    another conversation's call in the same send is acknowledged as it landed."""
    async with redis_journal(tmp_path) as journal:
        for conversation_id in ("c1", "c2"):
            await journal.acquire(conversation_id)
        await journal.append("c1", 1, b"one")
        with redis.Redis.from_url(REDIS_URL) as client:
            client.set(redis_keys.journal_blobs("c1"), b"in the way")
        small, large = journal.append("c1", 2, b"two"), journal.append("c1", 3, big(3))
        other = journal.append("c2", 1, b"c2 one")
        for append in (small, large):
            with pytest.raises(JournalError):
                await append
        await other
        assert payloads(await journal.tail("c2", 0)) == [b"c2 one"]
        with redis.Redis.from_url(REDIS_URL) as client:
            client.delete(redis_keys.journal_blobs("c1"))
        assert payloads(await journal.tail("c1", 0)) == [b"one"]
        epoch = journal.epoch("c1")
        keys = append_keys("c1")
        [refused] = await journal._run(_APPEND, [(keys, [epoch, "c1", 2, "b", f"2:{epoch}"])])
        assert isinstance(refused, ResponseError) and str(refused).startswith("NOBLOB")
        assert payloads(await journal.tail("c1", 0)) == [b"one"]


async def test_a_tail_whose_blob_a_trim_took_meanwhile_reads_the_stream_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with redis_journal(tmp_path) as journal, redis_journal(tmp_path) as flusher:
        await journal.acquire("c1")
        for seq, record in enumerate([b"one", big(2), b"three", big(4)], start=1):
            await journal.append("c1", seq, record)
        execute = journal._lean.execute
        reads: list[int] = []

        async def trimmed_first(commands: Sequence[Sequence[Any]]) -> list[Any]:
            if commands[0][0] == "HMGET":
                reads.append(len(commands[0]) - 2)  # the fields asked for
                if len(reads) == 1:  # the flusher stored up to 2 and trimmed, after the XRANGE
                    await flusher.trim(None, {"c1": 2})
            return await execute(commands)

        monkeypatch.setattr(journal._lean, "execute", trimmed_first)
        assert payloads(await journal.tail("c1", 0)) == [b"three", big(4)]
        assert reads == [2, 1]


async def test_a_large_record_survives_redis_forgetting_its_scripts(tmp_path: Path) -> None:
    """NOSCRIPT sends the script call again; the blob it names went ahead already."""
    async with redis_journal(tmp_path) as journal:
        await journal.acquire("c1")
        with redis.Redis.from_url(REDIS_URL) as client:
            client.script_flush()
        await journal.append("c1", 1, big(1))
        assert payloads(await journal.tail("c1", 0)) == [big(1)]


# -- a batch written at once when nothing else is being sent --------------------------------


async def test_a_lone_append_is_written_at_once_and_those_after_it_wait_their_turn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with redis_journal(tmp_path) as journal:
        for conversation_id in ("c1", "c2"):
            await journal.acquire(conversation_id)
        counting = CountingLean(journal._lean)
        monkeypatch.setattr(journal, "_lean", counting)
        first = journal.append("c1", 1, b"one")
        await until(lambda: counting.at_once == 1)  # written, its reply not yet read
        later = [journal.append("c1", 2, b"two"), journal.append("c2", 1, b"c2 one")]
        await asyncio.gather(first, *later)
        assert counting.script_calls == [1, 2] and counting.at_once == 1
        assert payloads(await journal.tail("c1", 0)) == [b"one", b"two"]
        assert payloads(await journal.tail("c2", 0)) == [b"c2 one"]


async def test_a_batch_written_at_once_that_meets_noscript_keeps_its_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis forgot the script: the batch is sent again after loading it, and a batch
    queued meanwhile goes only after that (the same conversation's next seq here)."""
    async with redis_journal(tmp_path) as journal:
        await journal.acquire("c1")
        await journal.append("c1", 1, b"one")
        counting = CountingLean(journal._lean)
        monkeypatch.setattr(journal, "_lean", counting)
        with redis.Redis.from_url(REDIS_URL) as client:
            client.script_flush()
        second = journal.append("c1", 2, b"two")
        await until(lambda: counting.at_once == 1)
        third = journal.append("c1", 3, b"three")
        await second
        await third
        assert payloads(await journal.tail("c1", 0)) == [b"one", b"two", b"three"]
        assert counting.script_calls == [1, 1, 1]  # at once, again after loading, the next


async def test_close_waits_for_a_batch_written_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with redis_journal(tmp_path) as reader:
        journal = await RedisJournal(reader._pool).__aenter__()
        await journal.acquire("c1")
        counting = CountingLean(journal._lean)
        monkeypatch.setattr(journal, "_lean", counting)
        append = journal.append("c1", 1, b"in flight")
        await until(lambda: counting.at_once == 1)
        await journal.__aexit__(None, None, None)
        assert append.done() and append.result() is None  # acked, not cut short
        assert journal._in_flight is None
        assert payloads(await reader.tail("c1", 0)) == [b"in flight"]


async def test_a_trim_that_empties_the_stream_keeps_the_blob_of_an_append_under_way(
    tmp_path: Path,
) -> None:
    """Redis reads a large argument on its own and serves others meanwhile: a trim may
    run between an append's HSET and its script call."""
    async with redis_journal(tmp_path) as journal, redis_journal(tmp_path) as flusher:
        await journal.acquire("c1")
        await journal.append("c1", 1, b"one")
        epoch, blobs = journal.epoch("c1"), redis_keys.journal_blobs("c1")
        await journal._lean.execute([("HSET", blobs, f"2:{epoch}", big(2))])  # landed first
        await flusher.trim(None, {"c1": 1})  # the stream is empty now
        keys = append_keys("c1")
        assert await journal._run(_APPEND, [(keys, [epoch, "c1", 2, "b", f"2:{epoch}"])]) == [1]
        assert payloads(await journal.tail("c1", 0)) == [big(2)]


async def test_a_fenced_watcher_that_raises_holds_up_no_appender_nor_later_send(
    tmp_path: Path,
) -> None:
    async with redis_journal(tmp_path) as old_owner, redis_journal(tmp_path) as new_owner:
        for conversation_id in ("c1", "c2"):
            await old_owner.acquire(conversation_id)
        await new_owner.acquire("c1")

        def broken(conversation_id: str) -> None:
            raise RuntimeError(f"watcher of {conversation_id} broke")

        old_owner.on_fenced(broken)
        with pytest.raises(Fenced):
            await old_owner.append("c1", 1, b"stale")
        async with asyncio.timeout(5):  # a hang detector
            await old_owner.append("c2", 1, b"later")
        assert payloads(await old_owner.tail("c2", 0)) == [b"later"]


async def test_a_blob_gone_while_its_entry_stays_comes_back_empty_to_be_set_aside(
    tmp_path: Path,
) -> None:
    """An evicting Redis may drop a blob: its record is handed on empty (replay sets it
    aside as undecodable) rather than failing every read of the conversation."""
    async with redis_journal(tmp_path) as journal:
        await journal.acquire("c1")
        for seq, record in enumerate([b"one", big(2), b"three"], start=1):
            await journal.append("c1", seq, record)
        with redis.Redis.from_url(REDIS_URL) as client:
            client.hdel(redis_keys.journal_blobs("c1"), f"2:{journal.epoch('c1')}")
        assert payloads(await journal.tail("c1", 0)) == [b"one", b"", b"three"]
