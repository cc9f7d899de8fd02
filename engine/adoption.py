"""Adoption: journaled conversations that no live node serves are activated where they
are placed, without waiting for a request.

A node that dies leaves conversations whose last writes are only in the Redis journal:
acknowledged, not stored yet. A cluster node replays nothing at start, and a
conversation is otherwise loaded only when a request names it. Until then the listings
would not show those writes, because they read the Store and the nodes' hot
conversations. So every node sweeps once it has joined and again whenever a member
departs. A sweep reads the journaled sets and activates, a few at a time, each
conversation that is placed on this node, is not hot here, and has no live holder.
Activation takes the lease, loads the Store and the journal tail, and marks the records
dirty. The flusher then stores them, and meanwhile the listings show the conversation as
hot. Sweeps do not overlap: a departure during a sweep starts another one after it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from engine.directory import Directory
from engine.placement import Placement
from engine.registry import Registry
from persistence.background import stop

log = logging.getLogger(__name__)

AT_ONCE = 4  # activations in flight at once: a sweep after a death must not stall the node


class Adopter:
    """This node's sweeps; an async context manager (a sweep in flight is cancelled)."""

    def __init__(
        self,
        registry: Registry,
        journaled: Callable[[], Awaitable[list[str]]],
        placement: Placement,
        directory: Directory,
        node_id: str,
        *,
        at_once: int = AT_ONCE,
    ) -> None:
        self._registry = registry
        self._journaled = journaled
        self._placement = placement
        self._directory = directory
        self._node_id = node_id
        self._slots = asyncio.Semaphore(at_once)
        self._members: frozenset[str] | None = None
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self.sweeps = 0
        self.adopted = 0
        self.failed = 0  # activations refused (held elsewhere meanwhile, store down, ...)
        self.last_sweep_seconds = 0.0

    async def __aenter__(self) -> Adopter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._again = False
        await stop(self._task)

    def stats(self) -> dict[str, Any]:
        return {
            "sweeps": self.sweeps,
            "adopted": self.adopted,
            "failed": self.failed,
            "sweeping": self._task is not None,
            "last_sweep_seconds": round(self.last_sweep_seconds, 3),
        }

    def members_changed(self, placed: frozenset[str]) -> None:
        """A Membership watcher: a member gone from the placement leaves orphans."""
        before, self._members = self._members, placed
        if before is not None and before - placed:
            self.start()

    def start(self) -> None:
        """Sweep now, or once more after the sweep in flight."""
        if self._task is not None:
            self._again = True
            return
        self._task = asyncio.get_running_loop().create_task(self._sweeps(), name="adoption")

    async def _sweeps(self) -> None:
        try:
            while True:
                self._again = False
                try:
                    await self.sweep()
                except Exception as exc:  # noqa: BLE001 - the next departure sweeps again
                    log.warning("adoption sweep failed: %r", exc)
                if not self._again:
                    return
        finally:
            self._task = None

    async def sweep(self) -> int:
        """Activate every orphan placed here; how many were."""
        started = time.monotonic()
        candidates = [
            cid
            for cid in await self._journaled()
            if self._registry.hot(cid) is None and self._placement.owner_of(cid) == self._node_id
        ]
        adopted = sum(await asyncio.gather(*(self._adopt(cid) for cid in candidates)))
        self.sweeps += 1
        self.last_sweep_seconds = time.monotonic() - started
        if adopted:
            log.info("adopted %d journaled conversations in %.2fs", adopted,
                     self.last_sweep_seconds)  # fmt: skip
        return adopted

    async def _adopt(self, conversation_id: str) -> bool:
        async with self._slots:
            try:
                if await self._directory.holder(conversation_id) is not None:
                    return False  # served by a live node
                adopted = await self._registry.adopt(conversation_id)
            except Exception as exc:  # noqa: BLE001 - one refusal must not end the sweep
                self.failed += 1
                log.warning("adopting %s: %s", conversation_id, exc)
                return False
        self.adopted += adopted
        return adopted
