"""The data directory belongs to one process at a time: an exclusive flock held until exit.

Taken before anything in the directory is opened, so a second `canopy` on a live
node's directory refuses before it could replay, flush or trim the live journal. The
kernel drops the lock when the process dies, however it dies: no stale lock files.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_FILE = ".lock"


class DataDirLocked(Exception):
    """Another process holds the data directory."""


class DataDirLock:
    """`with DataDirLock(path):` (or `async with`) holds the directory exclusively."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._fd = -1

    def acquire(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirLocked(
                f"data dir {self.directory} is in use by another canopy process (pid {holder}); "
                "stop it first, or give this one another --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing drops the flock
            self._fd = -1

    def __enter__(self) -> DataDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    async def __aenter__(self) -> DataDirLock:
        return self.__enter__()

    async def __aexit__(self, *exc: object) -> None:
        self.release()
