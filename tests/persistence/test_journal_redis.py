"""Redis-journal specifics: epoch fencing between two owners, scripts Redis forgot, a
bounded close."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis

from persistence import redis_keys
from persistence.journal import Entry, JournalError
from persistence.journal_redis import Call, Fenced, RedisJournal
from tests.backends import redis_journal
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


async def test_close_while_a_send_is_stalled_finishes_within_its_bound() -> None:
    """Redis stops answering writes (CLIENT PAUSE, bounded) with an append in flight:
    close cuts the send short at its deadline, and the appender hears of it."""
    require("redis")
    journal = RedisJournal(REDIS_URL, timeout=10.0, close_timeout=0.2)
    await journal.__aenter__()
    await journal.acquire("c1")
    with redis.Redis.from_url(REDIS_URL) as admin:
        admin.execute_command("CLIENT", "PAUSE", 2000, "WRITE")
        try:
            append = journal.append("c1", 1, b"stalled")
            await until(lambda: bool(journal._sends) and not journal._batch)
            async with asyncio.timeout(5):  # a hang detector, far above the 0.2 s bound
                await journal.__aexit__(None, None, None)
            assert append.done() and not journal._sends
            with pytest.raises(JournalError):
                await append
        finally:
            admin.execute_command("CLIENT", "UNPAUSE")


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
        sent: list[int] = []
        run = journal._run

        async def counted(script: str, calls: list[Call]) -> list[object]:
            sent.append(len(calls))
            return await run(script, calls)

        monkeypatch.setattr(journal, "_run", counted)
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
