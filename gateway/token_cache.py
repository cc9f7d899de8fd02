"""Verified bearer tokens, remembered briefly so a token's signature is checked once.

An entry lives until the token's own `exp` or for `max_seconds`, whichever is first: a
cached token is never honoured past its expiry. The cache is bounded: when full, the
oldest entry goes (a dict keeps insertion order, so that is O(1)). Only verified tokens
enter it; a refused token is verified (and refused) again each time.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from engine.access import Principal


class TokenCache:
    def __init__(
        self,
        max_entries: int = 10_000,
        max_seconds: float = 60.0,
        clock: Callable[[], float] = time.time,  # wall clock: `exp` is epoch seconds
    ) -> None:
        self._entries: dict[str, tuple[Principal, float]] = {}
        self._max_entries = max_entries
        self._max_seconds = max_seconds
        self._clock = clock

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token: str) -> Principal | None:
        entry = self._entries.get(token)
        if entry is None:
            return None
        principal, until = entry
        if self._clock() < until:
            return principal
        del self._entries[token]
        return None

    def put(self, token: str, principal: Principal, expires_at: float) -> None:
        """Remember a verified token until `expires_at` (its `exp`) at the latest."""
        if self._max_entries <= 0:  # caching off
            return
        if token not in self._entries and len(self._entries) >= self._max_entries:
            del self._entries[next(iter(self._entries))]
        self._entries[token] = (principal, min(expires_at, self._clock() + self._max_seconds))
