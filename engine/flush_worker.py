"""The flusher process's work (`canopy flusher`): write a node's Redis journal behind.

The serving node journals each record and adds its conversation to the node's dirty set
(`redis_keys.dirty`). This worker takes that set (SPOP) every cycle and, for each
conversation, reads its journal stream after the version it has stored, applies the
records (`engine.replay`'s chain, `ConversationState.apply`) to a state it loaded from
the store, writes the coalesced changes in one `Store.write`, trims the stream up to the
stored version and publishes that version (`redis_keys.flushed`) for the node's
sidebar and backpressure. Nothing here is ever the only copy: a crash anywhere leaves
the records in the journal, and records are idempotent upserts on a version-guarded
store, so writing one twice changes nothing and no write goes backwards.

At start it takes every journaled conversation (`RedisJournal.journaled`) once: what a
killed flusher had taken from the dirty set is not forgotten. A cluster member's takes
those no other node holds the lease of: a holder marked them dirty for its own flusher
when it activated them (Store plus journal tail), and left to every member's start they
would be written once per member. One flusher per node: it holds a lease (SET NX PX,
renewed); a second one refuses to start (`LeaseHeld`).

Two flushers writing one conversation (a member's and the next owner's, for a moment
after a move) cannot undo each other: a row's write timestamp is its version
(persistence/scylla_writes.py), and each applies only what the fenced journal holds.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import cast

import msgspec
from redis.exceptions import RedisError

from engine import replay
from engine.conversation import ConversationState
from engine.directory_redis import node_of
from persistence import redis_keys
from persistence.background import Throttled, backoff_delay, stop
from persistence.flusher_lease import FlusherLease
from persistence.journal_redis import RedisJournal
from persistence.records import Created
from persistence.redis_pool import RedisPool
from persistence.remote_flusher import NUDGE_SECONDS
from persistence.resp import Arg, checked
from persistence.store import Changes, Store

log = logging.getLogger(__name__)
throttled = Throttled(log)

STATS_EVERY = 1.0  # seconds: unchanged counters are published again after this
FLUSHED_ENTRIES = 10_000  # the published-versions stream keeps about this many cycles
LEASE_READS = 1_000  # lease keys read in one round trip at a cluster member's start


@dataclass(frozen=True)
class FlushWorkerConfig:
    node: str  # the serving node whose journal this writes behind
    interval: float = 0.05  # seconds from one cycle's start to the next's
    concurrency: int = 16  # conversations written at once
    take: int = 10_000  # conversations taken from the dirty set per cycle at most
    max_state_bytes: int = 256 * 1024 * 1024  # conversation states kept (LRU), by budget
    lease_seconds: float = 10.0
    backoff_initial: float = 0.05
    backoff_max: float = 5.0
    close_timeout: float = 10.0  # the final drain's budget; what is left stays journaled
    cluster: bool = False  # the node is a cluster member: its start skips peers' leases


class LeaseHeld(Exception):
    """Another flusher runs for this node."""


class _States:
    """Conversation states as last stored, least recently used first, within a budget."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._states: OrderedDict[str, ConversationState] = OrderedDict()
        self._bytes = 0

    def get(self, conversation_id: str) -> ConversationState | None:
        state = self._states.get(conversation_id)
        if state is not None:
            self._states.move_to_end(conversation_id)
        return state

    def put(self, conversation_id: str, state: ConversationState) -> None:
        self.drop(conversation_id)
        self._states[conversation_id] = state
        self._bytes += state.nbytes
        while self._bytes > self._max_bytes and len(self._states) > 1:
            _, oldest = self._states.popitem(last=False)
            self._bytes -= oldest.nbytes

    def drop(self, conversation_id: str) -> None:
        state = self._states.pop(conversation_id, None)
        if state is not None:
            self._bytes -= state.nbytes

    def __len__(self) -> int:
        return len(self._states)


