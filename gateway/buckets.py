"""Token buckets in this process: the API's rate limit (without Redis) and the login limit.

A bucket holds `burst` tokens and refills at `rate` per second; a bucket untouched long
enough to be full again is the same as none, so idle ones are dropped.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

Clock = Callable[[], float]


@dataclass(frozen=True)
class RateLimit:
    rate: float  # tokens per second
    burst: int  # the bucket's size: requests allowed at once after an idle spell

    @property
    def refill_seconds(self) -> float:
        """How long an empty bucket takes to be full again (then it equals no bucket)."""
        return self.burst / self.rate


class MemoryBuckets:
    """Token buckets in this process, least recently used first.

    A bucket untouched for `refill_seconds` is full, the same as no bucket, so the
    oldest ones are dropped as requests pass; past `max_buckets` (a flood of distinct
    callers) the oldest goes anyway, which can only be lenient to that one caller.
    """

    backend = "memory"

    def __init__(
        self, limit: RateLimit, *, clock: Clock = time.monotonic, max_buckets: int = 100_000
    ) -> None:
        self.limit = limit
        self._clock = clock
        self._max_buckets = max_buckets
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at
        self.allowed = 0
        self.limited = 0

    async def take(self, key: str) -> float:
        return self.take_now(key)

    def take_now(self, key: str) -> float:
        now = self._clock()
        limit = self.limit
        tokens, at = self._buckets.pop(key, (limit.burst, now))
        tokens = min(limit.burst, tokens + (now - at) * limit.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
            self.allowed += 1
        else:
            wait = (1.0 - tokens) / limit.rate
            self.limited += 1
        self._buckets[key] = (tokens, now)  # now the most recently used
        self._drop_idle(now)
        return wait

    def wait(self, key: str) -> float:
        """Seconds until `key`'s bucket has a token (0: now), spending nothing."""
        found = self._buckets.get(key)
        if found is None:
            return 0.0
        limit = self.limit
        tokens, at = found
        tokens = min(limit.burst, tokens + (self._clock() - at) * limit.rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / limit.rate

    def _drop_idle(self, now: float) -> None:
        buckets = self._buckets
        while buckets:
            _, at = next(iter(buckets.values()))
            if now - at < self.limit.refill_seconds and len(buckets) <= self._max_buckets:
                return
            buckets.popitem(last=False)

    def stats(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "allowed": self.allowed,
            "limited": self.limited,
            "buckets": len(self._buckets),
        }

    async def __aenter__(self) -> MemoryBuckets:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None
