"""The registry (Orleans' catalog): activation, passivation and the node's memory budget.

Actors are activated on first touch from the Store snapshot plus the journal tail;
concurrent first touches share one activation. Idle actors, and the least recently
used ones while the node's hot conversations cost more bytes (engine/budget.py) or
hold more messages than its budget, are flushed and then dropped; reactivation
rebuilds exactly the same state.

A conversation bigger than half the budget is oversized: it stays hot beside the
budget rather than pushing every other conversation out (which made the node thrash
between it and them), and at most one is hot at a time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from engine import replay
from engine.access import Principal
from engine.actor import (
    ActorConfig,
    ConversationActor,
    NewConversation,
    NewMessage,
    Passivated,
    commit,
    gone,
)
from engine.budget import default_max_hot_bytes
from engine.conversation import ConversationState
from engine.errors import CanopyError, NotFound, Unavailable
from engine.first_reads import MAX_AGE_SECONDS, FirstReads
from engine.moves import ActivityMoves
from engine.sidebar import Filters, HotListing, Page, Sidebar
from persistence.background import Backoff, Throttled
from persistence.flusher import Flusher
from persistence.journal import Entry, Journal, JournalError
from persistence.records import Created, Message, Record, Snapshot
from persistence.store import Changes, Store, StoreError

log = logging.getLogger(__name__)
throttled = Throttled(log)

T = TypeVar("T")
EVICTION_BATCH = 16  # passivations at once while over the budget


@dataclass(frozen=True)
class RegistryConfig:
    actor: ActorConfig = ActorConfig()
    max_hot_bytes: int = field(default_factory=default_max_hot_bytes)
    max_hot_messages: int = 2_000_000
    idle_seconds: float = 600.0
    sidebar_first_reads_seconds: float = MAX_AGE_SECONDS  # engine/first_reads.py; 0: none

    def oversized(self, actor: ConversationActor) -> bool:
        """Too big to count against the budget: admitting it would evict most others."""
        return actor.nbytes > self.max_hot_bytes // 2 or len(actor) > self.max_hot_messages // 2


class Registry:
    """Owns the hot actors of this node; an async context manager."""

    def __init__(
        self, store: Store, journal: Journal, flusher: Flusher, config: RegistryConfig
    ) -> None:
        self._store = store
        self._journal = journal
        self._flusher = flusher
        self._config = config
        self._hot: OrderedDict[str, ConversationActor] = OrderedDict()
        self._touched: dict[str, float] = {}
        self._activating: dict[str, asyncio.Future[ConversationActor]] = {}
        self._passivating: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._eviction: asyncio.Task[None] | None = None
        self._eviction_backoff = Backoff(0.05, 5.0)
        self._hot_messages = 0
        self._hot_bytes = 0
        # (bytes, messages) each hot actor was last counted at: the totals move by what
        # an actor's count changed, so they stay exact however mutations interleave.
        self._counted: dict[str, tuple[int, int]] = {}
        self._oversized: set[str] = set()  # hot actors kept beside the budget
        first_reads = FirstReads(config.sidebar_first_reads_seconds)
        self._sidebar = Sidebar(store, HotListing(), ActivityMoves(), first_reads=first_reads)
        flusher.watch_clean(self._sidebar.flushed)
        self.activations = 0
        self.passivations = 0
        self.oversized = 0  # times an oversized conversation was kept hot

    async def __aenter__(self) -> Registry:
        await self.recover()
        for actor in list(self._hot.values()):  # recovery applied records to them directly
            self._count(actor)
        self._check_budget()
        self._spawn(self._sweep_idle())
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        log.info(
            "registry closed: %d hot actors, %d activations, %d passivations",
            len(self._hot),
            self.activations,
            self.passivations,
        )

    # -- lookup and activation -----------------------------------------------------------

    @property
    def hot_messages(self) -> int:
        return self._hot_messages

    @property
    def hot_bytes(self) -> int:
        """What the hot conversations cost by the budget's model (engine/budget.py)."""
        return self._hot_bytes

    def stats(self) -> dict[str, Any]:
        return {
            "hot_actors": len(self._hot),
            "hot_bytes": self._hot_bytes,
            "hot_messages": self._hot_messages,
            "max_hot_bytes": self._config.max_hot_bytes,
            "activations": self.activations,
            "passivations": self.passivations,
            "oversized": self.oversized,
            "oversized_hot": len(self._oversized),
        }

    def __len__(self) -> int:
        return len(self._hot)

    def hot(self, conversation_id: str) -> tuple[ConversationActor, float] | None:
        """The conversation's actor and when it was last touched (time.monotonic), if
        it is hot; neither activated nor touched (the admin API's look)."""
        actor = self._hot.get(conversation_id)
        return None if actor is None else (actor, self._touched[conversation_id])

    def hot_actors(self) -> Iterator[tuple[ConversationActor, float]]:
        """Each hot actor with when it was last touched (time.monotonic), least
        recently used first (the admin API's listing)."""
        touched = self._touched
        return ((actor, touched[cid]) for cid, actor in self._hot.items())

    async def get(self, principal: Principal, conversation_id: str) -> ConversationActor:
        """The conversation's actor, activating it if needed; NotFound if unknown, deleted
        or not visible to the caller."""
        actor = await self._hot_actor(conversation_id)
        actor.require(principal)
        return actor

    async def _hot_actor(self, conversation_id: str) -> ConversationActor:
        actor = self._hot.get(conversation_id)
        if actor is None:
            actor = await self._activate(conversation_id)
        else:
            self._hot.move_to_end(conversation_id)
            self._touched[conversation_id] = time.monotonic()
        if gone(actor.meta):
            raise NotFound(f"conversation {conversation_id} not found")
        return actor

    async def run(
        self,
        principal: Principal,
        conversation_id: str,
        operation: Callable[[ConversationActor], Awaitable[T]],
    ) -> T:
        """Run a mutation on the conversation's actor, retrying if it passivates meanwhile."""
        while True:
            actor = await self.get(principal, conversation_id)
            try:
                result = await operation(actor)
            except Passivated:
                continue
            finally:
                if not actor.closed:
                    self._count(actor)
            self._check_budget()
            return result

    async def expire(self, conversation_id: str) -> bool:
        """Delete the conversation if it has expired, then passivate it (the retention
        sweeper's call); False if it has not, or is unknown or deleted already."""
        while True:
            actor = self._hot.get(conversation_id)
            try:
                if actor is None:
                    actor = await self._activate(conversation_id)
                expired = await actor.expire()
            except NotFound:
                return False
            except Passivated:
                continue
            finally:
                if actor is not None and not actor.closed:
                    self._count(actor)
            if expired:  # nothing of it is served again: free its memory now
                await self.passivate(conversation_id)
            return expired

    async def _activate(self, conversation_id: str) -> ConversationActor:
        pending = self._activating.get(conversation_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[ConversationActor] = asyncio.get_running_loop().create_future()
        self._activating[conversation_id] = future
        try:
            actor = await self._load(conversation_id)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: only waiters that exist re-raise it
            raise
        else:
            future.set_result(actor)
            return actor
        finally:
            del self._activating[conversation_id]

    async def _load(
        self, conversation_id: str, replayed: list[replay.Replayed] | None = None
    ) -> ConversationActor:
        """Build the actor from the Store plus the journal records after its version
        (`replayed` at recovery, else the journal's tail)."""
        passivating = self._passivating.get(conversation_id)
        if passivating is not None:
            await asyncio.shield(passivating)
        try:
            snapshot = await self._store.load(conversation_id)
            if snapshot is None and replayed is None and not await self._unstored(conversation_id):
                raise NotFound(f"conversation {conversation_id} not found")
            if snapshot is not None and snapshot.conversation.deleted:
                raise NotFound(f"conversation {conversation_id} not found")
            await self._journal.acquire(conversation_id)
            if replayed is None:
                snapshot, replayed = await self._tail(conversation_id, snapshot)
            actor = await self._replay(conversation_id, snapshot, replayed)
        except (StoreError, JournalError) as exc:
            raise Unavailable(f"cannot activate conversation: {exc}") from None
        self._count(actor)
        self.activations += 1
        await self._keep_within_budget()
        return actor

    async def _unstored(self, conversation_id: str) -> bool:
        """Whether an unknown conversation has journal records: with a flusher process, a
        passivated one may not be stored yet (read without acquiring it: a lookup of an
        unknown id leaves nothing behind)."""
        if self._flusher.writes_here:
            return False
        return bool(await self._journal.tail(conversation_id, 0))

    async def _tail(
        self, conversation_id: str, snapshot: Snapshot | None
    ) -> tuple[Snapshot | None, list[replay.Replayed]]:
        """The snapshot to build on and the journal records after it."""
        version = snapshot.conversation.version if snapshot else 0
        if self._flusher.writes_here:
            return snapshot, await self._decode(await self._journal.tail(conversation_id, version))
        # The flusher process stores and trims meanwhile (trims only follow its store
        # writes): read the whole stream, then check the store did not move past the
        # snapshot, so no record after the version built on can have been trimmed unseen.
        replayed = await self._decode(await self._journal.tail(conversation_id, 0))
        if replayed and replayed[0].record.seq <= version + 1:
            return snapshot, replayed  # nothing after the snapshot was trimmed
        head = await self._store.head(conversation_id)
        if head is not None and head.conversation.version > version:
            snapshot = await self._store.load(conversation_id)
            if snapshot is None or snapshot.conversation.deleted:
                raise NotFound(f"conversation {conversation_id} not found")
        return snapshot, replayed

    async def _decode(self, entries: list[Entry]) -> list[replay.Replayed]:
        """The entries that decode; the others are set aside (quarantined)."""
        decoded, undecodable = replay.decode(entries)
        for entry, reason in undecodable:
            await self._journal.set_aside(entry, reason)
        return decoded

    async def _replay(
        self, conversation_id: str, snapshot: Snapshot | None, replayed: list[replay.Replayed]
    ) -> ConversationActor:
        """Apply the acknowledged chain of `replayed` on top of `snapshot`; set aside what
        cannot be applied (behind a gap, or inconsistent with the state)."""
        plan = replay.plan(replayed, snapshot.conversation.version if snapshot else 0)
        actor = self._admit(ConversationState.from_snapshot(snapshot)) if snapshot else None
        try:
            actor = await self._apply_plan(conversation_id, actor, plan)
        except BaseException:  # a set-aside failed: a half-replayed actor must not serve
            if conversation_id in self._hot:
                self._drop(self._hot[conversation_id])
            raise
        if actor is None:
            raise NotFound(f"conversation {conversation_id} not found")
        actor.resync(plan.last_seq)
        return actor

    async def _apply_plan(
        self, conversation_id: str, actor: ConversationActor | None, plan: replay.Plan
    ) -> ConversationActor | None:
        """Apply the plan's chain until a record is refused; set aside the rest."""
        problem: str | None = None
        for position, step in enumerate(plan.apply):
            problem = self._apply_replayed(actor, step.record)
            if problem is not None:
                plan.stranded[:0] = plan.apply[position:]
                break
            actor = self._hot[conversation_id]
        if plan.stranded:
            version = actor.state.version if actor else 0
            log.error("conversation %s: journal replay stopped at seq %d (%s); %d later "
                      "records set aside", conversation_id, version,
                      problem or "a record is missing", len(plan.stranded))  # fmt: skip
            for step in plan.stranded:
                await self._journal.set_aside(
                    step.entry, f"{conversation_id}: after seq {version}, where replay stopped"
                )
        return actor

    def _apply_replayed(self, actor: ConversationActor | None, record: Record) -> str | None:
        """Apply one replayed record; why it cannot be, if it cannot (nothing changed then)."""
        event = record.event
        if actor is None:
            if not isinstance(event, Created):
                return "the conversation's creation is missing"
            self._flusher.record(record.conversation_id, self._admitting(record.seq, event))
            return None
        problem = actor.state.refuses(event)
        if problem is not None:
            return problem
        replaying = actor

        def apply(changes: Changes) -> None:
            replaying.apply(record.seq, event, changes)

        self._flusher.record(record.conversation_id, apply)
        return None

    def _admit(self, state: ConversationState) -> ConversationActor:
        actor = ConversationActor(
            state, self._journal, self._flusher, self._config.actor, self._sidebar.observe
        )
        self._hot[actor.id] = actor
        self._touched[actor.id] = time.monotonic()
        self._count(actor)
        return actor

    def _count(self, actor: ConversationActor) -> None:
        """Bring the hot bytes and messages up to date with what the actor holds now."""
        nbytes, messages = actor.nbytes, len(actor)
        old_bytes, old_messages = self._counted.get(actor.id, (0, 0))
        self._hot_bytes += nbytes - old_bytes
        self._hot_messages += messages - old_messages
        self._counted[actor.id] = nbytes, messages
        if self._config.oversized(actor):
            if actor.id not in self._oversized:
                self._oversized.add(actor.id)
                self.oversized += 1
        else:
            self._oversized.discard(actor.id)

    def _admitting(self, seq: int, event: Created) -> Callable[[Changes], None]:
        """What applies a creation event: admit the actor it makes."""

        def admit(changes: Changes) -> None:
            actor = self._admit(ConversationState.from_created(seq, event, changes))
            self._sidebar.observe(None, actor.meta, event)

        return admit

    # -- creation --------------------------------------------------------------------------

    async def create(self, principal: Principal, new: NewConversation) -> ConversationActor:
        """Create a conversation with its root message (and a fork's copied messages)."""
        principal.require_write()
        event = new.created()
        conversation_id = event.conversation.conversation_id
        try:
            await self._journal.acquire(conversation_id)
        except JournalError as exc:
            raise Unavailable(f"journal unavailable: {exc}") from None

        # A creation waits for the journal even in `memory` mode: ids handed out must exist.
        durability = self._config.actor.durability
        await commit(
            self._journal, self._flusher, "journal" if durability == "memory" else durability,
            Record(conversation_id, 1, event, prev=0), self._admitting(1, event),
        )  # fmt: skip
        actor = self._hot[conversation_id]
        await self._keep_within_budget()
        return actor

    # -- message reads and appends: what the message routes ask ---------------------------

    async def revision(self, principal: Principal, conversation_id: str) -> int:
        return (await self.get(principal, conversation_id)).meta.version

    async def message(
        self, principal: Principal, conversation_id: str, message_id: str
    ) -> tuple[Message, list[str]]:
        """The message and its lineage (ids, root first)."""
        path = (await self.get(principal, conversation_id)).lineage(message_id)
        return path[-1], [node.message_id for node in path]

    async def lineage(
        self, principal: Principal, conversation_id: str, message_id: str
    ) -> list[Message]:
        return (await self.get(principal, conversation_id)).lineage(message_id)

    async def children(
        self, principal: Principal, conversation_id: str, message_id: str
    ) -> tuple[list[str], Sequence[Message]]:
        """The parent's lineage (ids) and its children in creation order."""
        actor = await self.get(principal, conversation_id)
        lineage = [node.message_id for node in actor.lineage(message_id)]
        return lineage, actor.children(message_id)

    async def append(
        self, principal: Principal, conversation_id: str, new: NewMessage
    ) -> tuple[Message, list[str]]:
        """Append a message; it and its lineage (ids, root first)."""

        async def append(actor: ConversationActor) -> tuple[Message, list[str]]:
            node = await actor.append(principal, new)
            return node, [n.message_id for n in actor.lineage(node.message_id)]

        return await self.run(principal, conversation_id, append)

    # -- listing -----------------------------------------------------------------------------

    async def user_conversations(self, principal: Principal, user_id: str, limit: int) -> list[str]:
        """Conversations the user owns or was shared, most recently active first."""
        return await self._sidebar.ids(principal, user_id, limit)

    async def sidebar(
        self, principal: Principal, filters: Filters, limit: int, cursor: str | None
    ) -> Page:
        return await self._sidebar.page(principal, filters, limit, cursor)

    # -- recovery, passivation, budget ----------------------------------------------------

    async def recover(self) -> None:
        """Replay the journal into actors, then flush, before the node serves (unless a
        flusher process stores what the journal holds)."""
        if not self._flusher.writes_here:
            return
        entries = await self._journal.replay()
        by_conversation: dict[str, list[replay.Replayed]] = {}
        for step in await self._decode(entries):
            by_conversation.setdefault(step.record.conversation_id, []).append(step)
        for conversation_id, mine in by_conversation.items():
            try:
                await self._load(conversation_id, mine)
            except NotFound:
                log.error("journal records for unknown conversation %s", conversation_id)
        self._journal.recovered()  # all of it is dirty or set aside: marks may now cover it
        if entries:
            log.info(
                "recovered %d journal records into %d conversations", len(entries), len(self._hot)
            )
        if not await self._flusher.flush_all(retries=10):
            raise Unavailable("cannot flush recovered journal records to the store")

    async def passivate(self, conversation_id: str) -> bool:
        """Flush the actor and drop it; False (and still hot) if the flush failed."""
        actor = self._hot.get(conversation_id)
        if actor is None or conversation_id in self._passivating:
            return False
        task = asyncio.ensure_future(self._passivate(actor))
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
            self._drop(actor)
            self.passivations += 1

    def _drop(self, actor: ConversationActor) -> None:
        """Forget a hot actor (its dirty changes stay with the flusher)."""
        actor.closed = True
        self._journal.release(actor.id)
        nbytes, messages = self._counted.pop(actor.id)
        self._hot_bytes -= nbytes
        self._hot_messages -= messages
        self._oversized.discard(actor.id)
        del self._hot[actor.id]
        del self._touched[actor.id]

    def _check_budget(self) -> None:
        if self._eviction is None and self._over(1.0):
            self._eviction = asyncio.ensure_future(self._evict())
            self._tasks.add(self._eviction)
            self._eviction.add_done_callback(self._tasks.discard)

    async def _keep_within_budget(self) -> None:
        """Start eviction if over the budget; past twice the budget, wait for it, so that
        creations and activations cannot outrun the passivations (each is a flush)."""
        self._check_budget()
        if self._eviction is not None and self._over(2.0):
            await asyncio.shield(self._eviction)

    def _over(self, share: float) -> bool:
        """Whether the conversations within the budget cost more than `share` of it, or
        more than one oversized conversation is hot."""
        if len(self._oversized) > 1:
            return True
        config = self._config
        nbytes, messages = self._hot_bytes, self._hot_messages
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
            return [next(cid for cid in self._hot if cid in self._oversized)]
        config = self._config
        excess_bytes = self._hot_bytes - int(config.max_hot_bytes * 0.9)
        excess_messages = self._hot_messages - int(config.max_hot_messages * 0.9)
        newest = next(reversed(self._hot), None)
        victims: list[str] = []
        for conversation_id in self._hot:
            done = excess_bytes <= 0 and excess_messages <= 0
            if done or conversation_id == newest or len(victims) == EVICTION_BATCH:
                break
            if conversation_id not in self._oversized and conversation_id not in self._passivating:
                victims.append(conversation_id)
                counted_bytes, counted_messages = self._counted[conversation_id]
                excess_bytes -= counted_bytes
                excess_messages -= counted_messages
        return victims

    async def _sweep_idle(self) -> None:
        period = max(0.05, self._config.idle_seconds / 4)
        while True:
            await asyncio.sleep(period)
            try:
                await self._passivate_idle()
            except Exception as exc:  # noqa: BLE001 - the next sweep tries again
                throttled.warning("sweep", "idle sweep failed: %r", exc)

    async def _passivate_idle(self) -> None:
        cutoff = time.monotonic() - self._config.idle_seconds
        idle = [cid for cid, at in self._touched.items() if at < cutoff]
        for conversation_id in idle:
            await self.passivate(conversation_id)

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
