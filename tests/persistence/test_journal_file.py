"""FileJournal specifics: framing, torn tails, damage before the tail, segments, group commit."""

from __future__ import annotations

import asyncio
import errno
import os
import struct
import threading
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from persistence import journal_file
from persistence.journal import Entry, JournalDamaged, JournalError
from persistence.journal_file import _HEADER, DAMAGED, SEGMENT_MAGIC, FileJournal, frame, scan
from tests.waiting import until

OpenJournal = Callable[..., Awaitable[FileJournal]]
Written = Callable[[int], Awaitable[Path]]


def payload(n: int) -> bytes:
    return b"payload-%03d-" % n + b"x" * n


def size_of(count: int) -> int:
    return len(SEGMENT_MAGIC) + sum(len(frame(payload(n))) for n in range(count))


def offset_of(n: int) -> int:
    """Where frame `n` starts in a segment written by `written`."""
    return size_of(n)


async def replayed(journal: FileJournal) -> list[bytes]:
    return [entry.payload for entry in await journal.replay()]


@pytest.fixture
def journal_dir(tmp_path: Path) -> Path:
    return tmp_path / "journal"


@pytest.fixture
async def open_journal(journal_dir: Path) -> AsyncIterator[OpenJournal]:
    """Open FileJournals on one directory; all are closed at teardown (closing is idempotent)."""
    opened: list[FileJournal] = []

    async def open_(**options: bool) -> FileJournal:
        journal = await FileJournal(journal_dir, **options).__aenter__()  # type: ignore[arg-type]
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


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


# -- torn tails: the last write cut short, truncated as before -------------------------------


@pytest.mark.parametrize("cut", [1, 5, 8, 12, 13, len(frame(payload(4))) - 1])
async def test_torn_last_record_is_dropped_and_truncated(
    open_journal: OpenJournal, written: Written, cut: int
) -> None:
    path = await written(5)
    with path.open("r+b") as f:
        f.truncate(size_of(5) - cut)
    journal = await open_journal()
    assert await replayed(journal) == [payload(n) for n in range(4)]
    assert path.stat().st_size == size_of(4)


@pytest.mark.parametrize(
    "garbage",
    [frame(b"next")[:1], frame(b"next")[:7], frame(b"next")[:12], frame(b"next")[:-1], b"\0" * 3],
    ids=["one-byte", "short-header", "header-only", "frame-minus-one", "zeros-short"],
)
async def test_a_cut_short_write_after_the_last_record_is_truncated(
    open_journal: OpenJournal, written: Written, garbage: bytes
) -> None:
    path = await written(5)
    with path.open("ab") as f:
        f.write(garbage)
    journal = await open_journal()
    assert await replayed(journal) == [payload(n) for n in range(5)]
    assert path.stat().st_size == size_of(5)


async def test_zero_filled_tail_yields_no_records(
    open_journal: OpenJournal, written: Written
) -> None:
    """A power loss can leave a file's new size with zeroed blocks behind it."""
    path = await written(5)
    with path.open("ab") as f:
        f.write(b"\x00" * 4096)
    journal = await open_journal()
    assert await replayed(journal) == [payload(n) for n in range(5)]
    assert path.stat().st_size == size_of(5)


async def test_appends_after_a_torn_tail_survive_the_next_restart(
    open_journal: OpenJournal, written: Written
) -> None:
    path = await written(3)
    with path.open("ab") as f:
        f.write(frame(b"torn")[:9])
    journal = await open_journal()
    assert await replayed(journal) == [payload(n) for n in range(3)]
    await journal.append("c", 3, payload(3))
    await journal.__aexit__(None, None, None)
    journal = await open_journal()
    assert await replayed(journal) == [payload(n) for n in range(4)]


async def test_a_segment_whose_header_was_cut_short_is_empty(
    open_journal: OpenJournal, journal_dir: Path
) -> None:
    journal_dir.mkdir()
    (journal_dir / "journal-0000000001.log").write_bytes(SEGMENT_MAGIC[:3])
    journal = await open_journal()
    assert await replayed(journal) == []


# -- damage before the tail: never discarded ------------------------------------------------


