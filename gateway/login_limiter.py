"""Login attempts, limited per email and per client address: small token buckets in memory.

Separate from the API's rate limiting: it guards password guessing (and the CPU each
argon2 hash costs), per node. An email's bucket holds 5 attempts and refills one every
12 s; an address's holds 20 and refills one a second. An attempt takes one from both,
or is refused with the seconds until both have one. Buckets are bounded in number: past
`max_keys` the oldest goes (a full bucket is what a new one would be anyway).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Rate:
    burst: float
    per_second: float


class Buckets:
    """Token buckets by key, all at one rate."""

    def __init__(
        self, rate: Rate, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = rate
        self._max_keys = max_keys
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, as of)

    def wait(self, key: str) -> float:
        """Seconds until `key` has an attempt to spend (0: now)."""
        tokens = self._tokens(key)
        return 0.0 if tokens >= 1 else (1 - tokens) / self._rate.per_second

    def take(self, key: str) -> None:
        tokens = self._tokens(key) - 1
        self._buckets.pop(key, None)  # re-inserted last: the oldest stay first to go
        if len(self._buckets) >= self._max_keys:
            del self._buckets[next(iter(self._buckets))]
        self._buckets[key] = (tokens, self._clock())

    def _tokens(self, key: str) -> float:
        tokens, since = self._buckets.get(key, (self._rate.burst, 0.0))
        elapsed = self._clock() - since
        return min(self._rate.burst, tokens + elapsed * self._rate.per_second)


class LoginLimiter:
    def __init__(
        self,
        per_email: Rate = Rate(5, 1 / 12),
        per_address: Rate = Rate(20, 1.0),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._emails = Buckets(per_email, clock=clock)
        self._addresses = Buckets(per_address, clock=clock)

    def attempt(self, email: str | None, address: str) -> float:
        """Spend one attempt; 0 if allowed, else the seconds to wait (nothing spent)."""
        wait = self._addresses.wait(address)
        if email is not None:
            wait = max(wait, self._emails.wait(email))
        if wait > 0:
            return wait
        self._addresses.take(address)
        if email is not None:
            self._emails.take(email)
        return 0.0
