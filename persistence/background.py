"""What every owned background loop uses to survive its own failures, and to stop.

A loop that dies stops its job for good, silently (a flusher that dies leaves every
later write answering 503). So each loop catches what one step raises, logs it
through a `Throttled` logger (one line per interval, with a count, never a traceback
storm), waits a `Backoff` delay and goes on. A close that must call something that can
block for ever (a driver's shutdown, an fsync on a dying disk) calls it `within` a
deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class Throttled:
    """Logs one warning per `every` seconds per key, counting the ones it held back."""

    def __init__(self, logger: logging.Logger, every: float = 10.0) -> None:
        self._log = logger
        self._every = every
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warning(self, key: str, message: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._every:
            self._held[key] = self._held.get(key, 0) + 1
            return
        self._last[key] = now
        held = self._held.pop(key, 0)
        suffix = f" ({held} more like it since the last report)" if held else ""
        self._log.warning(message + suffix, *args)


class Backoff:
    """Exponential delays with jitter, from `initial` up to `maximum`; reset on success."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = maximum
        self.failures = 0

    def failed(self) -> float:
        """Count one more failure; the delay to wait before the next attempt."""
        self.failures += 1
        return self.delay()

    def delay(self) -> float:
        return backoff_delay(self.failures, self.initial, self.maximum)

    def succeeded(self) -> None:
        self.failures = 0


def backoff_delay(failures: int, initial: float, maximum: float) -> float:
    """The wait after `failures` consecutive failures: doubling from `initial`, jittered."""
    if not failures:
        return initial
    delay = initial * 2.0 ** min(failures, 16)
    jitter: float = random.uniform(0.5, 1.0)
    return min(maximum, delay) * jitter


async def within(seconds: float, blocking: Callable[[], object], what: str) -> bool:
    """Run a blocking call in a daemon thread and wait for it at most `seconds`; False if
    it did not finish in time (it is left to finish on its own).

    Not the loop's executor: a call stuck there would hang the loop's close (and the
    process exit) on joining its thread; a daemon thread is simply left behind.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def run() -> None:
        try:
            blocking()
        except Exception:
            log.exception("%s failed", what)
        finally:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(_settle, done)

    threading.Thread(target=run, name=what, daemon=True).start()
    try:
        async with asyncio.timeout(seconds):
            await done
    except TimeoutError:
        log.warning("%s did not finish within %.0f s; left to finish on its own", what, seconds)
        return False
    return True


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():  # not given up on
        future.set_result(None)


RECANCEL = 0.05  # seconds between cancels of a task that has not ended yet


async def stop(task: asyncio.Task[Any] | None, seconds: float = 5.0) -> bool:
    """Cancel `task` and wait until it ends, at most `seconds`; False if it did not (it
    is left behind, logged). A cancel that a library swallowed is sent again: redis-py
    swallows one that lands mid-command when a socket timeout is set (all its versions
    we tried; 8.x even without one), and the loop calling it would beat on for ever."""
    if task is None:
        return True
    deadline = asyncio.get_running_loop().time() + seconds
    while not task.done():
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            log.warning("%s did not stop within %.0f s; left behind", task.get_name(), seconds)
            return False
        task.cancel()
        await asyncio.wait([task], timeout=min(RECANCEL, left))
    if not task.cancelled():
        task.exception()  # retrieved: a task that failed was logged where it ran
    return True
