"""The registry (Orleans' catalog): the facade the gateway asks for conversations.

It composes one module per concept: the activation table (engine/activation.py: which
actors are hot, one activation per conversation under concurrency), how an actor is
built from the Store and the journal (engine/loading.py), idle and memory collection
(engine/collection.py: the budget, eviction, the idle sweep, passivation), recovery at
start (engine/recovery.py) and the listing merge (engine/listing.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from engine import replay
from engine.access import Principal
from engine.activation import ActivationTable
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
from engine.collection import Collector
from engine.conversation import ConversationState
from engine.directory import Directory, JournalOwnership, LeaseHeld
from engine.errors import Conflict, HeldElsewhere, NotFound, Unavailable
from engine.first_reads import MAX_AGE_SECONDS
from engine.ids import new_id
from engine.listing import Listing
from engine.loading import Loader
from engine.peer_listing import HotEntries, Peers
from engine.placement import Placement, ThisNode
from engine.recovery import recover
from engine.sidebar import Filters, Page, ShardPage
from persistence.flusher import Flusher
from persistence.journal import Journal, JournalError
from persistence.records import Created, Message, Record
from persistence.store import Store

log = logging.getLogger(__name__)

LEASE_POLL = 0.02  # seconds between asks while a lease's holder lets go
CREATE_ATTEMPTS = 8  # activations of an id a creation waits behind before it answers 503

T = TypeVar("T")


@dataclass(frozen=True)
class RegistryConfig:
    actor: ActorConfig = ActorConfig()
    max_hot_bytes: int = field(default_factory=default_max_hot_bytes)
    max_hot_messages: int = 2_000_000
    idle_seconds: float = 600.0
    sidebar_first_reads_seconds: float = MAX_AGE_SECONDS  # engine/first_reads.py; 0: none
    # In a cluster: how long an activation waits for a live holder to let go (a move
    # or a leave under way) before it answers 503; 0 refuses at once.
    lease_wait_seconds: float = 0.0

    def oversized(self, nbytes: int, messages: int) -> bool:
        """Too big to count against the budget (what a hot conversation of `nbytes` and
        `messages` costs): admitting it would evict most others."""
        return nbytes > self.max_hot_bytes // 2 or messages > self.max_hot_messages // 2


class Registry:
    """Owns the hot actors of this node; an async context manager.

    Placement and the directory are consulted when a conversation is activated or
    created and when it is passivated, never on a hot actor's request; their
    single-node defaults own everything here through the journal, as before."""

    def __init__(
        self,
        store: Store,
        journal: Journal,
        flusher: Flusher,
        config: RegistryConfig,
        *,
        directory: Directory | None = None,
        placement: Placement | None = None,
        node_id: str = "this-node",
        conversation_ids: Callable[[], str] | None = None,
    ) -> None:
        self._journal = journal
        self._flusher = flusher
        self._config = config
        self._directory = directory or JournalOwnership(journal)
        self._directory.on_lost(self._lost)
        flusher.on_diverged(self._rebuild)
        # Shared with other nodes: another may own, store and trim a conversation.
        self._shared = directory is not None and not isinstance(directory, JournalOwnership)
        if self._shared:
            flusher.fence(self._may_write)
        self._placement = placement or ThisNode(node_id)
        self._node_id = node_id
        # where new conversation ids come from (engine/placement.py's placed_here: ids
        # this node owns, so a creation needs no handover)
        self._new_id = conversation_ids or new_id
        self._table = ActivationTable()
        self._collector = Collector(self._table, flusher, config, self._directory.release)
        # A cluster's listings merge the peers' entries at each read: a first page kept
        # here would miss what they flush meanwhile (engine/first_reads.py).
        first_reads = 0.0 if self._shared else config.sidebar_first_reads_seconds
        # Rows of stored conversations kept for the listing's grace: an eighth of the hot
        # budget at most (engine/sidebar.py HotListing), and never below 1 MiB.
        kept_rows = max(config.max_hot_bytes // 8, 1 << 20)
        self._listing = Listing(store, flusher, first_reads, node_id, kept_rows)
        self._loader = Loader(
            store, journal, flusher, self._table, self._acquire, self._directory.release,
            self._admit, self._collector.drop, self._listing.observe, shared=self._shared,
        )  # fmt: skip
        self.activations = 0
        self.placed_elsewhere = 0  # activations here of conversations placed on another node
        self.rebuilds = 0  # actors dropped after an append answered "may or may not be stored"
        self.lease_waits = 0  # asks again while another node's lease was being let go
        self.lost = 0  # hot actors dropped because another node took their lease

    async def __aenter__(self) -> Registry:
        await self.recover()
        for actor in list(self._table.actors()):  # recovery applied records to them directly
            self._collector.count(actor)
        self._collector.check_budget()
        self._collector.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._collector.close()
        await asyncio.gather(*(actor.stop() for actor in self._table.actors()))
        log.info(
            "registry closed: %d hot actors, %d activations, %d passivations",
            len(self._table),
            self.activations,
            self.passivations,
        )

    # -- figures -----------------------------------------------------------------------------

    @property
    def hot_messages(self) -> int:
        return self._collector.hot_messages

    @property
    def hot_bytes(self) -> int:
        """What the hot conversations cost by the budget's model (engine/budget.py)."""
        return self._collector.hot_bytes

    @property
    def passivations(self) -> int:
        return self._collector.passivations

    @property
    def oversized(self) -> int:
        """Times an oversized conversation was kept hot."""
        return self._collector.oversized

    def stats(self) -> dict[str, Any]:
        return {
            "hot_actors": len(self._table),
            "hot_bytes": self.hot_bytes,
            "hot_messages": self.hot_messages,
            "max_hot_bytes": self._config.max_hot_bytes,
            "activations": self.activations,
            "passivations": self.passivations,
            "oversized": self.oversized,
            "oversized_hot": self._collector.oversized_hot,
            "placed_elsewhere": self.placed_elsewhere,
            "rebuilds": self.rebuilds,
            "lease_waits": self.lease_waits,
            "lost": self.lost,
            **{f"listing_{key}": value for key, value in self._listing.stats().items()},
        }

    def __len__(self) -> int:
        return len(self._table)

    def actors(self) -> list[ConversationActor]:
        """The hot actors, least recently used first (the admin API's per-actor figures)."""
        return list(self._table.actors())

    def background_tasks(self) -> list[asyncio.Task[None]]:
        """The tasks the registry owns now (cancelled and awaited on close)."""
        return self._collector.tasks()

    # -- lookup and activation -----------------------------------------------------------

    def hot(self, conversation_id: str) -> tuple[ConversationActor, float] | None:
        """The conversation's actor and when it was last touched (time.monotonic), if
        it is hot; neither activated nor touched (the admin API's look)."""
        return self._table.looked(conversation_id)

    def hot_actors(self) -> Iterator[tuple[ConversationActor, float]]:
        """Each hot actor with when it was last touched (time.monotonic), least
        recently used first (the admin API's listing)."""
        return self._table.with_touches()

    async def get(self, principal: Principal, conversation_id: str) -> ConversationActor:
        """The conversation's actor, activating it if needed; NotFound if unknown, deleted
        or not visible to the caller."""
        actor = await self._hot_actor(conversation_id)
        actor.require(principal)
        return actor

    async def _hot_actor(self, conversation_id: str) -> ConversationActor:
        actor = self._table.touch(conversation_id)
        if actor is None:
            actor = await self._table.activate(conversation_id, self._load)
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
                    self._collector.count(actor)
            self._collector.check_budget()
            return result

    async def expire(self, conversation_id: str) -> bool:
        """Delete the conversation if it has expired, then passivate it (the retention
        sweeper's call); False if it has not, or is unknown or deleted already."""
        while True:
            actor = self._table.get(conversation_id)
            try:
                if actor is None:
                    actor = await self._table.activate(conversation_id, self._load)
                expired = await actor.expire()
            except NotFound:
                return False
            except Passivated:
                continue
            finally:
                if actor is not None and not actor.closed:
                    self._collector.count(actor)
            if expired:  # nothing of it is served again: free its memory now
                await self.passivate(conversation_id)
            return expired

    async def adopt(self, conversation_id: str) -> bool:
        """Activate the conversation here if it is not hot (engine/adoption.py's call: its
        journal tail is replayed and stored); False if it was hot, unknown or deleted."""
        if self._table.get(conversation_id) is not None:
            return False
        try:
            await self._hot_actor(conversation_id)
        except NotFound:
            return False
        return True

    async def _load(
        self, conversation_id: str, replayed: list[replay.Replayed] | None = None
    ) -> ConversationActor:
        passivating = self._collector.passivating(conversation_id)
        if passivating is not None:
            await asyncio.shield(passivating)
        actor = await self._loader.load(conversation_id, replayed)
        if not self._directory.is_held(conversation_id):
            # Lost during the activation (taken by another node, or this one declared
            # dead): `_lost` found nothing hot to drop then. Kept, it would be hot and
            # counted with no lease, its appends refused and its writes never stored.
            if self._table.get(conversation_id) is actor:
                self._collector.drop(actor)
            self._flusher.forget(conversation_id)
            raise Unavailable("the conversation was taken by another node while it was "
                              "activated here; ask again")  # fmt: skip
        self._collector.count(actor)
        self.activations += 1
        await self._collector.keep_within_budget()
        return actor

    async def _acquire(self, conversation_id: str) -> int:
        """Own the conversation before reading its tail or appending to it; its epoch."""
        if self._placement.owner_of(conversation_id) != self._node_id:
            self.placed_elsewhere += 1  # e.g. a fork, or created before a node joined
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._config.lease_wait_seconds
        while True:
            try:
                return await self._directory.acquire(conversation_id)
            except LeaseHeld as exc:
                # Forwarding sends a request here only once the holder let go or left;
                # its release may still be on its way to Redis.
                if loop.time() >= deadline:
                    raise HeldElsewhere(
                        f"cannot serve the conversation here now: {exc}", exc.owner
                    ) from None
            self.lease_waits += 1
            await asyncio.sleep(LEASE_POLL)

    def serves(self, conversation_id: str) -> bool:
        """Hot here and this node holds its lease: requests for it need no lookup."""
        return conversation_id in self._table and self._directory.is_held(conversation_id)

    def _lost(self, conversation_id: str) -> None:
        """Another node took the conversation's lease: stop serving it at once (what is
        in flight is refused by the journal's fencing; its next request is forwarded)
        and drop its unflushed changes: the new owner replayed them from the journal and
        stores them; written here they could go over what it stored since."""
        actor = self._table.get(conversation_id)
        if actor is not None:
            self.lost += 1
            self._collector.drop(actor)
        self._flusher.forget(conversation_id)

    def _rebuild(self, conversation_id: str, epoch: int) -> None:
        """The journal may hold a record the actor never applied (an append answered "may
        or may not be stored"), and the flusher process stores what the journal holds: the
        actor's next record, numbered on its own state, would not follow that one in the
        store. Drop the actor: the next request rebuilds it from the store and the journal,
        after an acquire whose epoch refuses the append if it lands late. An actor made
        since under another epoch (the node declared dead, then the conversation taken
        again while the send was under way) follows the journal: it stays."""
        if self._journal.epoch(conversation_id) != epoch:
            return
        actor = self._table.get(conversation_id)
        if actor is not None:
            self.rebuilds += 1
            self._collector.drop(actor)
        self._flusher.forget(conversation_id)

    def _may_write(self, conversation_id: str) -> bool:
        """The flusher's fence: store a conversation only while its lease is surely ours."""
        return self._directory.is_held(conversation_id) and self._directory.can_acknowledge()

    def _admit(self, state: ConversationState) -> ConversationActor:
        actor = ConversationActor(
            state, self._journal, self._flusher, self._config.actor, self._listing.observe
        )
        self._table.add(actor)
        self._collector.count(actor)
        return actor

    # -- creation --------------------------------------------------------------------------

    async def create(self, principal: Principal, new: NewConversation) -> ConversationActor:
        """Create a conversation with its root message (and a fork's copied messages).

        The creation is the id's activation (the table's one per conversation): a read,
        an adoption or a second creation of the same id meanwhile (a cluster's relayed
        creation sent again) waits for it and shares its outcome, instead of replaying its
        journaled creation into a second actor or letting go of the lease it holds."""
        principal.require_write()
        event = new.created(self._new_id())
        conversation_id = event.conversation.conversation_id
        ran = False  # this creation's own activation ran (not one it waited for)
        made: list[ConversationActor] = []  # what it made, if the id was new

        async def create_here(_: str) -> ConversationActor:
            nonlocal ran
            ran = True
            return await self._create_here(conversation_id, event, new, made)

        for _ in range(CREATE_ATTEMPTS):
            if self._table.get(conversation_id) is not None:
                raise Conflict(f"conversation {conversation_id} exists already")
            try:
                actor = await self._table.activate(conversation_id, create_here)
            except NotFound:
                if ran:  # an id picked elsewhere, used before and gone: not made again
                    raise Conflict(f"conversation {conversation_id} exists already") from None
                continue  # another activation of the id found nothing: now create it
            if not made:  # it exists (another activation found it, or this one loaded it)
                raise Conflict(f"conversation {conversation_id} exists already")
            await self._collector.keep_within_budget()
            return actor
        # Reads of the id kept activating it ahead of the creation (a client asking for
        # the id it is about to create, in a loop): the creation is not theirs to hold.
        raise Unavailable(f"conversation {conversation_id} is being looked up meanwhile; "
                          "ask again")  # fmt: skip

    async def _create_here(
        self,
        conversation_id: str,
        event: Created,
        new: NewConversation,
        made: list[ConversationActor],
    ) -> ConversationActor:
        """The creation as the id's activation: the actor made (added to `made`), or, for
        an id picked elsewhere that was used before, the conversation it names, loaded as
        any activation would (so a read waiting on it gets it, not a Conflict)."""
        passivating = self._collector.passivating(conversation_id)
        if passivating is not None:  # its release must not land after the acquire below
            await asyncio.shield(passivating)
        try:
            epoch = await self._acquire(conversation_id)
        except JournalError as exc:
            raise Unavailable(f"journal unavailable: {exc}") from None
        try:
            if new.conversation_id is not None and epoch > 1:
                return await self._load(conversation_id)
            # A creation waits for the journal even in `memory` mode: ids handed out must exist.
            durability = self._config.actor.durability
            await commit(
                self._journal, self._flusher, "journal" if durability == "memory" else durability,
                Record(conversation_id, 1, event, prev=0),
                self._loader.admitting(1, event, into=made),
            )  # fmt: skip
        except BaseException:
            if self._table.get(conversation_id) is None:  # nothing hot holds the lease
                self._directory.release(conversation_id)
            raise
        return made[0]  # admitted by the commit (passivated since, with `store` durability)

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
        return await self._listing.user_conversations(principal, user_id, limit)

    async def sidebar(
        self, principal: Principal, filters: Filters, limit: int, cursor: str | None
    ) -> Page:
        return await self._listing.page(principal, filters, limit, cursor)

    async def shard_page(
        self, principal: Principal, filters: Filters, limit: int, cursor: str | None
    ) -> ShardPage:
        """This node's page of a listing merged across shards (engine/sidebar_merge.py)."""
        return await self._listing.shard_page(principal, filters, limit, cursor)

    def ask_peers(self, peers: Peers) -> None:
        """Listings merge `peers(user)`: the other cluster nodes' unflushed entries."""
        self._listing.ask_peers(peers)

    def hot_entries(self, user_id: str) -> HotEntries:
        return self._listing.hot_entries(user_id)

    # -- recovery and passivation -----------------------------------------------------------

    async def recover(self) -> None:
        """Replay the journal into actors, then flush, before the node serves (unless a
        flusher process stores what the journal holds). A cluster member replays
        nothing here: each conversation's journal is replayed by the node that comes to
        own it, when it activates it (Store + journal tail, engine/loading.py)."""
        if self._shared:
            self._journal.recovered()
            return
        await recover(self._journal, self._flusher, self._loader, self._load)

    async def passivate(self, conversation_id: str) -> bool:
        """Flush the actor and drop it; False (and still hot) if the flush failed."""
        return await self._collector.passivate(conversation_id)
