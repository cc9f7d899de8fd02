"""The Journal contract: every backend (see JOURNALS in conftest.py) must pass all of it.

Record `n` of a conversation carries seq `n` (seqs start at 1, as the engine's do) and
the owner acquires a conversation before appending to it, as the registry does.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from persistence.journal import Journal

if TYPE_CHECKING:
    from conftest import Journals


def payload(n: int, cid: str = "c1") -> bytes:
    return f"{cid}:{n:06d}:".encode() + bytes(range(n % 256))  # varied lengths, any bytes


async def replayed(journal: Journal) -> list[bytes]:
    return [entry.payload for entry in await journal.replay()]


def payloads(numbers: range, cid: str = "c1") -> list[bytes]:
    return [payload(n, cid) for n in numbers]


async def append_all(journal: Journal, numbers: range, cid: str = "c1") -> None:
    await journal.acquire(cid)
    await asyncio.gather(*(journal.append(cid, n, payload(n, cid)) for n in numbers))


async def test_empty_journal_replays_nothing(journals: Journals) -> None:
    journal = await journals.open()
    assert await replayed(journal) == []
    journal = await journals.reopen(journal)
    assert await replayed(journal) == []


async def test_replay_after_reopen_returns_records_in_append_order(journals: Journals) -> None:
    journal = await journals.open()
    await journal.acquire("c1")
    for n in range(1, 201):
        await journal.append("c1", n, payload(n))
    journal = await journals.reopen(journal)
    assert await replayed(journal) == payloads(range(1, 201))


async def test_replay_keeps_each_conversations_order(journals: Journals) -> None:
    journal = await journals.open()
    order = [(f"c{n % 3}", n // 3 + 1) for n in range(30)]
    for cid in ("c0", "c1", "c2"):
        await journal.acquire(cid)
    for cid, seq in order:
        await journal.append(cid, seq, payload(seq, cid))
    journal = await journals.reopen(journal)
    found = await replayed(journal)
    assert sorted(found) == sorted(payload(seq, cid) for cid, seq in order)
    for cid in ("c0", "c1", "c2"):
        mine = [p for p in found if p.startswith(cid.encode())]
        assert mine == [payload(seq, c) for c, seq in order if c == cid]


async def test_appends_in_one_tick_resolve_together(journals: Journals) -> None:
    journal = await journals.open()
    await journal.acquire("c1")
    acks = [asyncio.ensure_future(journal.append("c1", n, payload(n))) for n in range(1, 101)]
    await acks[0]
    assert all(ack.done() for ack in acks)
    await asyncio.gather(*acks)
    journal = await journals.reopen(journal)
    assert await replayed(journal) == payloads(range(1, 101))


async def test_trim_drops_records_covered_by_the_mark_only(journals: Journals) -> None:
    journal = await journals.open()
    await append_all(journal, range(1, 11))
    mark = await journal.mark()
    await append_all(journal, range(11, 16))
    await journal.trim(mark, {"c1": 10})
    journal = await journals.reopen(journal)
    assert await replayed(journal) == payloads(range(11, 16))


async def test_large_records_keep_their_place_and_go_with_their_trim(journals: Journals) -> None:
    """A fork's copy of 1,000 messages is one record of ~350 KB: it replays byte for byte
    in its place among small ones, and a trim covering it drops it."""
    big = {n: payload(n) * (3_000 + n) for n in (2, 3, 6)}  # ~40-60 KB each
    expected = [big.get(n, payload(n)) for n in range(1, 8)]
    journal = await journals.open()
    await journal.acquire("c1")
    for n in range(1, 4):
        await journal.append("c1", n, expected[n - 1])
    mark = await journal.mark()
    for n in range(4, 8):
        await journal.append("c1", n, expected[n - 1])
    await journal.trim(mark, {"c1": 3})
    journal = await journals.reopen(journal)
    assert await replayed(journal) == expected[3:]


async def test_records_appended_during_trim_are_kept(journals: Journals) -> None:
    journal = await journals.open()
    await append_all(journal, range(1, 4))
    mark = await journal.mark()
    late = journal.append("c1", 4, payload(4))
    await journal.trim(mark, {"c1": 3})
    await late
    journal = await journals.reopen(journal)
    assert await replayed(journal) == [payload(4)]


async def test_successive_marks_trim_successively(journals: Journals) -> None:
    journal = await journals.open()
    await append_all(journal, range(1, 5))
    first = await journal.mark()
    await append_all(journal, range(5, 9))
    await journal.mark()
    await append_all(journal, range(9, 13))
    await journal.trim(first, {"c1": 4})
    journal = await journals.reopen(journal)
    assert await replayed(journal) == payloads(range(5, 13))
    journal.recovered()  # the engine holds them now: a mark from now on may cover them
    mark = await journal.mark()
    await journal.trim(mark, {"c1": 12})
    journal = await journals.reopen(journal)
    assert await replayed(journal) == []


async def test_fsync_always_mode_keeps_every_record(journals: Journals) -> None:
    journal = await journals.open(fsync="always")
    await append_all(journal, range(1, 21))
    await append_all(journal, range(1, 3), cid="c2")
    journal = await journals.reopen(journal, fsync="always")
    assert await replayed(journal) == payloads(range(1, 21)) + payloads(range(1, 3), "c2")


async def test_an_appender_that_stops_waiting_leaves_the_others_acknowledged(
    journals: Journals,
) -> None:
    journal = await journals.open()
    await journal.acquire("c1")

    async def handler() -> None:
        await journal.append("c1", 2, payload(2))

    waiting = asyncio.ensure_future(handler())
    # its request goes away once it waits on its ack, before the journal gets to write
    asyncio.get_running_loop().call_soon(waiting.cancel)
    first = journal.append("c1", 1, payload(1))
    await first
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await journal.append("c1", 3, payload(3))  # the journal still takes appends
    journal = await journals.reopen(journal)
    found = await replayed(journal)  # record 2 may or may not have been written
    assert [p for p in found if p != payload(2)] == [payload(1), payload(3)]
