"""The write-behind flusher: moves acknowledged changes from memory to the Store.

`write -> journal -> ack -> dirty -> flusher -> Store batch -> journal trim`

Actors record what each applied mutation changed through `record(conversation_id, apply)`;
repeated updates of one row coalesce there. Each cycle starts a write (one batch, one
partition) for every dirty conversation not being written already, and never waits
for them: a slow conversation holds back only itself. Failures are retried per
conversation with backoff. The journal is trimmed as writes land: a journal mark
waits for the versions of the conversations that were dirty when it was taken, and
once they are all stored everything before it can go (a file journal's segments); the
versions stored meanwhile go along (a Redis journal's per-conversation streams). Only
one mark is pending at a time, so a stuck conversation holds journal space, never
descriptors or other conversations' writes. Writes to one conversation never overlap,
so an old batch can never land after a newer one.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from persistence.background import Backoff, Throttled, backoff_delay
from persistence.journal import Journal, JournalError
from persistence.keyed_lock import KeyedLock
from persistence.latency import SIZE_BUCKETS, Histogram
from persistence.store import Changes, Store, StoreError

log = logging.getLogger(__name__)
throttled = Throttled(log)


@dataclass(frozen=True)
class FlusherConfig:
    interval: float = 0.05  # seconds between cycles while there is dirty data
    max_unflushed_bytes: int = 256 * 1024 * 1024  # past this, writes get 503
    concurrency: int = 16  # conversations written at once
    backoff_initial: float = 0.05
    backoff_max: float = 5.0
    close_timeout: float = 10.0  # the final flush's budget; what is left stays journaled


@dataclass
class _Mark:
    """A journal checkpoint and what it waits for: conversation -> version to be stored."""

    handle: object
    waiting: dict[str, int]


_NO_MARK = object()  # no checkpoint is complete yet: nothing may be trimmed
LAST_FLUSHES_KEPT = 4_096  # recent last store writes known (well inside the memory margin)


class Backpressure(Exception):
    """Too much unflushed data: the caller should retry after `retry_after` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"unflushed data over the limit; retry after {retry_after:.1f}s")
        self.retry_after = retry_after


