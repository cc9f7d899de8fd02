"""The workers of one `canopy serve --workers N` (without a cluster) as a static membership.

Worker K of N is the member `worker-K`; the set is fixed for the life of the data
directory (its shards are placed by it), so nothing heartbeats: a worker the supervisor
is restarting is still the owner of its conversations, and a request for one waits for
it rather than moving them (gateway/workers.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from engine.membership import Member, Watcher


def worker_id(index: int) -> str:
    return f"worker-{index}"


class Workers:
    """Member `worker-<index>` among `urls` (one per worker, in index order)."""

    def __init__(self, index: int, urls: Sequence[str], report: Callable[[], dict[str, Any]]):
        if not 0 <= index < len(urls):
            raise ValueError(f"worker index {index} is not one of {len(urls)} workers")
        self.index = index
        self.node_id, self.url = worker_id(index), urls[index]
        self.urls = list(urls)
        self._report = report

    @property
    def ids(self) -> list[str]:
        return [worker_id(k) for k in range(len(self.urls))]

    async def __aenter__(self) -> Workers:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    def live(self) -> list[Member]:
        """Every worker: the set is static (only this one's figures are known here)."""
        return [
            Member(node, url, self._report() if node == self.node_id else {})
            for node, url in zip(self.ids, self.urls, strict=True)
        ]

    async def url_of(self, node_id: str) -> str | None:
        ids = self.ids
        return self.urls[ids.index(node_id)] if node_id in ids else None

    def watch(self, watcher: Watcher) -> None:
        pass  # the set never changes

    def can_acknowledge(self) -> bool:
        return True

    def stats(self) -> dict[str, Any]:
        return {"kind": "workers", "node_id": self.node_id, "live_nodes": len(self.urls)}