class FlushWorker:
    """Writes one node's journal behind; an async context manager that runs its cycles."""

    def __init__(
        self, store: Store, journal: RedisJournal, pool: RedisPool, config: FlushWorkerConfig
    ) -> None:
        self._store = store
        self._journal = journal
        # Each cycle's commands go over the pool's lean channel: through redis-py's an
        # idle cycle's two round trips cost the child 2 % of a core (docs/decisions.md).
        self._lean = pool.lean
        self._config = config
        self._lease = FlusherLease(pool.client, config.node, config.lease_seconds)
        self._states = _States(config.max_state_bytes)
        self._due: set[str] = set()  # conversations that may have records to store
        self._rescan = False  # a take failed: look at every journaled conversation again
        self._flushing: dict[str, asyncio.Task[None]] = {}
        self._slots = asyncio.Semaphore(config.concurrency)
        self._failures: dict[str, int] = {}
        self._not_before: dict[str, float] = {}
        self._stored: dict[str, int] = {}  # stored since the last trim and publication
        self._tasks: list[asyncio.Task[None]] = []
        self.lost_lease = asyncio.Event()
        self._closing = False
        self.batches_written = 0
        self.messages_written = 0
        self.records_applied = 0
        self.cycles = 0
        self._published: dict[str, int] = {}  # the counters last published, less `cycles`
        self._published_at = 0.0

    async def __aenter__(self) -> FlushWorker:
        if not await self._lease.take():
            holder = await self._lease.holder()
            raise LeaseHeld(f"another flusher runs for node {self._config.node} ({holder})")
        try:
            journaled = await self._journaled()
        except BaseException:
            await self._lease.release()
            raise
        self._due.update(journaled)
        self._tasks = [
            asyncio.create_task(self._run(), name="flush-worker"),
            asyncio.create_task(self._renew(), name="flush-worker-lease"),
        ]
        log.info("flusher for node %s started: %d journaled conversations to check",
                 self._config.node, len(self._due))  # fmt: skip
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Stop the cycles, then store what is due within `close_timeout` (the rest stays
        journaled: the next flusher takes every journaled conversation at its start)."""
        self._closing = True  # the cycles stop even if a cancellation is swallowed
        run, renew = self._tasks
        await stop(run, self._config.close_timeout)
        drained = False
        try:
            async with asyncio.timeout(self._config.close_timeout):
                while not (drained := await self._drain()):
                    await asyncio.sleep(self._config.backoff_initial)
        except Exception as exc:  # noqa: BLE001 - what is left stays journaled
            log.warning("flusher's last drain cut short: %r", exc)
        for task in [*self._flushing.values(), renew]:
            await stop(task, self._config.close_timeout)
        try:
            await self._lease.release()
        except RedisError as exc:  # it expires on its own
            log.warning("flusher lease not released: %s", exc)
        left = "nothing left due" if drained else f"{len(self._due)} conversations left due"
        log.info("flusher closed: %d batches, %d messages written, %s",
                 self.batches_written, self.messages_written, left)  # fmt: skip

    def stats(self) -> dict[str, int]:
        return {
            "pid": os.getpid(),
            "backlog_conversations": len(self._due) + len(self._flushing),
            "failing_conversations": len(self._failures),
            "cached_states": len(self._states),
            "batches_written": self.batches_written,
            "messages_written": self.messages_written,
            "records_applied": self.records_applied,
            "cycles": self.cycles,
        }

    async def _journaled(self) -> list[str]:
        """Every journaled conversation this flusher stores: a member's, those no other
        member holds."""
        journaled = await self._journal.journaled()
        if self._config.cluster:
            journaled = await self._not_held_elsewhere(journaled)
        return journaled

    async def _not_held_elsewhere(self, conversation_ids: list[str]) -> list[str]:
        """Those whose lease names no node or this one ("node-id epoch", engine/
        directory_redis.py), read in batches over the lean channel."""
        mine = []
        for start in range(0, len(conversation_ids), LEASE_READS):
            chunk = conversation_ids[start : start + LEASE_READS]
            held = checked(
                await self._lean.execute([("GET", redis_keys.lease(cid)) for cid in chunk])
            )
            mine += [
                cid
                for cid, value in zip(chunk, held, strict=True)
                if value is None or node_of(_text(value)) == self._config.node
            ]
        return mine

    # -- cycles ----------------------------------------------------------------------------

    async def _run(self) -> None:
        """A cycle every `interval`; between two cycles further apart than NUDGE_SECONDS,
        a look every NUDGE_SECONDS at what the admin asked to be stored at once."""
        interval = self._config.interval
        next_cycle = time.monotonic() + interval
        while not self._closing:
            now = time.monotonic()
            await asyncio.sleep(max(0.0, min(next_cycle, now + NUDGE_SECONDS) - now))
            full = time.monotonic() >= next_cycle
            if full:
                next_cycle = time.monotonic() + interval
            try:
                await self._cycle(full)
            except Exception as exc:  # noqa: BLE001 - the loop must outlive any one cycle
                throttled.warning("cycle", "flusher cycle failed: %r; retrying", exc)

    async def _cycle(self, full: bool = True) -> None:
        """Take the dirty set (only the asked-now set between cycles), start the writes
        that are due, trim and publish what was stored since the last cycle."""
        self.cycles += full
        if self._rescan:  # a take's answer was lost: its SPOP may have emptied the set
            self._due.update(await self._journaled())
            self._rescan = False
        try:
            self._due.update(await self._take(full))
        except BaseException:
            self._rescan = True
            raise
        now = time.monotonic()
        for conversation_id in list(self._due):
            if conversation_id in self._flushing or self._not_before.get(conversation_id, 0) > now:
                continue
            self._due.discard(conversation_id)
            task = asyncio.create_task(self._write(conversation_id))
            self._flushing[conversation_id] = task
            task.add_done_callback(functools.partial(self._written, conversation_id))
        await self._publish()

    async def _drain(self) -> bool:
        """One closing round: take the dirty set, store everything due, trim, publish."""
        taken = await self._take()
        self._due.update(taken)
        if self._flushing:
            await asyncio.wait(list(self._flushing.values()))
        due, self._due = self._due, set()
        await asyncio.gather(*(self._write(cid) for cid in due))
        await self._publish()
        return not self._due and not taken

    async def _take(self, full: bool = True) -> list[str]:
        """Conversations asked to be stored now and, in a full take, those the node
        journaled since the last one (its dirty set, emptied)."""
        node, take = self._config.node, self._config.take
        commands: list[tuple[Arg, ...]] = [("SPOP", redis_keys.flush_now(node), take)]
        if full:
            commands.append(("SPOP", redis_keys.dirty(node), take))
        replies = checked(await self._lean.execute(commands))
        return [_text(raw) for taken in replies for raw in cast(list[bytes], taken or [])]

    def _written(self, conversation_id: str, _: asyncio.Task[None]) -> None:
        del self._flushing[conversation_id]

    async def _write(self, conversation_id: str) -> None:
        """Store one conversation's new records; on failure it is due again after a backoff."""
        async with self._slots:
            try:
                await self._store_new_records(conversation_id)
            except Exception as exc:  # noqa: BLE001 - a store or journal failure is retried
                self._states.drop(conversation_id)  # it may be ahead of the store now
                failures = self._failures.get(conversation_id, 0) + 1
                self._failures[conversation_id] = failures
                config = self._config
                delay = backoff_delay(failures, config.backoff_initial, config.backoff_max)
                self._not_before[conversation_id] = time.monotonic() + delay
                self._due.add(conversation_id)
                throttled.warning("flush", "flush of %s failed (%d in a row): %s",
                                  conversation_id, failures, exc)  # fmt: skip
                return
        self._failures.pop(conversation_id, None)
        self._not_before.pop(conversation_id, None)

    async def _store_new_records(self, conversation_id: str) -> None:
        state, steps = await self._catch_up(conversation_id)
        changes = Changes()
        applied = 0
        for step in steps:
            record = step.record
            if state is None:
                if not isinstance(record.event, Created):
                    break
                state = ConversationState.from_created(record.seq, record.event, changes)
            elif state.refuses(record.event) is None:
                state.apply(record.seq, record.event, changes)
            else:  # the serving node sets it aside when it activates the conversation
                break
            applied += 1
        if state is None:
            return
        if applied:
            await self._store.write(conversation_id, changes)
            self.batches_written += 1
            self.messages_written += len(changes.messages)
            self.records_applied += applied
        self._stored[conversation_id] = state.version
        if state.meta.deleted:
            self._states.drop(conversation_id)
        else:
            self._states.put(conversation_id, state)

    async def _catch_up(
        self, conversation_id: str
    ) -> tuple[ConversationState | None, list[replay.Replayed]]:
        """The conversation's state and the records to apply on it. A state kept from an
        earlier cycle may be behind the store (another node wrote it, then trimmed): a
        tail that does not start on its version means: load the store again."""
        state = self._states.get(conversation_id)
        for attempt in range(2):
            if state is None:
                snapshot = await self._store.load(conversation_id)
                if snapshot is not None and snapshot.conversation.deleted:
                    self._stored[conversation_id] = snapshot.conversation.version  # trim the rest
                    return None, []
                state = ConversationState.from_snapshot(snapshot) if snapshot else None
            version = state.version if state else 0
            entries = await self._journal.tail(conversation_id, version)
            decoded, _ = replay.decode(entries)  # undecodable ones: set aside at activation
            plan = replay.plan(decoded, version)
            if plan.apply or not plan.stranded or attempt:
                break
            self._states.drop(conversation_id)
            state = None
        return state, plan.apply

    async def _publish(self) -> None:
        """Trim the streams up to what is stored, then tell the node what that is (and
        how this flusher is doing)."""
        stored, self._stored = self._stored, {}
        node = self._config.node
        try:
            commands: list[tuple[Arg, ...]] = []
            if stored:
                await self._journal.trim(None, stored)
                entry = msgspec.msgpack.encode(list(stored.items()))
                commands.append(("XADD", redis_keys.flushed(node),
                                 "MAXLEN", "~", FLUSHED_ENTRIES, "*", "s", entry))  # fmt: skip
            stats = self.stats()
            if self._stats_changed(stats) or stored:
                fields = [part for item in stats.items() for part in item]
                commands.append(("HSET", redis_keys.flusher_stats(node), *fields))
            if commands:
                checked(await self._lean.execute(commands))
        except BaseException:
            for cid, version in stored.items():  # stored already: trimmed next time
                self._stored[cid] = max(version, self._stored.get(cid, 0))
            raise

    def _stats_changed(self, stats: dict[str, int]) -> bool:
        """Whether the counters are worth publishing: any but `cycles` moved, or a second
        passed (an idle cycle then sends nothing but its two SPOPs, in one write)."""
        now = time.monotonic()
        counters = {k: v for k, v in stats.items() if k != "cycles"}
        if counters == self._published and now - self._published_at < STATS_EVERY:
            return False
        self._published, self._published_at = counters, now
        return True

    async def _renew(self) -> None:
        while not self._closing:
            await asyncio.sleep(self._config.lease_seconds / 3)
            try:
                held = await self._lease.renew()
            except RedisError as exc:
                throttled.warning("lease", "flusher lease renewal failed: %s", exc)
                continue
            if not held:
                log.error("flusher lease of node %s was lost: another flusher may run; "
                          "stopping", self._config.node)  # fmt: skip
                self.lost_lease.set()
                return


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw
