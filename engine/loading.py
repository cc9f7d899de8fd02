"""How an actor is built: the Store snapshot plus the journal records after its version,
applied in their acknowledged order; what cannot be applied is set aside, not lost."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from engine import replay
from engine.activation import ActivationTable
from engine.actor import ConversationActor, Observer
from engine.conversation import ConversationState
from engine.errors import NotFound, Unavailable
from persistence.flusher import Flusher
from persistence.journal import Entry, Journal, JournalError
from persistence.records import Created, Record, Snapshot
from persistence.store import Changes, Store, StoreError

log = logging.getLogger(__name__)


class Loader:
    """Builds actors into the activation table from the Store and the journal."""

    def __init__(
        self,
        store: Store,
        journal: Journal,
        flusher: Flusher,
        table: ActivationTable,
        acquire: Callable[[str], Awaitable[object]],
        release: Callable[[str], None],
        admit: Callable[[ConversationState], ConversationActor],
        drop: Callable[[ConversationActor], None],
        observe: Observer,
        *,
        shared: bool = False,
    ) -> None:
        self._store = store
        self._journal = journal
        self._flusher = flusher
        self._table = table
        self._acquire = acquire  # makes this node the conversation's owner (directory)
        self._release = release  # lets it go again
        self._admit = admit  # makes the actor hot (and counted)
        self._drop = drop
        self._observe = observe
        # Whether another process may store and trim a conversation's records meanwhile
        # (a flusher process, or in a cluster its last owner, up to its lease's end): then
        # the store may hold less than the journal had, or more than the snapshot read.
        self._elsewhere = shared or not flusher.writes_here

    async def load(
        self, conversation_id: str, replayed: list[replay.Replayed] | None = None
    ) -> ConversationActor:
        """Build the actor from the Store plus the journal records after its version
        (`replayed` at recovery, else the journal's tail), owning it first."""
        try:
            snapshot = await self._store.load(conversation_id)
            if snapshot is None and replayed is None and not await self._unstored(conversation_id):
                raise NotFound(f"conversation {conversation_id} not found")
            if snapshot is not None and snapshot.conversation.deleted:
                raise NotFound(f"conversation {conversation_id} not found")
            await self._acquire(conversation_id)
            try:
                if replayed is None:
                    snapshot, replayed = await self._tail(conversation_id, snapshot)
                return await self._replay(conversation_id, snapshot, replayed)
            except BaseException:
                # Nothing hot holds the lease: let it go. Kept, this live node would
                # hold it for nothing, and a cluster's other nodes (their flushers'
                # start, adoption) leave a conversation with a live holder to it.
                if self._table.get(conversation_id) is None:
                    self._release(conversation_id)
                raise
        except (StoreError, JournalError) as exc:
            raise Unavailable(f"cannot activate conversation: {exc}") from None

    def admitting(
        self, seq: int, event: Created, into: list[ConversationActor] | None = None
    ) -> Callable[[Changes], None]:
        """What applies a creation event: admit the actor it makes (added to `into`)."""

        def admit(changes: Changes) -> None:
            actor = self._admit(ConversationState.from_created(seq, event, changes))
            self._observe(None, actor.meta, event)
            if into is not None:
                into.append(actor)

        return admit

    async def decode(self, entries: list[Entry]) -> list[replay.Replayed]:
        """The entries that decode; the others are set aside (quarantined)."""
        decoded, undecodable = replay.decode(entries)
        for entry, reason in undecodable:
            await self._journal.set_aside(entry, reason)
        return decoded

    async def _unstored(self, conversation_id: str) -> bool:
        """Whether an unknown conversation has journal records: with a flusher process, a
        passivated one may not be stored yet, nor in a cluster one a dead node created
        (read without acquiring it: a lookup of an unknown id leaves nothing behind)."""
        if not self._elsewhere:
            return False
        return bool(await self._journal.tail(conversation_id, 0))

    async def _tail(
        self, conversation_id: str, snapshot: Snapshot | None
    ) -> tuple[Snapshot | None, list[replay.Replayed]]:
        """The snapshot to build on and the journal records after it."""
        version = snapshot.conversation.version if snapshot else 0
        if not self._elsewhere:
            return snapshot, await self.decode(await self._journal.tail(conversation_id, version))
        # The flusher process (or the last owner) stores and trims meanwhile (trims only
        # follow store writes): read the whole stream, then check the store did not move past the
        # snapshot, so no record after the version built on can have been trimmed unseen.
        replayed = await self.decode(await self._journal.tail(conversation_id, 0))
        if replayed and replayed[0].record.seq <= version + 1:
            return snapshot, replayed  # nothing after the snapshot was trimmed
        head = await self._store.head(conversation_id)
        if head is not None and head.conversation.version > version:
            snapshot = await self._store.load(conversation_id)
            if snapshot is None or snapshot.conversation.deleted:
                raise NotFound(f"conversation {conversation_id} not found")
        return snapshot, replayed

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
            half = self._table.get(conversation_id)
            if half is not None:
                self._drop(half)
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
            actor = self._table.get(conversation_id)
        if plan.stranded:
            if actor is not None:  # hot already: appends meanwhile go past the stranded seqs
                actor.resync(plan.last_seq)
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
            self._flusher.record(record.conversation_id, self.admitting(record.seq, event))
            return None
        problem = actor.state.refuses(event)
        if problem is not None:
            return problem
        replaying = actor

        def apply(changes: Changes) -> None:
            replaying.apply(record.seq, event, changes)

        self._flusher.record(record.conversation_id, apply)
        return None
