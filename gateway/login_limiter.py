"""Login attempts, limited per email and per client address, in memory.

Separate from the API's rate limiting: it guards password guessing (and the CPU each
argon2 hash costs), per node, whether or not `--rate-limit` is on. An email's bucket
holds 5 attempts and refills one every 12 s; an address's holds 20 and refills one a
second. An attempt takes one from both, or is refused with the seconds until both have
one. The buckets are gateway.ratelimit's in-memory ones (idle ones dropped, bounded).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from gateway.buckets import MemoryBuckets, RateLimit

PER_EMAIL = RateLimit(rate=1 / 12, burst=5)
PER_ADDRESS = RateLimit(rate=1.0, burst=20)


class LoginLimiter:
    def __init__(
        self,
        per_email: RateLimit = PER_EMAIL,
        per_address: RateLimit = PER_ADDRESS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._emails = MemoryBuckets(per_email, clock=clock)
        self._addresses = MemoryBuckets(per_address, clock=clock)

    def attempt(self, email: str | None, address: str) -> float:
        """Spend one attempt; 0 if allowed, else the seconds to wait (nothing spent)."""
        wait = self._addresses.wait(address)
        if email is not None:
            wait = max(wait, self._emails.wait(email))
        if wait > 0:
            return wait
        self._addresses.take_now(address)
        if email is not None:
            self._emails.take_now(email)
        return 0.0