class Flusher:
    """Owns the dirty set and the task that drains it; an async context manager."""

    # This process writes the store: recovery replays the journal here, and a flushed
    # (passivated) conversation is whole in the store. Not so with a flusher process.
    writes_here = True

    def __init__(self, store: Store, journal: Journal, config: FlusherConfig) -> None:
        self._store = store
        self._journal = journal
        self._config = config
        self._dirty: dict[str, Changes] = {}
        self._writing: dict[str, Changes] = {}
        # The nbytes of every Changes in both sets, kept as they grow and are written:
        # every mutation checks it, so summing the sets there would cost O(dirty).
        self._unflushed = 0
        self._unflushed_records = 0
        self._dirty_since: dict[str, float] = {}  # monotonic: when it last became dirty
        self._last_flush: OrderedDict[str, float] = OrderedDict()  # wall clock, bounded
        self.flush_seconds = Histogram()  # one conversation's store write
        self.batch_records = Histogram(SIZE_BUCKETS)  # journal records in it
        self._exclusive = KeyedLock()  # one writer per conversation
        self._generation = 0
        self._inflight: defaultdict[int, int] = defaultdict(int)
        self._settled = asyncio.Condition()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._backoff = Backoff(config.backoff_initial, config.backoff_max)
        self._slots = asyncio.Semaphore(config.concurrency)
        self._flushing: dict[str, asyncio.Task[bool]] = {}  # the cycles' writes in flight
        self._failures: Counter[str] = Counter()  # consecutive failed writes
        self._diverged_watchers: list[Callable[[str, int], None]] = []
        self._not_before: dict[str, float] = {}  # a failing conversation's next attempt
        self._marking = asyncio.Lock()
        self._mark: _Mark | None = None  # the one checkpoint waiting for its versions
        self._trimmable: object = _NO_MARK  # the newest complete checkpoint
        self._stored: dict[str, int] = {}  # versions stored since the last trim
        self._since_mark = False  # records were journaled after the newest mark
        self._appends: set[asyncio.Future[None]] = set()  # acked before the journal took them
        self._notifying: set[asyncio.Task[None]] = set()  # wake-ups of a mark's waiters
        self._clean_watchers: list[Callable[[str], None]] = []
        self._may_write: Callable[[str], bool] = _always  # a cluster member's fence
        self.fenced_writes = 0  # writes held back: this node may not own the conversation
        self.forgotten = 0  # conversations dropped unflushed: another node took them
        self.batches_written = 0
        self.messages_written = 0

    async def __aenter__(self) -> Flusher:
        self._task = asyncio.create_task(self._run(), name="flusher")
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Stop the cycle, then flush everything within `close_timeout`. What is left
        unflushed stays in the journal (durable), replayed by the next start."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        flushed = False
        try:
            async with asyncio.timeout(self._config.close_timeout):
                if self._appends:
                    await asyncio.wait(self._appends)
                while not (flushed := await self._flush_everything()):
                    await asyncio.sleep(self._backoff.delay())
        except TimeoutError:
            pass
        writes = [*self._flushing.values(), *self._notifying]
        for task in writes:
            task.cancel()
        await asyncio.gather(*writes, return_exceptions=True)
        if not flushed:
            log.warning(
                "flusher closed after %.1fs with %d conversations (%d bytes) unflushed;"
                " their records stay in the journal and are replayed at the next start",
                self._config.close_timeout,
                len(self._dirty) + len(self._writing),
                self.unflushed_bytes,
            )
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
                notifying = asyncio.create_task(self._notify_settled(), name="flusher-settled")
                self._notifying.add(notifying)  # owned: awaited on close
                notifying.add_done_callback(self._notifying.discard)

    def adopt(self, append: asyncio.Future[None]) -> None:
        """Own a journal append acknowledged before it completed (`memory` durability):
        closing waits for it, so the journal never closes under it."""
        self._appends.add(append)
        append.add_done_callback(self._appends.discard)

    def record(self, conversation_id: str, apply: Callable[[Changes], None]) -> None:
        """Let `apply` record what a mutation changed in the conversation's dirty changes
        (created empty on first use, which wakes the flusher)."""
        self.record_many(conversation_id, (apply,))

    def record_many(
        self, conversation_id: str, applies: Sequence[Callable[[Changes], None]]
    ) -> None:
        """`record` for consecutive mutations of one conversation (a batch of appends),
        in order: its dirty changes are looked up and measured once."""
        self._since_mark = True
        found = self._dirty.get(conversation_id)
        if found is None:
            found = self._dirty[conversation_id] = Changes()
            self._dirty_since.setdefault(conversation_id, time.monotonic())
            self._wake.set()
        before = found.nbytes
        try:
            for apply in applies:
                found.records += 1
                self._unflushed_records += 1
                apply(found)
        finally:
            self._unflushed += found.nbytes - before

    def on_diverged(self, watcher: Callable[[str, int], None]) -> None:
        """`watcher(conversation_id, epoch)` when its actor of that epoch no longer follows
        the journal that is stored (`diverged`): the registry rebuilds the actor."""
        self._diverged_watchers.append(watcher)

    def diverged(self, conversation_id: str, epoch: int) -> None:
        """An append of the conversation was sent and its answer lost: the journal may
        hold a record its actor never applied. Nothing to do here: this process stores
        only what actors applied, and a replay of the journal takes the later of two
        records on one `prev`. A flusher process stores the journal (RemoteFlusher)."""

    def fence(self, may_write: Callable[[str], bool]) -> None:
        """Write a conversation only while `may_write(conversation_id)`: a cluster member
        that may have lost it (its leases not renewed in time) holds its writes back,
        so it never stores older state over the new owner's."""
        self._may_write = may_write

    def forget(self, conversation_id: str) -> None:
        """Drop what is unflushed of a conversation another node took: its records are in
        the journal the new owner loaded, marked dirty there and stored by its flusher
        before the journal is trimmed (a write already in flight finishes)."""
        changes = self._dirty.pop(conversation_id, None)
        if changes is None:
            return
        self.forgotten += 1
        self._unflushed -= changes.nbytes
        self._failures.pop(conversation_id, None)
        self._not_before.pop(conversation_id, None)
        if self._mark is not None:
            self._mark.waiting.pop(conversation_id, None)
        if conversation_id not in self._writing:
            for watcher in self._clean_watchers:
                watcher(conversation_id)

    def watch_clean(self, watcher: Callable[[str], None]) -> None:
        """Call `watcher(conversation_id)` whenever a conversation has nothing unflushed
        left (the hot listing forgets what the store now knows)."""
        self._clean_watchers.append(watcher)

    def check_capacity(self) -> None:
        if self.unflushed_bytes > self._config.max_unflushed_bytes:
            raise Backpressure(retry_after=max(1.0, self._backoff.delay()))

    @property
    def unflushed_bytes(self) -> int:
        return self._unflushed

    def stats(self) -> dict[str, object]:
        """Counters for the admin API and metrics."""
        oldest = min(self._dirty_since.values(), default=None)
        return {
            "dirty_conversations": len(self._dirty),
            "writing_conversations": len(self._writing),
            "unflushed_bytes": self._unflushed,
            "unflushed_records": self._unflushed_records,
            "lag_ms": 0 if oldest is None else int((time.monotonic() - oldest) * 1000),
            "failing_conversations": len(self._failures),
            "batches_written": self.batches_written,
            "messages_written": self.messages_written,
            "flush_seconds": self.flush_seconds.snapshot(),
            "batch_records": self.batch_records.snapshot(),
            "fenced_writes": self.fenced_writes,
            "forgotten": self.forgotten,
        }

    def unflushed(self, conversation_id: str) -> tuple[int, int]:
        """(bytes, journal records) of the conversation not yet in the store."""
        nbytes = records = 0
        for changes in (self._writing.get(conversation_id), self._dirty.get(conversation_id)):
            if changes is not None:
                nbytes += changes.nbytes
                records += changes.records
        return nbytes, records

    def last_flush(self, conversation_id: str) -> float | None:
        """When (epoch seconds) the conversation was last written to the store, if
        among the last LAST_FLUSHES_KEPT conversations written."""
        return self._last_flush.get(conversation_id)

    def pending(self) -> Iterator[tuple[str, Changes]]:
        """Unflushed changes, older before newer for each conversation (read-your-writes)."""
        yield from self._writing.items()
        yield from self._dirty.items()

    # -- flushing ----------------------------------------------------------------------

    async def flush(self, conversation_id: str) -> None:
        """Write one conversation's dirty changes now (passivation, `store` durability)."""
        async with self._exclusive(conversation_id):
            if conversation_id not in self._dirty:
                return
            if not self._may_write(conversation_id):
                self.fenced_writes += 1
                raise StoreError(f"not written: this node may not own {conversation_id} now")
            changes = self._dirty.pop(conversation_id)
            self._writing[conversation_id] = changes
            started = time.perf_counter()
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
            self.flush_seconds.observe(time.perf_counter() - started)
            self._unflushed -= changes.nbytes
            self._unflushed_records -= changes.records
            self.batches_written += 1
            self.messages_written += len(changes.messages)
            self.batch_records.observe(changes.records)
            self._flushed(conversation_id)
            self._stored_at(conversation_id, changes.version)
            if conversation_id not in self._dirty:
                for watcher in self._clean_watchers:
                    watcher(conversation_id)

    async def flush_now(self, conversation_id: str) -> None:
        """Store one conversation's unflushed changes and return once they are stored
        (the admin's flush): here, `flush`."""
        await self.flush(conversation_id)

    def _flushed(self, conversation_id: str) -> None:
        """Remember when it was stored; its lag restarts if it was written to meanwhile
        (from now: an upper bound on when that write came)."""
        self._last_flush[conversation_id] = time.time()
        self._last_flush.move_to_end(conversation_id)
        if len(self._last_flush) > LAST_FLUSHES_KEPT:
            self._last_flush.popitem(last=False)
        if conversation_id in self._dirty:
            self._dirty_since[conversation_id] = time.monotonic()
        else:
            self._dirty_since.pop(conversation_id, None)

    async def flush_all(self, retries: int = 0) -> bool:
        """Mark the journal, write every dirty conversation, trim: True once all is stored
        and trimmed (recovery and shutdown wait for this; the background cycle does not)."""
        for attempt in range(retries + 1):
            if await self._flush_everything():
                return True
            if attempt < retries:
                await asyncio.sleep(self._backoff.delay())
        return False

    async def _flush_everything(self) -> bool:
        mark = await self._take_mark()
        if mark is None:
            return False
        results = await asyncio.gather(*(self._write(cid) for cid in list(mark.waiting)))
        return all(results) and not mark.waiting and await self._trim()

    async def _cycle(self) -> bool:
        """One background cycle: start the writes that are due, trim what is stored.
        False if something is left to retry later."""
        if self._mark is None and self._since_mark and await self._take_mark() is None:
            return False
        now = asyncio.get_running_loop().time()
        deferred = False
        for conversation_id in list(self._dirty):
            if conversation_id in self._flushing:
                continue
            if self._not_before.get(conversation_id, 0.0) > now:
                deferred = True
                continue
            if not self._may_write(conversation_id):  # until a renewal says which it is
                self.fenced_writes += 1
                deferred = True
                continue
            task = asyncio.create_task(self._write(conversation_id))
            self._flushing[conversation_id] = task
            task.add_done_callback(functools.partial(self._written, conversation_id))
        trimmed = await self._trim()
        if self._mark is None and self._since_mark:
            self._wake.set()  # what was journaled since the last mark needs a mark of its own
        return trimmed and not deferred

    def _written(self, conversation_id: str, _: asyncio.Task[bool]) -> None:
        del self._flushing[conversation_id]
        self._wake.set()  # newer changes, a retry or a completed mark may wait for a cycle

    async def _write(self, conversation_id: str) -> bool:
        """Flush one conversation under the concurrency limit; False (logged) on failure."""
        async with self._slots:
            try:
                await self.flush(conversation_id)
            except Exception as exc:  # noqa: BLE001 - any store failure is retried
                self._failures[conversation_id] += 1
                failures = self._failures[conversation_id]
                config = self._config
                delay = backoff_delay(failures, config.backoff_initial, config.backoff_max)
                self._not_before[conversation_id] = asyncio.get_running_loop().time() + delay
                self._backoff.failed()
                throttled.warning(
                    "flush", "flush of %s failed (%d in a row): %s", conversation_id, failures, exc
                )
                return False
        self._failures.pop(conversation_id, None)
        self._not_before.pop(conversation_id, None)
        self._backoff.succeeded()
        return True

    def _stored_at(self, conversation_id: str, version: int) -> None:
        self._stored[conversation_id] = max(version, self._stored.get(conversation_id, 0))
        mark = self._mark
        if mark is not None and mark.waiting.get(conversation_id, version + 1) <= version:
            del mark.waiting[conversation_id]

    async def _take_mark(self) -> _Mark | None:
        """A new checkpoint (replacing a pending one: it covers all that one waits for)."""
        async with self._marking:
            self._since_mark = False
            try:
                handle = await self._journal.mark()
            except (JournalError, OSError) as exc:  # e.g. EMFILE: no descriptor for a segment
                self._since_mark = True
                throttled.warning("mark", "journal mark failed: %s; retrying", exc)
                self._backoff.failed()
                return None
            await self._wait_settled()
            waiting: dict[str, int] = {}
            for conversation_id, changes in self.pending():
                waiting[conversation_id] = max(changes.version, waiting.get(conversation_id, 0))
            self._mark = _Mark(handle, waiting)
            return self._mark

    async def _trim(self) -> bool:
        """Trim up to the newest complete checkpoint and the versions stored since."""
        mark = self._mark
        completed = mark is not None and not mark.waiting
        if completed:
            assert mark is not None
            self._trimmable, self._mark = mark.handle, None
        if self._trimmable is _NO_MARK or not (completed or self._stored):
            return True
        stored, self._stored = self._stored, {}
        try:
            await self._journal.trim(self._trimmable, stored)
        except BaseException as exc:  # stored already: trimmed next time
            # A close cancels the cycle, maybe here: the close's own trim takes these over
            # (forgotten, the next start replayed them).
            for conversation_id, version in stored.items():
                self._stored_at(conversation_id, version)
            if not isinstance(exc, (JournalError, OSError)):
                raise
            throttled.warning("trim", "journal trim failed: %s", exc)
            self._backoff.failed()
            return False
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
                done = await self._cycle()
            except Exception as exc:  # noqa: BLE001 - the loop must outlive any one cycle
                throttled.warning("cycle", "write-behind cycle failed: %r; retrying", exc)
                self._backoff.failed()
                done = False
            if not done:
                self._wake.set()  # keep retrying, with backoff
                await asyncio.sleep(self._backoff.delay())


def _always(conversation_id: str) -> bool:
    return True
