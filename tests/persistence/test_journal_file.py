"""FileJournal specifics: framing, torn and corrupt tails, segments, group commit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from persistence.journal_file import FileJournal, frame

OpenJournal = Callable[[], Awaitable[FileJournal]]
Written = Callable[[int], Awaitable[Path]]


def payload(n: int) -> bytes:
    return b"payload-%03d-" % n + b"x" * n


def size_of(count: int) -> int:
    return sum(len(frame(payload(n))) for n in range(count))


@pytest.fixture
def journal_dir(tmp_path: Path) -> Path:
    return tmp_path / "journal"


@pytest.fixture
async def open_journal(journal_dir: Path) -> AsyncIterator[OpenJournal]:
    """Open FileJournals on one directory; all are closed at teardown (closing is idempotent)."""
    opened: list[FileJournal] = []

    async def open_() -> FileJournal:
        journal = await FileJournal(journal_dir).__aenter__()
        opened.append(journal)
        return journal

    yield open_
    for journal in reversed(opened):
        await journal.__aexit__(None, None, None)


@pytest.fixture
def written(open_journal: OpenJournal, journal_dir: Path) -> Written:
    """Write `count` records, close the journal, and return the segment holding them."""

    async def write(count: int) -> Path:
        journal = await open_journal()
        await asyncio.gather(*(journal.append("c", n, payload(n)) for n in range(count)))
        path = journal_dir / journal.segments()[-1]
        await journal.__aexit__(None, None, None)
        assert path.stat().st_size == size_of(count)
        return path

    return write


@pytest.mark.parametrize("cut", [1, 5, 8, 9, len(frame(payload(4))) - 1])
async def test_torn_last_record_is_dropped_and_truncated(
    open_journal: OpenJournal, written: Written, cut: int
) -> None:
    path = await written(5)
    with path.open("r+b") as f:
        f.truncate(size_of(5) - cut)
    journal = await open_journal()
    assert await journal.replay() == [payload(n) for n in range(4)]
    assert path.stat().st_size == size_of(4)


@pytest.mark.parametrize(
    "garbage",
    [b"\x07", b"\xff" * 7, b"\x10\x00\x00\x00\xde\xad\xbe\xef", frame(b"next")[:-1], b"\x00" * 3],
    ids=["one-byte", "short-header", "header-only", "frame-minus-one", "zeros-short"],
)
async def test_garbage_after_the_last_record_is_truncated(
    open_journal: OpenJournal, written: Written, garbage: bytes
) -> None:
    path = await written(5)
    with path.open("ab") as f:
        f.write(garbage)
    journal = await open_journal()
    assert await journal.replay() == [payload(n) for n in range(5)]
    assert path.stat().st_size == size_of(5)


async def test_zero_filled_tail_yields_no_records(
    open_journal: OpenJournal, written: Written
) -> None:
    """A power loss can leave a file's new size with zeroed blocks behind it."""
    path = await written(5)
    with path.open("ab") as f:
        f.write(b"\x00" * 4096)
    journal = await open_journal()
    assert await journal.replay() == [payload(n) for n in range(5)]
    assert path.stat().st_size == size_of(5)


async def test_crc_mismatch_in_last_record_drops_only_that_record(
    open_journal: OpenJournal, written: Written
) -> None:
    path = await written(5)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    journal = await open_journal()
    assert await journal.replay() == [payload(n) for n in range(4)]
    assert path.stat().st_size == size_of(4)


async def test_appends_after_a_torn_tail_survive_the_next_restart(
    open_journal: OpenJournal, written: Written
) -> None:
    path = await written(3)
    with path.open("ab") as f:
        f.write(b"\x01\x02\x03")
    journal = await open_journal()
    assert await journal.replay() == [payload(n) for n in range(3)]
    await journal.append("c", 3, payload(3))
    await journal.__aexit__(None, None, None)
    journal = await open_journal()
    assert await journal.replay() == [payload(n) for n in range(4)]


async def test_one_tick_of_appends_is_one_group(open_journal: OpenJournal) -> None:
    journal = await open_journal()
    acks = [journal.append("c", n, payload(n)) for n in range(50)]
    assert journal.records_written == 0
    await acks[0]
    assert journal.records_written == 50  # one write for the tick, every ack released
    assert all(ack.done() for ack in acks)
    later = journal.append("c", 50, payload(50))
    assert not later.done()  # the next tick's group
    await later
    assert journal.records_written == 51


async def test_each_open_and_mark_starts_a_segment_and_trim_deletes_files(
    open_journal: OpenJournal,
) -> None:
    journal = await open_journal()
    assert journal.segments() == ["journal-0000000001.log"]
    await journal.append("c", 1, payload(1))
    mark = await journal.mark()
    assert journal.segments() == ["journal-0000000001.log", "journal-0000000002.log"]
    await journal.append("c", 2, payload(2))
    await journal.trim(mark, {"c": 1})
    assert journal.segments() == ["journal-0000000002.log"]
    await journal.__aexit__(None, None, None)
    journal = await open_journal()
    assert journal.segments() == ["journal-0000000002.log", "journal-0000000003.log"]
    assert await journal.replay() == [payload(2)]