@pytest.mark.parametrize(
    "where",
    [
        pytest.param(lambda: offset_of(2) + 14, id="payload-mid-segment"),
        pytest.param(lambda: offset_of(2) + 5, id="length-mid-segment"),
        pytest.param(lambda: offset_of(2), id="magic-mid-segment"),
        pytest.param(lambda: 20, id="first-frame"),
        pytest.param(lambda: size_of(5) - 1, id="last-frame-complete"),
    ],
)
async def test_a_flipped_byte_refuses_recovery_and_changes_nothing(
    open_journal: OpenJournal, written: Written, journal_dir: Path, where: Callable[[], int]
) -> None:
    path = await written(5)
    flip(path, where())
    damaged = path.read_bytes()
    with pytest.raises(JournalDamaged, match=r"journal-0000000001\.log bytes \d+-\d+"):
        await (await open_journal()).replay()
    assert path.read_bytes() == damaged
    assert not (journal_dir / DAMAGED).exists()


async def test_a_refused_recovery_never_trims_what_it_did_not_replay(
    open_journal: OpenJournal, written: Written
) -> None:
    """A node that fails to start still closes its flusher, which marks and trims."""
    path = await written(5)
    flip(path, offset_of(2) + 14)
    damaged = path.read_bytes()
    journal = await open_journal()
    with pytest.raises(JournalDamaged):
        await journal.replay()
    for _ in range(2):  # a second trim must not forget what the first one kept
        await journal.trim(await journal.mark(), {})
    assert path.read_bytes() == damaged


@pytest.mark.parametrize("flipped", [2, 0, 4], ids=["mid-segment", "first-frame", "last-frame"])
async def test_recover_damaged_replays_every_intact_record_and_keeps_the_segment(
    open_journal: OpenJournal, written: Written, journal_dir: Path, flipped: int
) -> None:
    path = await written(5)
    flip(path, offset_of(flipped) + 14)
    damaged = path.read_bytes()
    journal = await open_journal(recover_damaged=True)
    entries = await journal.replay()
    assert [e.payload for e in entries] == [payload(n) for n in range(5) if n != flipped]
    assert entries[0].origin == f"{path.name}@{offset_of(1 if flipped == 0 else 0)}"
    assert (journal_dir / DAMAGED / path.name).read_bytes() == damaged
    assert journal.stats()["damaged_bytes"] == len(frame(payload(flipped)))


async def test_damage_in_an_older_segment_with_a_newer_one_intact(
    open_journal: OpenJournal, journal_dir: Path
) -> None:
    journal = await open_journal()
    await asyncio.gather(*(journal.append("c", n, payload(n)) for n in range(4)))
    await journal.mark()
    await asyncio.gather(*(journal.append("c", n, payload(n)) for n in range(4, 8)))
    older = journal_dir / journal.segments()[0]
    await journal.__aexit__(None, None, None)
    flip(older, offset_of(1) + 14)
    with pytest.raises(JournalDamaged, match=older.name):
        await (await open_journal()).replay()
    journal = await open_journal(recover_damaged=True)
    assert await replayed(journal) == [payload(n) for n in range(8) if n != 1]


async def test_a_torn_tail_in_an_older_segment_is_damage(
    open_journal: OpenJournal, journal_dir: Path
) -> None:
    """Only the newest segment can have been cut short by a crash."""
    journal = await open_journal()
    await journal.append("c", 0, payload(0))
    await journal.mark()
    await journal.append("c", 1, payload(1))
    older = journal_dir / journal.segments()[0]
    await journal.__aexit__(None, None, None)
    with older.open("ab") as f:
        f.write(frame(b"torn")[:9])
    with pytest.raises(JournalDamaged):
        await (await open_journal()).replay()


def test_resynchronisation_skips_a_false_magic_inside_damage() -> None:
    good = [frame(payload(n)) for n in range(3)]
    noise = journal_file.FRAME_MAGIC + b"\xff" * 20  # a magic word with no valid frame behind
    data = SEGMENT_MAGIC + good[0] + noise + good[1] + good[2]
    found = scan(data, last=True)
    assert [p for _, p in found.frames] == [payload(n) for n in range(3)]
    start = len(SEGMENT_MAGIC) + len(good[0])
    assert found.damaged == [(start, start + len(noise))]


