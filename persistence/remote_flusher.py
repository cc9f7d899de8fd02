"""The serving side of a separate flusher process (`canopy serve --flusher-process`).

Actors and the registry use it in place of the in-process `Flusher`: a mutation is
applied to the actor's state (its changes go to a scratch `Changes`, dropped), and its
conversation is added to the node's dirty set in Redis: one SADD per poll interval for
every conversation journaled since, in the same round trip as the poll (a SADD per
append would cost the serving process about as much CPU as the append's journal send).
The flusher process (engine/flush_worker.py) takes that set, stores the records from
the journal and publishes the versions it stored; this side reads them to keep its
unflushed-bytes count (backpressure), to tell the sidebar's hot listing which
conversations the store now knows, and to show the flusher's backlog in `stats()`.

Nothing to write here: passivation drops an actor at once (reactivation reads the
store plus the journal tail), and start-up recovery is the flusher process's.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import msgspec
from redis.exceptions import RedisError

from persistence import redis_keys
from persistence.background import Throttled, stop
from persistence.flusher import Backpressure, Flusher, FlusherConfig
from persistence.journal import Journal
from persistence.redis_pool import Client, Lean
from persistence.resp import Arg, checked, pairs
from persistence.store import Changes, Store, StoreError

log = logging.getLogger(__name__)
throttled = Throttled(log)

_STORED = msgspec.msgpack.Decoder(list[tuple[str, int]])
# seconds: how often the flusher process looks for a flush asked now (`flush_now`) when
# its cycles are further apart, and how often that flush reads its progress
NUDGE_SECONDS = 0.05


@dataclass(frozen=True)
class RemoteFlusherConfig:
    node: str
    flusher: FlusherConfig = FlusherConfig()  # interval (polls), max_unflushed_bytes
    down_seconds: float = 10.0  # the flusher without a lease this long: writes get 503
    flush_now_timeout: float = 10.0  # the admin's flush waits this long for the store
    close_timeout: float = 3.0


class RemoteFlusher(Flusher):
    """A `Flusher` whose writing happens in the node's flusher process."""

    writes_here = False

    def __init__(
        self,
        store: Store,
        journal: Journal,
        config: RemoteFlusherConfig,
        client: Client,
        lean: Lean,
        process_stats: Callable[[], dict[str, object]] = dict,
    ) -> None:
        super().__init__(store, journal, config.flusher)
        self._remote = config
        self._process_stats = process_stats  # the supervisor's: restarts, pid
        self._client = client  # the node's shared pool's: closed after this flusher
        self._lean = lean  # the pool's lean channel: the poll, 20 times a second
        # Per conversation, each record not yet known stored: (version, nbytes, when).
        # conversation -> (version, bytes, when journaled, records) of each batch unstored
        self._unstored: dict[str, deque[tuple[int, int, float, int]]] = {}
        self._to_mark: set[str] = set()  # journaled, not yet in the dirty set
        self._to_nudge: set[str] = set()  # asked to be stored at once (`flush_now`)
        self._waiting: set[str] = set()  # a `flush_now` waits for these
        self._taken: set[str] = set()  # of those, forgotten meanwhile: another node's now
        self._unsent: asyncio.Future[None] | None = None  # a `memory` append not yet sent
        self._poller: asyncio.Task[None] | None = None
        self._last_id = b"0-0"
        self._flusher_stats: dict[str, int] = {}
        self._lease_ms = 0
        self._down_since: float | None = None
        self._closing = False
        self.diverged_appends = 0  # appends answered "may or may not be stored"

    async def __aenter__(self) -> RemoteFlusher:
        self._down_since = asyncio.get_running_loop().time()
        self._poller = asyncio.create_task(self._poll(), name="remote-flusher-poll")
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Send the last dirty marks (the flusher process drains them as it stops)."""
        self._closing = True
        await stop(self._poller, self._remote.close_timeout)
        try:
            async with asyncio.timeout(self._remote.close_timeout):
                if self._appends:
                    await asyncio.wait(self._appends)
                if self._to_mark:
                    await self._client.sadd(redis_keys.dirty(self._remote.node), *self._to_mark)
        except (TimeoutError, RedisError) as exc:  # journaled: the next flusher start finds them
            log.warning("dirty marks not sent at close: %r", exc)

    # -- what actors call ------------------------------------------------------------

    def adopt(self, append: asyncio.Future[None]) -> None:
        super().adopt(append)
        self._unsent = append

    def record_many(
        self, conversation_id: str, applies: Sequence[Callable[[Changes], None]]
    ) -> None:
        """Apply the mutations to the actor's state; remember their size until they are
        stored and mark the conversation dirty once their records are in the journal.
        A batch is one entry (its last version): its records land in the journal in one
        script call, so the flusher process stores all of them or none."""
        changes = Changes()
        attempted = 0
        try:
            for apply in applies:
                attempted += 1
                apply(changes)
        finally:  # what was applied before one raised is still counted until stored
            if changes.version:
                self._remember(conversation_id, changes, attempted)

    def _remember(self, conversation_id: str, changes: Changes, records: int) -> None:
        loop = asyncio.get_running_loop()
        self._unstored.setdefault(conversation_id, deque()).append(
            (changes.version, changes.nbytes, loop.time(), records)
        )
        self._unflushed += changes.nbytes
        unsent, self._unsent = self._unsent, None
        if unsent is not None and not unsent.done():  # `memory`: acked before it was sent
            unsent.add_done_callback(lambda _: self._mark_dirty(conversation_id))
        else:
            self._mark_dirty(conversation_id)

    def diverged(self, conversation_id: str, epoch: int) -> None:
        """The flusher process stores what the journal holds, so a record that landed
        unanswered would be stored, and the actor's next record (numbered on its own
        state, `prev` before it) would never follow it in the store: the watchers drop
        the actor, rebuilt from the store and the journal at its next request."""
        self.diverged_appends += 1
        for watcher in self._diverged_watchers:
            watcher(conversation_id, epoch)

    def _mark_dirty(self, conversation_id: str) -> None:
        self._to_mark.add(conversation_id)  # sent with the next poll

    def forget(self, conversation_id: str) -> None:
        """Another node took the conversation: what is unstored of it is the new owner's
        to count (its flusher stores it; this node's may too, harmlessly)."""
        versions = self._unstored.pop(conversation_id, None)
        if versions is None:
            return
        if conversation_id in self._waiting:
            self._taken.add(conversation_id)
        self.forgotten += 1
        self._unflushed -= sum(v[1] for v in versions)
        for watcher in self._clean_watchers:
            watcher(conversation_id)

    def check_capacity(self) -> None:
        if self._unflushed > self._config.max_unflushed_bytes:
            raise Backpressure(retry_after=1.0)
        down = self._down_since
        if (
            down is not None
            and asyncio.get_running_loop().time() - down > self._remote.down_seconds
        ):
            raise Backpressure(retry_after=1.0)

    def stats(self) -> dict[str, object]:
        lag = 0.0
        if self._unstored:
            now = asyncio.get_running_loop().time()
            lag = now - min(versions[0][2] for versions in self._unstored.values())
        stats: dict[str, object] = {
            "dirty_conversations": len(self._unstored),
            "writing_conversations": 0,
            "unflushed_bytes": self._unflushed,
            "unflushed_records": sum(
                records for versions in self._unstored.values() for *_, records in versions
            ),
            "lag_ms": int(lag * 1000),
            "flusher_lease_ms": self._lease_ms,
            "diverged_appends": self.diverged_appends,
        }
        stats.update({f"flusher_{k}": v for k, v in self._flusher_stats.items()})
        process = self._process_stats()
        stats.update({f"flusher_process_{k}": int(v) for k, v in process.items()})  # type: ignore[call-overload]
        return stats

    def unflushed(self, conversation_id: str) -> tuple[int, int]:
        versions = self._unstored.get(conversation_id, ())
        return sum(v[1] for v in versions), sum(v[3] for v in versions)

    def pending(self) -> Iterator[tuple[str, Changes]]:
        return iter(())  # the rows live in the journal until the flusher process stores them

    async def flush(self, conversation_id: str) -> None:
        """Nothing to write: a reactivation reads the store plus the journal tail. But an
        append acknowledged before it was sent (`memory` durability) must be sent before
        the conversation is let go: a release forgets its epoch, and the journal refused
        a record still queued then ("not acquired"), acknowledged and never journaled."""
        if self._appends:
            await asyncio.wait(set(self._appends))

    async def flush_now(self, conversation_id: str) -> None:
        """Ask the flusher process to store what is unstored of the conversation now, and
        read its progress until it told it stored that much (later writes need not be:
        a busy conversation is never all stored; a flusher process starting or restarting
        is waited for). A StoreError after `flush_now_timeout`, or if another node took
        the conversation meanwhile."""
        versions = self._unstored.get(conversation_id)
        if not versions:
            return
        target = versions[-1][0]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._remote.flush_now_timeout
        self._waiting.add(conversation_id)
        try:
            await self._until_stored(conversation_id, target, deadline)
        finally:
            self._waiting.discard(conversation_id)
            taken = conversation_id in self._taken
            self._taken.discard(conversation_id)
        if taken:
            raise StoreError(f"another node took {conversation_id} meanwhile")

    async def _until_stored(self, conversation_id: str, target: int, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        while (versions := self._unstored.get(conversation_id)) and versions[0][0] <= target:
            if loop.time() >= deadline:
                raise StoreError(
                    f"the flusher process has not stored {conversation_id} "
                    f"within {self._remote.flush_now_timeout:g}s"
                )
            self._to_nudge.add(conversation_id)  # again each round: a record may be late
            try:
                await self._read_flusher()
            except Exception as exc:  # noqa: BLE001 - Redis unreachable: say so
                raise StoreError(f"cannot reach the flusher process: {exc}") from None
            await asyncio.sleep(NUDGE_SECONDS)

    async def flush_all(self, retries: int = 0) -> bool:
        return True  # the flusher process stores what the journal holds

    # -- what the flusher process tells ------------------------------------------------

    async def _poll(self) -> None:
        while not self._closing:
            try:
                await self._read_flusher()
            except Exception as exc:  # noqa: BLE001 - the next poll tries again
                throttled.warning("poll", "reading the flusher's progress failed: %r", exc)
            await asyncio.sleep(self._config.interval)

    async def _read_flusher(self) -> None:
        """One round trip: mark what was journaled since the last poll dirty, read what
        the flusher stored since, its counters and its lease. Over the lean channel:
        through redis-py's pipeline a poll cost 245-294 µs of CPU, 91-94 µs here
        (docs/decisions.md); the four keys share the node's hash tag, so over a Redis
        Cluster they go to one master in one write too."""
        node = self._remote.node
        marks, self._to_mark = self._to_mark, set()
        nudges, self._to_nudge = self._to_nudge, set()
        commands: list[tuple[Arg, ...]] = [
            ("XRANGE", redis_keys.flushed(node), b"(" + self._last_id, "+", "COUNT", 1000),
            ("HGETALL", redis_keys.flusher_stats(node)),
            ("PTTL", redis_keys.flusher_lease(node)),
        ]
        if marks:
            commands.append(("SADD", redis_keys.dirty(node), *marks))
        if nudges:
            commands.append(("SADD", redis_keys.flush_now(node), *nudges))
        try:
            replies = checked(await self._lean.execute(commands))
        except BaseException:
            self._to_mark |= marks  # sent with the next poll, or at close
            raise
        entries, stats, lease_ms = replies[:3]
        for entry_id, fields in entries:
            self._last_id = entry_id
            for conversation_id, version in _STORED.decode(pairs(fields)[b"s"]):
                self._stored_up_to(conversation_id, version)
        self._flusher_stats = {k.decode(): int(v) for k, v in pairs(stats).items()}
        self._lease_ms = max(0, int(lease_ms))
        if self._lease_ms:
            self._down_since = None
        elif self._down_since is None:
            self._down_since = asyncio.get_running_loop().time()

    def _stored_up_to(self, conversation_id: str, version: int) -> None:
        versions = self._unstored.get(conversation_id)
        if versions is None:
            return
        while versions and versions[0][0] <= version:
            self._unflushed -= versions.popleft()[1]
            self._flushed(conversation_id)  # as this node learns it
        if not versions:
            del self._unstored[conversation_id]
            for watcher in self._clean_watchers:
                watcher(conversation_id)
