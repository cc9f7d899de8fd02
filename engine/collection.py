"""Idle and memory collection (Orleans' activation collector): the node's memory budget,
eviction of the least recently used actors past it, the idle sweep, and passivation.

Idle actors, and the least recently used ones while the node's hot conversations cost
more bytes (engine/budget.py) or hold more messages than its budget, are flushed and
then dropped; reactivation rebuilds exactly the same state.

A conversation bigger than half the budget is oversized: it stays hot beside the
budget rather than pushing every other conversation out (which made the node thrash
between it and them), and at most one is hot at a time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from engine.activation import ActivationTable
from engine.actor import ConversationActor
from engine.errors import CanopyError
from persistence.background import Backoff, Throttled
from persistence.flusher import Flusher
from persistence.store import StoreError

if TYPE_CHECKING:
    from engine.registry import RegistryConfig

log = logging.getLogger(__name__)
throttled = Throttled(log)

EVICTION_BATCH = 16  # passivations at once while over the budget


class Collector:
    """Counts what the hot actors cost and passivates them; owns its background tasks."""

    def __init__(
        self,
        table: ActivationTable,
        flusher: Flusher,
        config: RegistryConfig,
        release: Callable[[str], None],
    ) -> None:
        self._table = table
        self._flusher = flusher
        self._config = config
        self._release = release  # gives up the conversation's ownership (directory)
        self._passivating: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._eviction: asyncio.Task[None] | None = None
        self._eviction_backoff = Backoff(0.05, 5.0)
        self.hot_messages = 0
        self.hot_bytes = 0
        # (bytes, messages) each hot actor was last counted at: the totals move by what
        # an actor's count changed, so they stay exact however mutations interleave.
        self._counted: dict[str, tuple[int, int]] = {}
        self._oversized: set[str] = set()  # hot actors kept beside the budget
        self.passivations = 0
        self.oversized = 0  # times an oversized conversation was kept hot

    def start(self) -> None:
        self._spawn(self._sweep_idle())

    async def close(self) -> None:
        """Cancel and await every task this collector started: the idle sweep, eviction
        and the passivations in flight."""
        tasks = self.tasks()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def tasks(self) -> list[asyncio.Task[None]]:
        return [*self._tasks, *self._passivating.values()]

    @property
    def oversized_hot(self) -> int:
        return len(self._oversized)

    # -- counting --------------------------------------------------------------------------

    def count(self, actor: ConversationActor) -> None:
        """Bring the hot bytes and messages up to date with what the actor holds now (an
        actor dropped meanwhile, e.g. its lease lost during its activation, holds none)."""
        if self._table.get(actor.id) is not actor:
            return
        nbytes, messages = actor.nbytes, len(actor)
        old_bytes, old_messages = self._counted.get(actor.id, (0, 0))
        self.hot_bytes += nbytes - old_bytes
        self.hot_messages += messages - old_messages
        self._counted[actor.id] = nbytes, messages
        if self._config.oversized(nbytes, messages):
            if actor.id not in self._oversized:
                self._oversized.add(actor.id)
                self.oversized += 1
        else:
            self._oversized.discard(actor.id)

    def drop(self, actor: ConversationActor) -> None:
        """Forget a hot actor (its dirty changes stay with the flusher). One dropped
        already (its lease lost while its passivation flushed) is left as it is: the
        lease may be another actor's of the same id by now."""
        actor.closed = True
        if self._table.get(actor.id) is not actor:
            return
        self._release(actor.id)
        nbytes, messages = self._counted.pop(actor.id)
        self.hot_bytes -= nbytes
        self.hot_messages -= messages
        self._oversized.discard(actor.id)
        self._table.remove(actor)

    # -- passivation -----------------------------------------------------------------------

    def passivating(self, conversation_id: str) -> asyncio.Task[None] | None:
        return self._passivating.get(conversation_id)

    async def passivate(self, conversation_id: str) -> bool:
        """Flush the actor and drop it; False (and still hot) if the flush failed."""
        actor = self._table.get(conversation_id)
        if actor is None or conversation_id in self._passivating:
            return False
        task = asyncio.create_task(self._passivate(actor), name=f"passivate-{conversation_id}")
        self._passivating[conversation_id] = task
        try:
            await asyncio.shield(task)
        except (StoreError, CanopyError) as exc:
            log.warning("passivation of %s postponed: %s", conversation_id, exc)
            return False
        finally:
            del self._passivating[conversation_id]
        return True

    async def _passivate(self, actor: ConversationActor) -> None:
        async with actor.lock:
            await self._flusher.flush(actor.id)
            if not actor.closed:  # not dropped meanwhile (a lost lease)
                self.drop(actor)
                self.passivations += 1

    # -- the budget --------------------------------------------------------------------------

    def check_budget(self) -> None:
        if self._eviction is None and self._over(1.0):
            self._eviction = self._spawn(self._evict())

    async def keep_within_budget(self) -> None:
        """Start eviction if over the budget; past twice the budget, wait for it, so that
        creations and activations cannot outrun the passivations (each is a flush)."""
        self.check_budget()
        if self._eviction is not None and self._over(2.0):
            await asyncio.shield(self._eviction)

    def _over(self, share: float) -> bool:
        """Whether the conversations within the budget cost more than `share` of it, or
        more than one oversized conversation is hot."""
        if len(self._oversized) > 1:
            return True
        config = self._config
        nbytes, messages = self.hot_bytes, self.hot_messages
        for conversation_id in self._oversized:
            counted_bytes, counted_messages = self._counted[conversation_id]
            nbytes -= counted_bytes
            messages -= counted_messages
        return nbytes > config.max_hot_bytes * share or messages > config.max_hot_messages * share

    async def _evict(self) -> None:
        try:
            if await self._evict_to_target():
                self._eviction_backoff.succeeded()
            else:  # the store refuses flushes: give it time before the next eviction
                await asyncio.sleep(self._eviction_backoff.failed())
        except Exception as exc:  # noqa: BLE001 - the next budget check tries again
            throttled.warning("evict", "eviction failed: %r", exc)
            await asyncio.sleep(self._eviction_backoff.failed())
        finally:
            self._eviction = None

    async def _evict_to_target(self) -> bool:
        """Passivate least recently used actors until under 90% of the budget, and all
        oversized ones but the most recently used; several at once, so that eviction
        keeps up with conversations created by many clients."""
        while self._over(0.9):
            victims = self._victims()
            if not victims:
                return True
            passivated = await asyncio.gather(*(self.passivate(cid) for cid in victims))
            if not all(passivated):
                return False
        return True

    def _victims(self) -> list[str]:
        """The least recently used actors to passivate next (at most `EVICTION_BATCH`):
        oversized ones while more than one is hot, otherwise ones within the budget;
        never the most recently used."""
        if len(self._oversized) > 1:
            return [next(cid for cid in self._table if cid in self._oversized)]
        config = self._config
        excess_bytes = self.hot_bytes - int(config.max_hot_bytes * 0.9)
        excess_messages = self.hot_messages - int(config.max_hot_messages * 0.9)
        newest = self._table.newest()
        victims: list[str] = []
        for conversation_id in self._table:
            done = excess_bytes <= 0 and excess_messages <= 0
            if done or conversation_id == newest or len(victims) == EVICTION_BATCH:
                break
            if conversation_id not in self._oversized and conversation_id not in self._passivating:
                victims.append(conversation_id)
                counted_bytes, counted_messages = self._counted[conversation_id]
                excess_bytes -= counted_bytes
                excess_messages -= counted_messages
        return victims

    # -- the idle sweep ----------------------------------------------------------------------

    async def _sweep_idle(self) -> None:
        period = max(0.05, self._config.idle_seconds / 4)
        while True:
            await asyncio.sleep(period)
            try:
                await self._passivate_idle()
            except Exception as exc:  # noqa: BLE001 - the next sweep tries again
                throttled.warning("sweep", "idle sweep failed: %r", exc)

    async def _passivate_idle(self) -> None:
        for conversation_id in self._table.idle(self._config.idle_seconds):
            await self.passivate(conversation_id)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
