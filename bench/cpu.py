"""CPU counters of processes and of the machine, from /proc (Linux)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (which may hold spaces)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all threads."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / TICK


def children(pid: int) -> list[int]:
    """The live child processes of `pid`, from every thread's children list."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found += [int(child) for child in (task / "children").read_text().split()]
    return found


def tree_cpu_seconds(pids: Iterable[int]) -> float:
    """CPU time of `pids` and all their descendants (e.g. a flusher process a node
    started), utime + stime of each plus the children it has reaped (cutime + cstime),
    so a descendant that exits between two readings is still counted. A process that
    is gone counts nothing."""
    total, seen, todo = 0.0, set(), list(pids)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = _stat(pid)
            total += sum(int(fields[i]) for i in (11, 12, 13, 14)) / TICK
        todo += children(pid)
    return total


def machine_cpu_seconds() -> float:
    """Busy CPU time of the whole machine, every core (user, nice, system, irq, softirq, steal)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    busy = sum(int(fields[i]) for i in (0, 1, 2, 5, 6, 7))
    return busy / TICK


QUIET_CORES = 0.3  # the machine's busy CPU, in cores, under which it counts as quiet
WINDOW = 0.1  # seconds of each reading


async def settle(
    seconds: float,
    *,
    quiet_cores: float = QUIET_CORES,
    window: float = WINDOW,
    busy: Callable[[], float] = machine_cpu_seconds,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> int:
    """Wait, at most `seconds` (in readings of `window`), until the machine has been
    quiet for one reading: what the last measured load left to do (a flusher child's
    write-behind, Cassandra's memtables and compactions) is done or has had its time.
    The readings taken."""
    readings = max(1, math.ceil(seconds / window))
    for taken in range(1, readings + 1):
        before = busy()
        await sleep(window)
        if (busy() - before) / window < quiet_cores:
            return taken
    return readings
