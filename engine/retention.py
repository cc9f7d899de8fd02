"""Retention: expired conversations are removed from storage, not only hidden.

Reads and listings stop showing a conversation the moment its `expires_at` passes
(`engine.actor.gone`). This sweeper then deletes it for good: every `interval` it asks
the store's expiry index for what is due and deletes each through the conversation's
actor, journaled like the owner's delete. The flusher then removes its messages,
branches, shares and listing rows from the store, and the journal trims its records
once the deletion is flushed. An expiry moved later in the meantime keeps it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.actor import now
from engine.errors import CanopyError
from engine.service import Conversations
from persistence.background import Backoff, Throttled
from persistence.store import Store, StoreError

log = logging.getLogger(__name__)
throttled = Throttled(log)


@dataclass(frozen=True)
class RetentionConfig:
    interval: float = 60.0  # seconds between sweeps
    batch: int = 100  # conversations asked for at once
    max_batches: int = 10  # per sweep: a backlog drains over sweeps, not in one burst


class Retention:
    """Owns the sweep task; an async context manager."""

    def __init__(
        self,
        store: Store,
        conversations: Conversations,
        config: RetentionConfig,
        *,
        owns: Callable[[str], bool] | None = None,
    ) -> None:
        self._store = store
        self._conversations = conversations
        # one of --workers N over a shared store: the others' expired conversations are
        # theirs to delete (activating one here would take it from its owner)
        self._owns = owns
        self._config = config
        self._task: asyncio.Task[None] | None = None
        self._backoff = Backoff(config.interval, max(config.interval, 600.0))
        self.swept = 0  # conversations removed
        self.sweeps = 0
        self.failures = 0

    async def __aenter__(self) -> Retention:
        self._task = asyncio.ensure_future(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def stats(self) -> dict[str, Any]:
        return {"swept": self.swept, "sweeps": self.sweeps, "failures": self.failures}

    async def sweep(self) -> int:
        """Delete what has expired, up to `batch * max_batches` conversations; how many."""
        removed = 0
        for _ in range(self._config.max_batches):
            due = await self._store.expired(now(), self._config.batch)
            mine = due if self._owns is None else [cid for cid in due if self._owns(cid)]
            deleted = [await self._conversations.expire(cid) for cid in mine]
            removed += sum(deleted)
            # A full batch all deleted: more may be due. Anything kept (its expiry moved,
            # not flushed yet, a sibling's) would come back in the next batch: wait for
            # the next sweep.
            if len(due) < self._config.batch or len(mine) < len(due) or not all(deleted):
                break
        self.swept += removed
        self.sweeps += 1
        if removed:
            log.info("retention: %d expired conversations removed", removed)
        return removed

    async def _run(self) -> None:
        delay = self._config.interval
        while True:
            await asyncio.sleep(delay)
            try:
                await self.sweep()
                self._backoff.succeeded()
                delay = self._config.interval
            except (StoreError, CanopyError, OSError) as exc:
                self.failures += 1
                throttled.warning("retention", "retention sweep failed: %r", exc)
                delay = self._backoff.failed()
