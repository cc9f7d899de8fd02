"""The serving loop polls for a moment instead of sleeping, when I/O is due soon.

On a virtual machine, waking a vCPU that went idle is expensive: a pipe ping-pong
between two processes on two cores took 64 µs and ~25 µs of CPU on each side per round
trip here, and 3 µs with either side polling (docs/decisions.md). A request at
concurrency 1 pays that sleep and wake-up at every hop: the client's request, the
journal's Redis reply, the client's next request after the answer.

So every request's bytes, answer and Redis command `poke` the poll, and for `window`
seconds after the last poke the loop keeps a callback ready, which makes it poll its
sockets with no timeout rather than sleep. The window adapts as the guest kernel's
haltpoll governor does: when the next poke comes after the window ran out but within
`max_window` (a longer poll would have caught it) it doubles; when it comes later
than that (polling was wasted) it halves, to nothing. An idle node never polls, a
saturated one never sleeps anyway, and between them the polling costs at most one
window per request.

A polling core never goes idle, so the kernel hands it no task waiting for a CPU
elsewhere, and on a small machine that is the node's own write-behind: its flusher
process or store thread, the store and Redis. Forks of 1,000 messages back to back (each
~500 KB to write behind) had their p99 at 10-28 ms polling against 5-8 ms not. So the loop
polls only while the write-behind is not behind (`yield_to`: less than BACKLOG_BYTES
unflushed), asked as a window opens and every CHECK_SECONDS while one is open.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aiohttp import web

GROW_START = 25e-6  # the first window after none (seconds), as haltpoll's grow_start
CHECK_SECONDS = 1e-3  # while polling, how often the write-behind's backlog is looked at
BACKLOG_BYTES = 256 * 1024  # unflushed past this, the write-behind needs the CPU: no polling


def _never() -> bool:
    return False


class BusyPoll:
    """One serving loop's poll window; `max_window` 0 turns it off."""

    def __init__(self, max_window: float, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._behind: Callable[[], bool] = _never
        self.max_window = max_window
        self.window = max_window
        self._last = 0.0  # when the last poke was seen
        self._poked = False  # since the last look: a poke is only a flag while polling
        self._checked = 0.0  # when the write-behind was last asked
        self._handle: asyncio.Handle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.polls = 0  # windows opened
        self.widened = 0  # a poke a longer window would have caught
        self.narrowed = 0  # a poke after longer than any window
        self.yielded = 0  # windows not opened or closed early: the write-behind was behind

    def yield_to(self, behind: Callable[[], bool]) -> None:
        """Poll only while `behind()` is false (the node's write-behind has little to do)."""
        self._behind = behind

    @property
    def poker(self) -> Callable[[], None] | None:
        """What I/O sites call: `poke`, or None when polling is off (they call nothing)."""
        return self.poke if self.max_window > 0 else None

    @property
    def polling(self) -> bool:
        """Whether a window is open: the loop does not sleep."""
        return self._handle is not None

    def poke(self) -> None:
        """I/O happened (a request arrived, an answer or a Redis command went out): more
        is likely soon, so keep the loop polling for the window."""
        if self._handle is not None:  # polling: the next look notes it (one clock read)
            self._poked = True
            return
        now = self._clock()  # the window ran out: the loop may have slept since
        gap = now - self._last
        if gap <= self.max_window:
            if self.window < self.max_window:
                self.window = min(self.max_window, max(self.window * 2, GROW_START))
                self.widened += 1
        elif self.window:
            self.window = self.window / 2 if self.window >= 2 * GROW_START else 0.0
            self.narrowed += 1
        self._last = now
        if self.window and not self._yields(now):
            self.polls += 1
            self._loop = asyncio.get_running_loop()
            self._handle = self._loop.call_soon(self._look)

    def close(self) -> None:
        """Poll no more (the node stops)."""
        self.max_window = self.window = 0.0
        self._behind = _never
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def stats(self) -> dict[str, int]:
        return {
            "window_us": round(self.window * 1e6),
            "max_window_us": round(self.max_window * 1e6),
            "polls": self.polls,
            "widened": self.widened,
            "narrowed": self.narrowed,
            "yielded": self.yielded,
        }

    def _look(self) -> None:
        """Once per loop pass while polling: a callback ready keeps the next pass from
        sleeping in its wait for I/O."""
        now = self._clock()
        if self._poked:
            self._poked = False
            self._last = now
        if now - self._last < self.window and not (
            now - self._checked >= CHECK_SECONDS and self._yields(now)
        ):
            assert self._loop is not None
            self._handle = self._loop.call_soon(self._look)
        else:
            self._handle = None

    def _yields(self, now: float) -> bool:
        self._checked = now
        if not self._behind():
            return False
        self.yielded += 1
        return True


BUSY_POLL = web.AppKey("busy_poll", BusyPoll)
