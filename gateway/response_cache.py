"""Encoded bodies of large read responses, keyed by request path, page and conversation version.

The page is the query as the route reads it (gateway/paging.py): a page or a compact
list is another entry, a parameter the route ignores is not.

A conversation's version moves on every mutation, so an entry is never served stale:
once the version moves on it is simply never asked for again and ages out of the LRU.
Only bodies worth keeping are stored (lineages, whole trees: O(depth²) ids on the wire),
within a node-wide byte budget.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

from gateway.paging import Page

Key = tuple[str, Page, int]  # (request path, the page asked for, conversation version)


class Encoded(NamedTuple):
    body: bytes
    headers: dict[str, str]  # the next page's cursor, when the response is a page


class ResponseCache:
    __slots__ = ("_entries", "_bytes", "max_bytes", "min_bytes", "hits", "misses")

    def __init__(self, max_bytes: int, min_bytes: int = 8 * 1024) -> None:
        self._entries: OrderedDict[Key, Encoded] = OrderedDict()
        self._bytes = 0
        self.max_bytes = max_bytes
        self.min_bytes = min_bytes
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, key: Key) -> Encoded | None:
        found = self._entries.get(key)
        if found is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return found

    def worth(self, nbytes: int) -> bool:
        """Whether a body this large would be kept (ask before copying one to keep)."""
        return self.min_bytes <= nbytes <= self.max_bytes // 4

    def put(self, key: Key, encoded: Encoded) -> None:
        if not self.worth(len(encoded.body)) or key in self._entries:
            return
        self._entries[key] = encoded
        self._bytes += len(encoded.body)
        while self._bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= len(evicted.body)