def test_segments_written_before_the_magic_words_are_still_read() -> None:
    def legacy(data: bytes) -> bytes:
        return struct.pack("<II", len(data), zlib.crc32(data)) + data

    data = b"".join(legacy(payload(n)) for n in range(3))
    assert [p for _, p in scan(data, last=False).frames] == [payload(n) for n in range(3)]
    torn = scan(data + legacy(b"cut")[:5], last=True)
    assert (len(torn.frames), torn.torn_at, torn.damaged) == (3, len(data), [])


async def test_set_aside_records_are_kept_framed_where_trim_never_goes(
    open_journal: OpenJournal, journal_dir: Path
) -> None:
    journal = await open_journal()
    await journal.set_aside(Entry(b"kept", "journal-0000000009.log@8"), "test")
    mark = await journal.mark()
    await journal.trim(mark, {})
    kept = (journal_dir / DAMAGED / "set-aside.log").read_bytes()
    assert [p for _, p in scan(kept, last=False).frames] == [b"kept"]


# -- failures while running ------------------------------------------------------------------


async def test_a_failed_write_leaves_no_partial_frame(
    open_journal: OpenJournal, journal_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = await open_journal()
    await journal.append("c", 0, payload(0))
    real_write = os.write

    def half_then_full(fd: int, data: memoryview) -> int:
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(journal_file.os, "write", half_then_full)
    with pytest.raises(JournalError, match="No space"):
        await journal.append("c", 1, payload(1))
    monkeypatch.setattr(journal_file.os, "write", real_write)
    await journal.append("c", 2, payload(2))
    await journal.__aexit__(None, None, None)
    assert await replayed(await open_journal()) == [payload(0), payload(2)]


async def test_mark_without_descriptors_raises_a_journal_error(
    open_journal: OpenJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = await open_journal()
    await journal.append("c", 0, payload(0))

    def no_descriptors(*args: object) -> int:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(journal_file.os, "open", no_descriptors)
    with pytest.raises(JournalError, match="Too many open files"):
        await journal.mark()
    monkeypatch.undo()
    await journal.append("c", 1, payload(1))  # the journal still takes appends


# -- groups and segments ---------------------------------------------------------------------


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
    assert journal.segments() == []  # the first write opens one
    await journal.append("c", 1, payload(1))
    assert journal.segments() == ["journal-0000000001.log"]
    mark = await journal.mark()
    assert journal.segments() == ["journal-0000000001.log", "journal-0000000002.log"]
    await journal.append("c", 2, payload(2))
    await journal.trim(mark, {"c": 1})
    assert journal.segments() == ["journal-0000000002.log"]
    await journal.__aexit__(None, None, None)
    journal = await open_journal()
    assert journal.segments() == ["journal-0000000002.log"]
    assert await replayed(journal) == [payload(2)]
    await journal.trim(await journal.mark(), {})  # before recovered(): the segment stays
    assert journal.segments() == ["journal-0000000002.log"]
    journal.recovered()
    await journal.append("c", 3, payload(3))
    assert journal.segments() == ["journal-0000000002.log", "journal-0000000003.log"]


async def test_a_trim_removes_the_segments_it_knows_without_listing_the_directory(
    open_journal: OpenJournal, journal_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flusher trims up to 20 times a second, on the event loop: no directory listing
    there, and only this journal's segments go (recovered ones once released)."""
    await (await open_journal()).__aexit__(None, None, None)  # nothing written: no file
    (journal_dir / "journal-0000000001.log").write_bytes(SEGMENT_MAGIC)  # found at start
    journal = await open_journal()
    await replayed(journal)
    journal.recovered()
    await journal.append("c", 1, payload(1))  # opens segment 2
    marks = [await journal.mark() for _ in range(3)]  # segments 3, 4, 5
    (journal_dir / "notes.txt").write_text("an operator's file")

    def no_listing(self: Path) -> None:
        raise AssertionError(f"{self} was listed")

    monkeypatch.setattr(Path, "iterdir", no_listing)
    await journal.trim(marks[1], {"c": 1})  # below segment 4: 1, 2 and 3 go
    await journal.trim(marks[1], {"c": 1})  # again: nothing left to remove, nothing fails
    monkeypatch.undo()
    assert journal.segments() == ["journal-0000000004.log", "journal-0000000005.log"]
    assert (journal_dir / "notes.txt").exists()


async def test_a_trim_under_steady_appends_waits_only_for_those_made_before_it(
    open_journal: OpenJournal,
) -> None:
    """One record in flight at a time, as a conversation's appends under its lock: there is
    always a newer one, and the trim (the flusher's cycle) waited for them all, to the end."""
    journal = await open_journal()
    await journal.append("c", 0, payload(0))
    mark = await journal.mark()

    async def steady() -> None:
        for n in range(1, 501):
            await journal.append("c", n, payload(n))
            await asyncio.sleep(0)  # one pass of the loop, as the lock goes to the next appender

    appending = asyncio.create_task(steady())
    # The trim starts with a record queued, as the flusher's does under load.
    await until(lambda: journal.records_written >= 10 and bool(journal.stats()["queued"]))
    await journal.trim(mark, {"c": 0})
    written_by_then = journal.records_written
    await appending
    assert written_by_then < 20, written_by_then  # the group under way and the one queued
    assert journal.segments() == ["journal-0000000002.log"]


async def test_a_trim_waits_for_the_appends_made_before_it(open_journal: OpenJournal) -> None:
    journal = await open_journal()
    await journal.append("c", 0, payload(0))
    mark = await journal.mark()
    acks = [journal.append("c", n, payload(n)) for n in range(1, 4)]
    acks[0].cancel()  # an appender that stopped waiting: its record is written all the same
    await journal.trim(mark, {"c": 0})
    assert journal.records_written == 4
    assert all(ack.done() for ack in acks)


@pytest.mark.parametrize("flipped", [0, 2, 7])
async def test_a_damaged_segment_header_is_damage_not_an_older_format(
    open_journal: OpenJournal, written: Written, journal_dir: Path, flipped: int
) -> None:
    path = await written(3)
    flip(path, flipped)
    with pytest.raises(JournalDamaged, match=f"{path.name} bytes 0-8"):
        await (await open_journal()).replay()
    assert await replayed(await open_journal(recover_damaged=True)) == [
        payload(n) for n in range(3)
    ]


def test_damage_in_an_older_format_segment_is_kept_not_truncated() -> None:
    def legacy(data: bytes) -> bytes:
        return struct.pack("<II", len(data), zlib.crc32(data)) + data

    frames = [legacy(payload(n)) for n in range(3)]
    damaged = bytearray(b"".join(frames))
    damaged[len(frames[0]) + 10] ^= 0xFF  # inside the second frame, which fits whole
    found = scan(bytes(damaged), last=True)
    assert (len(found.frames), found.torn_at) == (1, None)
    assert found.damaged == [(len(frames[0]), len(damaged))]


async def test_the_segment_a_mark_retires_is_fsynced_too(
    journal_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its last writes are as recent as the new segment's: the 50 ms window holds for both."""
    synced: set[int] = set()
    retired_synced = asyncio.Event()
    retired: list[int] = []
    real_fsync = os.fsync

    def noting(fd: int) -> None:  # by inode: the syncer fsyncs through a copy of the fd
        real_fsync(fd)
        synced.add(os.fstat(fd).st_ino)
        if retired and retired[0] in synced:
            retired_synced.set()

    monkeypatch.setattr(os, "fsync", noting)
    async with FileJournal(journal_dir, fsync=0.01) as journal:
        await journal.append("c", 0, payload(0))
        retired.append(os.fstat(journal._fd).st_ino)
        await journal.mark()
        await journal.append("c", 1, payload(1))
        async with asyncio.timeout(10):  # a hang detector; the syncer runs every 10 ms
            await retired_synced.wait()


async def test_close_is_bounded_when_the_disk_stops_answering(
    journal_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    real_fsync = os.fsync

    def stuck(fd: int) -> None:
        release.wait(30)
        real_fsync(fd)

    journal = await FileJournal(journal_dir, fsync="always", close_timeout=0.2).__aenter__()
    monkeypatch.setattr(os, "fsync", stuck)
    try:
        append = asyncio.ensure_future(journal.append("c", 0, payload(0)))
        await until(lambda: bool(journal._writing))  # its group is in the (stuck) fsync
        async with asyncio.timeout(10):  # a hang detector, far above the 0.2 s bound
            await journal.__aexit__(None, None, None)
        with pytest.raises(JournalError):
            await append  # never acknowledged, and told so
    finally:
        release.set()


class HeldFsync:
    """An fsync that holds its first call until released, then notes which file each
    call reached (by inode) or the error it met."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.reached: list[int | OSError] = []
        self._finished = threading.Semaphore(0)  # one release per call that returned
        self._real = os.fsync

    def __call__(self, fd: int) -> None:
        if not self.entered.is_set():
            self.entered.set()
            self.release.wait(30)
        try:
            self.reached.append(os.fstat(fd).st_ino)
            self._real(fd)
        except OSError as exc:
            self.reached.append(exc)
            raise
        finally:
            self._finished.release()

    async def finished(self, calls: int) -> None:
        """Until `calls` calls have returned (a hang detector bounds each)."""
        for _ in range(calls):
            assert await asyncio.to_thread(self._finished.acquire, timeout=30)


async def retired_segment_in_fsync(
    journal: FileJournal, held: HeldFsync, journal_dir: Path
) -> tuple[object, int]:
    """Write to a segment, retire it with a mark, and return once the syncer's fsync of
    it is held: the mark and the retired segment's inode."""
    await journal.append("c", 0, payload(0))
    inode = (journal_dir / journal.segments()[-1]).stat().st_ino
    mark = await journal.mark()
    assert await asyncio.to_thread(held.entered.wait, 30)  # a hang detector
    return mark, inode


async def test_a_trim_during_an_fsync_closes_nothing_under_it(
    journal_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The syncer fsyncs the segment a mark retired; the trim that closes it does not wait
    for the disk, and the fsync still reaches that segment's file, never EBADF."""
    held = HeldFsync()
    monkeypatch.setattr(os, "fsync", held)
    async with FileJournal(journal_dir, fsync=0.001) as journal:
        try:
            mark, inode = await retired_segment_in_fsync(journal, held, journal_dir)
            async with asyncio.timeout(10):  # a hang detector: trim must not wait for it
                await journal.trim(mark, {"c": 0})
            assert journal.stats()["open_segments"] == 1
        finally:
            held.release.set()
        await held.finished(1)
    assert held.reached[0] == inode


async def test_a_close_during_an_fsync_closes_nothing_under_it(
    journal_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = HeldFsync()
    monkeypatch.setattr(os, "fsync", held)
    journal = await FileJournal(journal_dir, fsync=0.001).__aenter__()
    try:
        _, inode = await retired_segment_in_fsync(journal, held, journal_dir)
        await journal.__aexit__(None, None, None)
    finally:
        held.release.set()
    await held.finished(3)  # the held one, and close's two before it
    assert held.reached[-1] == inode  # the held one finished last, on its own file


async def test_a_segment_trimmed_while_the_syncer_works_is_skipped_not_fsynced_by_number(
    journal_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The syncer fsyncs one segment after another, awaiting each; a trim meanwhile
    closes those it stored. Their descriptor numbers were then dup'ed anyway: EBADF
    ("journal fsync failed", seen under load), or another file's by then."""
    loop = asyncio.get_running_loop()
    release, first_started, current_synced = threading.Event(), asyncio.Event(), asyncio.Event()
    synced: list[int] = []
    inodes: list[int] = []
    real_fsync = os.fsync

    def held(fd: int) -> None:  # the first fsync waits for the trim
        loop.call_soon_threadsafe(first_started.set)
        release.wait(10)
        real_fsync(fd)
        synced.append(os.fstat(fd).st_ino)
        if synced[-1] == inodes[2]:
            loop.call_soon_threadsafe(current_synced.set)

    async with FileJournal(journal_dir, fsync=3600) as journal:
        marks = []
        for seq in range(3):  # segments A, B and the current C, none fsynced yet
            await journal.append("c", seq, payload(seq))
            inodes.append(os.fstat(journal._fd).st_ino)
            if seq < 2:
                marks.append(await journal.mark())
        mark = marks[-1]
        monkeypatch.setattr(os, "fsync", held)
        journal._fsync_interval = 0.0
        syncer = asyncio.create_task(journal._syncer())
        async with asyncio.timeout(10):  # hang detectors
            await first_started.wait()
            await journal.trim(mark, {"c": 2})  # closes A (its fsync holds a copy) and B
            release.set()
            await current_synced.wait()
        syncer.cancel()
        await asyncio.gather(syncer, return_exceptions=True)
    assert inodes[1] not in synced
    assert "journal fsync failed" not in caplog.text


# -- found by review: what a damaged tail or header and a failed fsync do ------------------


async def test_a_torn_looking_last_frame_is_truncated_but_kept_aside(
    open_journal: OpenJournal, written: Written, journal_dir: Path
) -> None:
    """A bit flip raising the last frame's length makes it look cut short: it was
    truncated with no copy left, though it was written and fsynced whole."""
    path = await written(3)
    flip(path, offset_of(2) + 5)  # a high byte of its length: it now runs past the end
    journal = await open_journal()
    assert await replayed(journal) == [payload(0), payload(1)]
    assert path.stat().st_size == size_of(2)
    [kept] = (journal_dir / "damaged").iterdir()
    assert kept.read_bytes()[_HEADER.size :] == payload(2)


async def test_a_segment_whose_header_and_first_frame_are_zeroed_keeps_its_other_frames(
    open_journal: OpenJournal, written: Written
) -> None:
    """Zeroed sectors at the start: not this format's magic, so the older format's
    parser read it, stopped at offset 0 and lost every intact frame after."""
    path = await written(3)
    data = bytearray(path.read_bytes())
    data[: offset_of(1) - 2] = bytes(offset_of(1) - 2)
    path.write_bytes(bytes(data))
    journal = await open_journal(recover_damaged=True)
    assert await replayed(journal) == [payload(1), payload(2)]


async def test_after_a_failed_fsync_no_append_is_acknowledged(
    open_journal: OpenJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel reports a writeback error once: the next fsync "succeeds" over pages it
    dropped. Before, the failure was logged and appends went on being acknowledged."""
    journal = await open_journal()
    await journal.append("c", 1, payload(1))
    failed = asyncio.Event()

    def eio(fd: int) -> OSError:
        os.close(fd)
        failed.set()
        return OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(journal_file, "_sync_own", eio)
    await failed.wait()  # the syncer's next round
    await until(lambda: journal.stats()["fsync_failed"] is True)
    with pytest.raises(JournalError, match="fsync failed"):
        await journal.append("c", 2, payload(2))


async def test_a_torn_tail_before_a_segment_with_no_frame_is_still_a_torn_tail(
    open_journal: OpenJournal, written: Written, journal_dir: Path
) -> None:
    """A mark opened the next segment while the last group was being fsynced, and the
    power went: the torn tail is no longer in the last file, and a node refused to start
    without --recover-damaged."""
    path = await written(3)
    with path.open("ab") as f:
        f.write(frame(b"cut short")[:-3])
    (journal_dir / "journal-0000000002.log").write_bytes(SEGMENT_MAGIC)
    journal = await open_journal()
    assert await replayed(journal) == [payload(n) for n in range(3)]
    assert path.stat().st_size == size_of(3)


async def test_a_failed_write_that_cannot_be_cut_back_stops_the_acknowledgements(
    open_journal: OpenJournal, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The failed group stays in the segment, answered as failed: a replay would apply it
    under a seq the next activation hands out again, superseding an acknowledged one."""
    journal = await open_journal()
    await journal.append("c", 1, payload(1))
    fd, write, ftruncate = journal._fd, os.write, os.ftruncate

    def full(target: int, data: Any) -> int:
        if target == fd:
            write(target, bytes(data)[:7])  # part of it landed
            raise OSError(errno.ENOSPC, "No space left on device")
        return write(target, data)

    def stuck(target: int, length: int) -> None:
        if target == fd:
            raise OSError(errno.EIO, "Input/output error")
        ftruncate(target, length)

    monkeypatch.setattr(os, "write", full)
    monkeypatch.setattr(os, "ftruncate", stuck)
    with pytest.raises(JournalError):
        await journal.append("c", 2, payload(2))
    monkeypatch.undo()
    with pytest.raises(JournalError, match="could not be cut back"):
        await journal.append("c", 2, payload(2))


async def test_a_last_group_whose_later_pages_are_zeros_is_a_torn_tail(
    open_journal: OpenJournal, written: Written
) -> None:
    """The file's new size reached the disk before all of the group's pages: a frame's
    first part, then zeros to the end. It never completed; before, it read as damage
    and the node refused to start without --recover-damaged."""
    path = await written(3)
    partial = frame(b"y" * 600)
    with path.open("ab") as f:
        f.write(partial[:300] + bytes(len(partial) - 300) + bytes(len(frame(b"z" * 50))))
    journal = await open_journal()
    assert await replayed(journal) == [payload(n) for n in range(3)]
    assert path.stat().st_size == size_of(3)
