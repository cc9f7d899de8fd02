"""Waiting for background work without wall-clock sleeps as synchronization."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

# A condition that waits on real I/O (a thread's SQLite read, a socket) can need more
# loop turns than `ticks` on a loaded CI machine: past them, poll until this deadline.
DEADLINE_SECONDS = 60.0
POLL_SECONDS = 0.002


async def until(condition: Callable[[], bool], ticks: int = 1000) -> None:
    """Yield to the event loop until `condition` holds: `ticks` bare turns first (work
    inside the loop), then polls up to a deadline (work outside it). The condition is
    what synchronizes; the deadline only bounds a test that would otherwise hang."""
    for _ in range(ticks):
        if condition():
            return
        await asyncio.sleep(0)
    deadline = time.monotonic() + DEADLINE_SECONDS
    while time.monotonic() < deadline:
        if condition():
            return
        await asyncio.sleep(POLL_SECONDS)
    raise AssertionError("condition never held")
