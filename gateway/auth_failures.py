"""Refused credentials are rate limited per client address (with `--rate-limit`).

Authentication runs before the per-caller rate limit (the caller is not known until it
has), so without this a bad bearer token (a ~200 µs signature check each) or an API-key
guess could be sent without end. Every request the authentication middleware refuses
(401) spends a token from its address's bucket, `auth-failures:<address>`, in the same
limiter and at the same budget as `--rate-limit`. The refusal that finds the bucket
empty answers 429 `rate_limited` with `Retry-After` instead of 401, and the address is
then refused in memory, before any credential of it is looked at, until a token is back:
a guess gets no answer at all, not even whether it was right (docs/decisions.md).
A request whose credential verifies spends nothing here; while no address is refused,
checking costs one truthiness test per request.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from aiohttp import web

from engine.errors import RateLimited
from gateway.ratelimit import UNLIMITED_PATHS, Limiter

PREFIX = "auth-failures:"


class AuthFailures:
    """The buckets of refused requests by client address, and the addresses refused now."""

    def __init__(
        self,
        limiter: Limiter,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_refused: int = 100_000,
    ) -> None:
        self._limiter = limiter
        self._clock = clock
        self._max_refused = max_refused
        self._refused: dict[str, float] = {}  # address -> refused until (clock), oldest first

    def check(self, request: web.Request) -> None:
        """Raise RateLimited if the request's address spent its budget of refusals."""
        if not self._refused or request.path in UNLIMITED_PATHS:
            return
        address = str(request.remote)
        until = self._refused.get(address)
        if until is None:
            return
        wait = until - self._clock()
        if wait <= 0:
            del self._refused[address]
            return
        raise _too_many(wait)

    async def refused(self, request: web.Request) -> None:
        """Spend one token for a refused request; raise RateLimited if there was none."""
        address = str(request.remote)
        wait = await self._limiter.take(PREFIX + address)
        if not wait:
            return
        self._refused.pop(address, None)  # re-inserted last: the oldest stay first to go
        if len(self._refused) >= self._max_refused:
            del self._refused[next(iter(self._refused))]
        self._refused[address] = self._clock() + wait
        raise _too_many(wait)


def _too_many(wait: float) -> RateLimited:
    seconds = max(1, math.ceil(wait))
    message = f"too many refused credentials from this address; retry in {seconds} s"
    return RateLimited(message, wait)
