"""Waiting for background work without wall-clock sleeps."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def until(condition: Callable[[], bool], ticks: int = 1000) -> None:
    """Yield to the event loop until `condition` holds (bounded, no wall-clock sleep)."""
    for _ in range(ticks):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")
