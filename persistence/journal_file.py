"""The embedded journal: append-only segment files of length + CRC framed records.

Appends made in one event-loop tick are written with one `write()` (group commit).
In the default mode a record is durable against a process crash once `write()`
returns (it is in the OS page cache) and fsync runs on an interval; with
`fsync="always"` each group is fsynced before its appenders are released.

Trimming is by segment: `mark()` starts a new segment, and `trim()` deletes the
segments before it once the flusher has stored everything they hold.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path

from persistence.journal import JournalError

log = logging.getLogger(__name__)

_HEADER = struct.Struct("<II")  # payload length, crc32 of payload
_SEGMENT = re.compile(r"^journal-(\d{10})\.log$")


def _segment_name(index: int) -> str:
    return f"journal-{index:010d}.log"


def read_frames(data: bytes) -> tuple[list[bytes], int]:
    """Decode frames from `data`; returns the payloads and the offset where valid data ends."""
    payloads: list[bytes] = []
    offset, size = 0, len(data)
    while offset + _HEADER.size <= size:
        length, crc = _HEADER.unpack_from(data, offset)
        start = offset + _HEADER.size
        end = start + length
        # Records are never empty: a zero length is a zero-filled (torn) tail.
        if not length or end > size or zlib.crc32(data[start:end]) != crc:
            break  # a torn or corrupt tail: everything after it is unacknowledged
        payloads.append(data[start:end])
        offset = end
    return payloads, offset


def frame(payload: bytes) -> bytes:
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


class FileJournal:
    """Journal backend over segment files in one directory (see module docstring)."""

    def __init__(self, directory: Path, *, fsync: str | float = 0.05) -> None:
        self._dir = directory
        self._fsync_always = fsync == "always"
        self._fsync_interval = 0.05 if self._fsync_always else float(fsync)
        self._fd = -1
        self._index = 0
        self._recovered: list[int] = []  # segments present at start-up, oldest first
        self._open_fds: dict[int, int] = {}  # segment index -> fd, for the current and retired
        self._frames: list[bytes] = []
        # One future per appender, not one per group: an appender that stops waiting
        # (cancelled) must not cancel its group-mates' acks or the writer.
        self._waiters: list[asyncio.Future[None]] = []
        self._wake = asyncio.Event()
        self._unsynced = False
        self._tasks: list[asyncio.Task[None]] = []
        self.records_written = 0

    async def __aenter__(self) -> FileJournal:
        self._dir.mkdir(parents=True, exist_ok=True)
        self._recovered = sorted(
            int(m.group(1)) for p in self._dir.iterdir() if (m := _SEGMENT.match(p.name))
        )
        self._open_segment((self._recovered[-1] if self._recovered else 0) + 1)
        self._tasks = [asyncio.create_task(self._writer(), name="journal-writer")]
        if not self._fsync_always:
            self._tasks.append(asyncio.create_task(self._syncer(), name="journal-fsync"))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._drain()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for fd in self._open_fds.values():
            os.fsync(fd)
            os.close(fd)
        self._open_fds.clear()

    async def acquire(self, conversation_id: str) -> None:
        """A file journal has one owner, this node: nothing to fence."""

    def release(self, conversation_id: str) -> None:
        pass

    def append(self, conversation_id: str, seq: int, payload: bytes) -> asyncio.Future[None]:
        self._frames.append(frame(payload))
        if not self._waiters:
            self._wake.set()
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return waiter

    async def replay(self) -> list[bytes]:
        payloads: list[bytes] = []
        for position, index in enumerate(self._recovered):
            path = self._dir / _segment_name(index)
            data = path.read_bytes()
            found, valid = read_frames(data)
            if valid < len(data):
                last = position == len(self._recovered) - 1
                log.warning(
                    "journal %s: %d bytes after offset %d are torn; %s",
                    path.name,
                    len(data) - valid,
                    valid,
                    "truncating" if last else "older segment is damaged",
                )
                if last:
                    os.truncate(path, valid)
            payloads.extend(found)
        return payloads

    async def tail(self, conversation_id: str, after_seq: int) -> list[bytes]:
        # The file journal belongs to one node, which replays all of it before serving;
        # an actor activated later finds everything already in the Store.
        return []

    async def mark(self) -> object:
        self._open_segment(self._index + 1)
        return self._index

    async def trim(self, mark: object, flushed: Mapping[str, int]) -> None:
        assert isinstance(mark, int)
        await self._drain()
        for index in sorted(self._open_fds):
            if index < mark:
                fd = self._open_fds.pop(index)
                os.close(fd)
        for path in self._dir.iterdir():
            found = _SEGMENT.match(path.name)
            if found and int(found.group(1)) < mark:
                path.unlink(missing_ok=True)
        self._recovered = [i for i in self._recovered if i >= mark]

    def segments(self) -> list[str]:
        """Names of the segment files on disk, oldest first (for tests and the admin page)."""
        return sorted(p.name for p in self._dir.iterdir() if _SEGMENT.match(p.name))

    def _open_segment(self, index: int) -> None:
        path = self._dir / _segment_name(index)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._open_fds[index] = self._fd
        self._index = index

    async def _drain(self) -> None:
        while self._waiters:
            await asyncio.wait([self._waiters[-1]])

    async def _writer(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._frames:
                frames, waiters = self._frames, self._waiters
                self._frames, self._waiters = [], []
                try:
                    data = b"".join(frames)
                    view = memoryview(data)
                    while view:
                        view = view[os.write(self._fd, view) :]
                    if self._fsync_always:
                        await loop.run_in_executor(None, os.fsync, self._fd)
                    else:
                        self._unsynced = True
                except OSError as exc:
                    failure = JournalError(f"journal write failed: {exc}")
                    for waiter in waiters:
                        if not waiter.done():
                            waiter.set_exception(failure)
                    continue
                self.records_written += len(frames)
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)

    async def _syncer(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._fsync_interval)
            if self._unsynced:
                self._unsynced = False
                try:
                    await loop.run_in_executor(None, os.fsync, self._fd)
                except OSError:
                    log.exception("journal fsync failed")
