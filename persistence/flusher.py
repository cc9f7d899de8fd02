"""The write-behind flusher: moves acknowledged changes from memory to the Store.

`write -> journal -> ack -> dirty -> flusher -> Store batch -> journal trim`

Actors record what each applied mutation changed through `record(conversation_id, apply)`;
repeated updates of one row coalesce there. A cycle writes every dirty conversation
as one batch (one partition), retries failures with backoff, and trims the journal
only when everything the journal mark covers is stored. Writes to one conversation
never overlap, so an old batch can never land after a newer one.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from persistence.background import Backoff, Throttled
from persistence.journal import Journal, JournalError
from persistence.keyed_lock import KeyedLock
from persistence.store import Changes, Store

log = logging.getLogger(__name__)
throttled = Throttled(log)


@dataclass(frozen=True)
class FlusherConfig:
    interval: float = 0.05  # seconds between cycles while there is dirty data
    max_unflushed_bytes: int = 256 * 1024 * 1024  # past this, writes get 503
    concurrency: int = 16  # conversations written at once
    backoff_initial: float = 0.05
    backoff_max: float = 5.0


class Backpressure(Exception):
    """Too much unflushed data: the caller should retry after `retry_after` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"unflushed data over the limit; retry after {retry_after:.1f}s")
        self.retry_after = retry_after


class Flusher:
    """Owns the dirty set and the task that drains it; an async context manager."""

    def __init__(self, store: Store, journal: Journal, config: FlusherConfig) -> None:
        self._store = store
        self._journal = journal
        self._config = config
        self._dirty: dict[str, Changes] = {}
        self._writing: dict[str, Changes] = {}
        # The nbytes of every Changes in both sets, kept as they grow and are written:
        # every mutation checks it, so summing the sets there would cost O(dirty).
        self._unflushed = 0
        self._exclusive = KeyedLock()  # one writer per conversation
        self._generation = 0
        self._inflight: defaultdict[int, int] = defaultdict(int)
        self._settled = asyncio.Condition()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._backoff = Backoff(config.backoff_initial, config.backoff_max)
        self.batches_written = 0
        self.messages_written = 0

    async def __aenter__(self) -> Flusher:
        self._task = asyncio.create_task(self._run(), name="flusher")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.flush_all(retries=5)
        log.info(
            "flusher closed: %d batches, %d messages written, %d bytes left unflushed",
            self.batches_written,
            self.messages_written,
            self.unflushed_bytes,
        )

    # -- what actors call ------------------------------------------------------------

    @contextmanager
    def mutation(self) -> Iterator[None]:
        """Bracket journal append + `record()` so a journal mark waits for them."""
        generation = self._generation
        self._inflight[generation] += 1
        try:
            yield
        finally:
            self._inflight[generation] -= 1
            if not self._inflight[generation] and generation < self._generation:
                del self._inflight[generation]
                asyncio.get_running_loop().create_task(self._notify_settled())

    def record(self, conversation_id: str, apply: Callable[[Changes], None]) -> None:
        """Let `apply` record what a mutation changed in the conversation's dirty changes
        (created empty on first use, which wakes the flusher)."""
        found = self._dirty.get(conversation_id)
        if found is None:
            found = self._dirty[conversation_id] = Changes()
            self._wake.set()
        before = found.nbytes
        try:
            apply(found)
        finally:
            self._unflushed += found.nbytes - before

    def check_capacity(self) -> None:
        if self.unflushed_bytes > self._config.max_unflushed_bytes:
            raise Backpressure(retry_after=max(1.0, self._backoff.delay()))

    @property
    def unflushed_bytes(self) -> int:
        return self._unflushed

    def pending(self) -> Iterator[tuple[str, Changes]]:
        """Unflushed changes, older before newer for each conversation (read-your-writes)."""
        yield from self._writing.items()
        yield from self._dirty.items()

    # -- flushing ----------------------------------------------------------------------

    async def flush(self, conversation_id: str) -> None:
        """Write one conversation's dirty changes now (passivation, `store` durability)."""
        async with self._exclusive(conversation_id):
            changes = self._dirty.pop(conversation_id, None)
            if changes is None:
                return
            self._writing[conversation_id] = changes
            try:
                await self._store.write(conversation_id, changes)
            except BaseException:
                newer = self._dirty.get(conversation_id)
                if newer is not None:
                    changes.absorb(newer)
                self._dirty[conversation_id] = changes
                raise
            finally:
                del self._writing[conversation_id]
            self._unflushed -= changes.nbytes
            self.batches_written += 1
            self.messages_written += len(changes.messages)

    async def flush_all(self, retries: int = 0) -> bool:
        """One cycle: mark the journal, write every dirty conversation, trim on success."""
        for attempt in range(retries + 1):
            if await self._cycle():
                return True
            if attempt < retries:
                await asyncio.sleep(self._backoff.delay())
        return False

    async def _cycle(self) -> bool:
        try:
            mark = await self._journal.mark()
        except (JournalError, OSError) as exc:  # e.g. EMFILE: no descriptor for a segment
            throttled.warning("mark", "journal mark failed: %s; retrying", exc)
            self._backoff.failed()
            return False
        await self._wait_settled()
        semaphore = asyncio.Semaphore(self._config.concurrency)
        flushed: dict[str, int] = {}

        async def write(conversation_id: str) -> bool:
            async with semaphore:
                pending = self._dirty.get(conversation_id) or self._writing.get(conversation_id)
                if pending is None:
                    return True  # flushed meanwhile (passivation)
                version = pending.version
                try:
                    await self.flush(conversation_id)
                except Exception as exc:  # noqa: BLE001 - any store failure is retried
                    throttled.warning("flush", "flush of %s failed: %s", conversation_id, exc)
                    return False
                flushed[conversation_id] = version
                return True

        # A conversation being written by flush(cid) right now is covered by the mark too:
        # flushing it again waits for that write and retries it if it failed.
        covered = [*self._dirty, *(cid for cid in self._writing if cid not in self._dirty)]
        results = await asyncio.gather(*(write(cid) for cid in covered))
        if not all(results):
            self._backoff.failed()
            return False
        try:
            await self._journal.trim(mark, flushed)
        except (JournalError, OSError) as exc:  # stored already; trimmed next cycle
            throttled.warning("trim", "journal trim failed: %s", exc)
            self._backoff.failed()
            return False
        self._backoff.succeeded()
        return True

    async def _wait_settled(self) -> None:
        """Wait until every mutation begun before the mark has recorded its changes."""
        self._generation += 1
        async with self._settled:
            await self._settled.wait_for(
                lambda: not any(n for g, n in self._inflight.items() if g < self._generation)
            )

    async def _notify_settled(self) -> None:
        async with self._settled:
            self._settled.notify_all()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(self._config.interval)
            try:
                flushed = await self.flush_all()
            except Exception as exc:  # noqa: BLE001 - the loop must outlive any one cycle
                throttled.warning("cycle", "write-behind cycle failed: %r; retrying", exc)
                self._backoff.failed()
                flushed = False
            if not flushed:
                self._wake.set()  # keep retrying, with backoff
                await asyncio.sleep(self._backoff.delay())
