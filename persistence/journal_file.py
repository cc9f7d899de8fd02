"""The embedded journal: append-only segment files of magic + length + CRC framed records.

Appends made in one event-loop tick are written with one `write()` (group commit).
In the default mode a record is durable against a process crash once `write()`
returns (it is in the OS page cache) and fsync runs on an interval; with
`fsync="always"` each group is fsynced before its appenders are released.

Trimming is by segment: `mark()` starts a new segment, and `trim()` deletes the
segments before it once the flusher has stored everything they hold.

Recovery never discards a valid record. Every frame starts with a magic word and its
CRC covers its length, so after damage the reader resynchronises at the next frame
that checks out. Only a torn tail (the last write of the last segment cut short, or
zeros a power loss left) is truncated; damage anywhere else stops recovery with
`JournalDamaged` unless the journal was opened with `recover_damaged`, and then the
damaged segment is copied into `damaged/` before anything else happens.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import struct
import time
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from persistence.background import Throttled, within
from persistence.journal import Entry, JournalDamaged, JournalError
from persistence.latency import Histogram

log = logging.getLogger(__name__)
throttled = Throttled(log)

SEGMENT_MAGIC = b"CNPYJRN2"  # first bytes of every segment in this format
FRAME_MAGIC = b"\xf0\x9f\x8c\xb3"
_HEADER = struct.Struct("<4sII")  # magic, payload length, crc32 of (length, payload)
_LENGTH = struct.Struct("<I")
_LEGACY_HEADER = struct.Struct("<II")  # before the magic words: length, crc32 of payload
_SEGMENT = re.compile(r"^journal-(\d{10})\.log$")
DAMAGED = "damaged"  # sub-directory: copies of damaged segments, records set aside


def _segment_name(index: int) -> str:
    return f"journal-{index:010d}.log"


def _crc(length: int, payload: bytes | memoryview) -> int:
    return zlib.crc32(payload, zlib.crc32(_LENGTH.pack(length)))


def frame(payload: bytes) -> bytes:
    return _HEADER.pack(FRAME_MAGIC, len(payload), _crc(len(payload), payload)) + payload


class Scan(NamedTuple):
    """What one segment holds: intact frames, damaged ranges, and where a torn tail starts."""

    frames: list[tuple[int, bytes]]  # (offset, payload)
    damaged: list[tuple[int, int]]  # [start, end) byte ranges that are not intact frames
    torn_at: int | None  # offset of a torn tail (cut short or zeroed), if any


def _frame_at(data: bytes, offset: int) -> bytes | None:
    if offset + _HEADER.size > len(data):
        return None
    magic, length, crc = _HEADER.unpack_from(data, offset)
    start = offset + _HEADER.size
    end = start + length
    if magic != FRAME_MAGIC or not length or end > len(data):
        return None
    payload = data[start:end]
    return payload if _crc(length, payload) == crc else None


def _next_frame(data: bytes, position: int) -> int | None:
    """Offset of the next intact frame at or after `position`."""
    while (found := data.find(FRAME_MAGIC, position)) >= 0:
        if _frame_at(data, found) is not None:
            return found
        position = found + 1
    return None


def _looks_torn(tail: bytes) -> bool:
    """A write cut short leaves a prefix of one frame; a power loss may leave zeros."""
    if not tail.strip(b"\x00"):
        return True
    if len(tail) < _HEADER.size:
        return bool(FRAME_MAGIC.startswith(tail[: len(FRAME_MAGIC)]))
    magic, length, _ = _HEADER.unpack_from(tail)
    if magic != FRAME_MAGIC:
        return False
    # Cut short, or its file's size persisted before all of its pages (zeros from inside
    # the frame to the end): either way its write never completed.
    return bool(_HEADER.size + length > len(tail.rstrip(b"\x00")))


def scan(data: bytes, *, last: bool) -> Scan:
    """Read a segment: every intact frame, resynchronising past damage."""
    offset = len(SEGMENT_MAGIC)
    damaged: list[tuple[int, int]] = []
    if not data.startswith(SEGMENT_MAGIC):
        if not data or SEGMENT_MAGIC.startswith(data):
            return Scan([], [], 0 if data else None)  # created, header cut short
        if not data.startswith(FRAME_MAGIC, offset):
            # A damaged header, and its first frame too (zeroed sectors), or a segment of
            # the older format: an intact frame of this format anywhere says which.
            first = _next_frame(data, 0)
            if first is None:
                return _scan_legacy(data, last=last)
            offset = first
        damaged.append((0, offset))  # a damaged header before this format's first frame
    frames: list[tuple[int, bytes]] = []
    while offset < len(data):
        payload = _frame_at(data, offset)
        if payload is not None:
            frames.append((offset, payload))
            offset += _HEADER.size + len(payload)
            continue
        resume = _next_frame(data, offset + 1)
        if resume is None:
            break
        damaged.append((offset, resume))
        offset = resume
    if offset < len(data):
        if last and _looks_torn(data[offset:]):
            return Scan(frames, damaged, offset)
        damaged.append((offset, len(data)))
    return Scan(frames, damaged, None)


def _scan_legacy(data: bytes, *, last: bool) -> Scan:
    """Segments written before the magic words: no resynchronisation is possible."""
    frames: list[tuple[int, bytes]] = []
    offset = 0
    while offset + _LEGACY_HEADER.size <= len(data):
        length, crc = _LEGACY_HEADER.unpack_from(data, offset)
        start, end = offset + _LEGACY_HEADER.size, offset + _LEGACY_HEADER.size + length
        if not length or end > len(data) or zlib.crc32(data[start:end]) != crc:
            break
        frames.append((offset, data[start:end]))
        offset = end
    if offset == len(data):
        return Scan(frames, [], None)
    if last and _legacy_torn(data[offset:]):
        return Scan(frames, [], offset)
    return Scan(frames, [(offset, len(data))], None)


def _legacy_torn(tail: bytes) -> bool:
    """Zeros, or one frame cut short; anything else is damage, kept."""
    if not tail.strip(b"\x00") or len(tail) < _LEGACY_HEADER.size:
        return True
    length, _ = _LEGACY_HEADER.unpack_from(tail)
    return bool(_LEGACY_HEADER.size + length > len(tail))


class _Mark(NamedTuple):
    """A checkpoint: segments below `segment` hold only what was dirty when it was taken."""

    segment: int
    after_recovery: bool  # every recovered record was dirty by then: they may go too


class FileJournal:
    """Journal backend over segment files in one directory (see module docstring)."""

    def __init__(
        self,
        directory: Path,
        *,
        fsync: str | float = 0.05,
        recover_damaged: bool = False,
        close_timeout: float = 10.0,
    ) -> None:
        self._dir = directory
        self._fsync_always = fsync == "always"
        self._fsync_interval = 0.05 if self._fsync_always else float(fsync)
        self._close_timeout = close_timeout
        self._recover_damaged = recover_damaged
        self._fd = -1
        self._index = 0
        self._size = 0  # bytes in the current segment: a failed write is cut back to it
        self._recovered: list[int] = []  # segments present at start-up, oldest first
        # The recovered segments may be trimmed only by a mark taken after `recovered()`:
        # an earlier mark knew nothing of their records (a refused or failed recovery,
        # or conversations not yet loaded when the flusher's cycle marked). A mark says
        # which it was itself: with nothing written yet, one taken before `recovered()`
        # and one after have the same segment number.
        self._recovery_done = False
        self._open_fds: dict[int, int] = {}  # segment index -> fd, for the current and retired
        # Every segment file this journal knows on disk: a trim removes from it without
        # listing the directory (a flusher cycle trims up to 20 times a second, and a
        # listing on the event loop cost ~1 ms there: docs/decisions.md).
        self._on_disk: set[int] = set()
        self._frames: list[bytes] = []
        # One future per appender, not one per group: an appender that stops waiting
        # (cancelled) must not cancel its group-mates' acks or the writer.
        self._waiters: list[asyncio.Future[None]] = []
        self._wake = asyncio.Event()
        self._writing: list[asyncio.Future[None]] = []  # the waiters of the group in write()
        # Drains waiting for the queued group, and for the group in write() (None: no write
        # under way): resolved once it is written or failed. Not an appender's future,
        # which may be cancelled before its record is written.
        self._drains: list[asyncio.Future[None]] = []
        self._drains_writing: list[asyncio.Future[None]] | None = None
        self._unsynced: set[int] = set()  # segments written since their last fsync
        self._broken: JournalError | None = None  # an fsync failed: nothing more is acknowledged
        self._tasks: list[asyncio.Task[None]] = []
        self.records_written = 0
        self.damaged_bytes = 0
        self.set_aside_records = 0
        self.append_seconds = Histogram()  # one group write (and its fsync, if always)

    async def __aenter__(self) -> FileJournal:
        self._dir.mkdir(parents=True, exist_ok=True)
        self._recovered = sorted(
            int(m.group(1)) for p in self._dir.iterdir() if (m := _SEGMENT.match(p.name))
        )
        self._on_disk = set(self._recovered)
        # The first write or mark opens the next segment: a refused recovery adds no file.
        self._index = self._recovered[-1] if self._recovered else 0
        self._tasks = [asyncio.create_task(self._writer(), name="journal-writer")]
        if not self._fsync_always:
            self._tasks.append(asyncio.create_task(self._syncer(), name="journal-fsync"))
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            async with asyncio.timeout(self._close_timeout):
                await self._drain()
        except TimeoutError:
            log.warning("journal closed with appends still waiting for the disk")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        fds, self._open_fds = list(self._open_fds.values()), {}

        def sync_and_close() -> None:
            for fd in fds:
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

        await within(self._close_timeout, sync_and_close, "journal fsync at close")

    async def acquire(self, conversation_id: str) -> None:
        """A file journal has one owner, this node: nothing to fence."""

    def release(self, conversation_id: str) -> None:
        pass

    def epoch(self, conversation_id: str) -> int:
        return 0  # one process owns the data dir: nothing to fence

    def append(self, conversation_id: str, seq: int, payload: bytes) -> asyncio.Future[None]:
        waiter = asyncio.get_running_loop().create_future()
        if self._broken is not None:
            waiter.set_exception(self._broken)
            return waiter
        self._frames.append(frame(payload))
        if not self._waiters:
            self._wake.set()
        self._waiters.append(waiter)
        return waiter

    async def replay(self) -> list[Entry]:
        """Every intact record of the segments found at start-up, oldest first.

        Reads everything before changing anything: with damage and no permission to
        recover past it, JournalDamaged leaves every file as it was.
        """
        contents = [(self._dir / _segment_name(i)).read_bytes() for i in self._recovered]
        # The last segment written to: those after it hold no frame (a mark opened them
        # while its group was being fsynced, and the power went), so its tail may be torn.
        written = [k for k, data in enumerate(contents) if len(data) > len(SEGMENT_MAGIC)]
        last = written[-1] if written else len(contents) - 1
        scans = []
        for position, (index, data) in enumerate(zip(self._recovered, contents, strict=True)):
            scans.append((_segment_name(index), scan(data, last=position >= last), len(data)))
        damage = [(name, found.damaged) for name, found, _ in scans if found.damaged]
        if damage:
            self._keep_damaged(damage)
        entries: list[Entry] = []
        for name, found, size in scans:
            if found.torn_at is not None:
                kept = self._keep_torn(name, found.torn_at)
                log.warning("journal %s: %d torn bytes after offset %d truncated (kept in %s)",
                            name, size - found.torn_at, found.torn_at, kept)  # fmt: skip
                os.truncate(self._dir / name, found.torn_at)
            entries += (Entry(payload, f"{name}@{offset}") for offset, payload in found.frames)
        return entries

    def _keep_torn(self, name: str, offset: int) -> Path:
        """A copy of the bytes a torn tail's truncation removes. What looks torn is a
        frame cut short or zeros, but a bit flip in the last frame's length looks so too:
        its record stays on disk for an operator to read (`canopy journal` tools)."""
        aside = self._dir / DAMAGED
        aside.mkdir(exist_ok=True)
        path = aside / f"{name}.torn-at-{offset}"
        with (self._dir / name).open("rb") as source, path.open("wb") as out:
            source.seek(offset)
            shutil.copyfileobj(source, out)
            out.flush()
            os.fsync(out.fileno())
        _fsync_dir(aside)
        return path

    def _keep_damaged(self, damage: list[tuple[str, list[tuple[int, int]]]]) -> None:
        ranges = "; ".join(
            f"{name} bytes {', '.join(f'{a}-{b}' for a, b in spans)}" for name, spans in damage
        )
        if not self._recover_damaged:
            raise JournalDamaged(
                f"journal {self._dir} is damaged before its tail ({ranges}); nothing was "
                "changed. Start with --recover-damaged to replay every intact record; the "
                f"damaged segments are then kept in {self._dir / DAMAGED}"
            )
        aside = self._dir / DAMAGED
        aside.mkdir(exist_ok=True)
        for name, spans in damage:
            shutil.copy2(self._dir / name, aside / name)
            with (aside / name).open("rb") as copy:
                os.fsync(copy.fileno())  # the copy outlives the segment: a trim removes it
            self.damaged_bytes += sum(b - a for a, b in spans)
        _fsync_dir(aside)
        log.error("journal damaged before its tail, recovering every intact record: %s; "
                  "damaged segments copied to %s", ranges, aside)  # fmt: skip

    async def tail(self, conversation_id: str, after_seq: int) -> list[Entry]:
        # The file journal belongs to one node, which replays all of it before serving;
        # an actor activated later finds everything already in the Store.
        return []

    async def set_aside(self, entry: Entry, reason: str) -> None:
        """Append the record to `damaged/set-aside.log` (same framing), which trim never
        touches, so an operator can inspect or replay it."""
        aside = self._dir / DAMAGED
        aside.mkdir(exist_ok=True)
        path = aside / "set-aside.log"
        with path.open("ab") as out:
            if not out.tell():
                out.write(SEGMENT_MAGIC)
            out.write(frame(entry.payload))
            out.flush()
            os.fsync(out.fileno())
        self.set_aside_records += 1
        log.error("journal record at %s set aside in %s: %s", entry.origin, path, reason)

    def recovered(self) -> None:
        self._recovery_done = True

    async def mark(self) -> object:
        if self._fd < 0:  # nothing written this run: the next write opens the next segment
            handle = self._index + 1
        else:
            try:
                self._open_segment(self._index + 1)
            except OSError as exc:
                raise JournalError(f"cannot start a journal segment: {exc}") from exc
            handle = self._index
        return _Mark(handle, after_recovery=self._recovery_done)

    async def trim(self, handle: object, flushed: Mapping[str, int]) -> None:
        assert isinstance(handle, _Mark)
        await self._drain()
        mark, released = handle.segment, handle.after_recovery
        kept = set() if released else set(self._recovered)
        try:
            for index in sorted(self._open_fds):
                if index < mark:  # what it holds is stored: no fsync owed
                    fd = self._open_fds.pop(index)
                    self._unsynced.discard(index)
                    os.close(fd)  # an fsync under way holds its own copy (`_fsync`)
            for index in sorted(i for i in self._on_disk if i < mark and i not in kept):
                (self._dir / _segment_name(index)).unlink(missing_ok=True)
                self._on_disk.discard(index)
        except OSError as exc:
            raise JournalError(f"journal trim failed: {exc}") from exc
        if released:
            self._recovered = [i for i in self._recovered if i >= mark]

    def segments(self) -> list[str]:
        """Names of the segment files on disk, oldest first (for tests and the admin page)."""
        return sorted(p.name for p in self._dir.iterdir() if _SEGMENT.match(p.name))

    def stats(self) -> dict[str, object]:
        return {
            "kind": "file",
            "segment": self._index,
            "open_segments": len(self._open_fds),
            "records_written": self.records_written,
            "queued": len(self._frames),
            "damaged_bytes": self.damaged_bytes,
            "set_aside_records": self.set_aside_records,
            "fsync_failed": self._broken is not None,
            "append_seconds": self.append_seconds.snapshot(),
        }

    def _open_segment(self, index: int) -> None:
        path = self._dir / _segment_name(index)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            size = os.fstat(fd).st_size
            if not size:
                os.write(fd, SEGMENT_MAGIC)
                size = len(SEGMENT_MAGIC)
        except OSError:
            os.close(fd)
            raise
        self._fd, self._size, self._index = fd, size, index
        self._open_fds[index] = fd
        self._on_disk.add(index)

    async def _drain(self) -> None:
        """Until every append made so far, the group being written included, is settled
        (written or failed). Appends made meanwhile are not waited for: under steady
        appends there is always a newer one, and a drain that waited for those too
        spun through them (two `asyncio.wait`s an append) and held the flusher's trim,
        and with it the write-behind cycle, until the load stopped."""
        drains = self._drains if self._frames else self._drains_writing
        if drains is None:
            return
        drained = asyncio.get_running_loop().create_future()
        drains.append(drained)
        await drained

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._frames:
                frames, waiters, drains = self._frames, self._waiters, self._drains
                self._frames, self._waiters, self._drains = [], [], []
                self._writing, self._drains_writing = waiters, drains
                started = time.perf_counter()
                try:
                    await self._write(b"".join(frames))
                except BaseException as exc:  # the writer outlives any failure but its cancel
                    failure = JournalError(f"journal write failed: {exc!r}")
                    for waiter in waiters:
                        if not waiter.done():
                            waiter.set_exception(failure)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                finally:
                    self._writing, self._drains_writing = [], None
                    for drained in drains:
                        if not drained.done():
                            drained.set_result(None)
                self.append_seconds.observe(time.perf_counter() - started)
                self.records_written += len(frames)
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)

    async def _write(self, data: bytes) -> None:
        """Write one group; on failure cut the segment back so no partial frame stays."""
        if self._fd < 0:
            self._open_segment(self._index + 1)
        fd, before, index = self._fd, self._size, self._index
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if self._fsync_always:
                await _fsync(fd)
        except OSError:
            try:
                os.ftruncate(fd, before)
            except OSError as exc:
                # Part of the failed group, or all of it, stays in the segment: a record
                # answered as failed that a replay would apply, under a seq the next
                # activation hands out again. Acknowledge nothing more on top of it.
                self._broken = JournalError(
                    f"journal write failed and could not be cut back ({exc}); appends "
                    "refused until a restart replays what is on disk"
                )
                log.exception("journal: cannot cut back a failed write")
            raise
        if fd == self._fd:
            self._size = before + len(data)
        if not self._fsync_always:
            self._unsynced.add(index)

    async def _syncer(self) -> None:
        """fsync every descriptor written since its last fsync, the segment a mark just
        retired included (its last writes are as recent as the current one's)."""
        while True:
            await asyncio.sleep(self._fsync_interval)
            indices, self._unsynced = self._unsynced, set()
            for index in sorted(indices):
                # Looked up after each await: a trim meanwhile closed what it stored (no
                # fsync owed), and its number may be another file's by now (EBADF).
                fd = self._open_fds.get(index)
                if fd is None:
                    continue
                try:
                    await _fsync(fd)
                except OSError as exc:
                    # The kernel reports a writeback error once and may drop the pages:
                    # a later fsync "succeeds" over records that never reached the disk.
                    # Acknowledging more on such a disk would lose them too.
                    self._broken = JournalError(
                        f"journal fsync failed ({exc}); appends refused until a restart "
                        "replays what is on disk"
                    )
                    log.error("%s", self._broken)
                    return


def _fsync_dir(path: Path) -> None:
    """fsync a directory: the names created or removed in it are on disk after."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def _fsync(fd: int) -> None:
    """fsync `fd` in the executor through a duplicate the thread owns and closes.

    A trim or close may close `fd` while the thread runs (or before it starts): the
    duplicate keeps the file open, so the fsync never meets a closed or reused number
    (EBADF under load). Shielded: a cancelled caller leaves the thread to finish and
    close its copy instead of leaking it.
    """
    own = os.dup(fd)  # in the loop's thread: `fd` is open now
    failure = await asyncio.shield(asyncio.get_running_loop().run_in_executor(None, _sync_own, own))
    if failure is not None:
        raise failure


def _sync_own(fd: int) -> OSError | None:
    """fsync then close a descriptor this thread owns; the failure is returned, so a
    caller that stopped waiting leaves no unretrieved exception behind."""
    try:
        os.fsync(fd)
    except OSError as exc:
        return exc
    finally:
        os.close(fd)
    return None
