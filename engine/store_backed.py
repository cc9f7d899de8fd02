"""The store-backed service (`--cache off`): Canopy without its hot tier, for comparison.

Every request is answered by targeted store queries: a message by the parent walk of
its lineage, children by parent, an append by the conversation head plus the parent's
lineage. Every write goes through to the store before the ack: what a conventional
store-backed service does. Mutations still go through the actor's validation and the
one commit path, on a transient actor built from what the queries returned; nothing
stays in memory between requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import replace
from typing import Any, TypeVar

from engine.access import BRANCH, READ, Level, Principal
from engine.actor import (
    ActorConfig,
    ConversationActor,
    NewConversation,
    NewMessage,
    commit,
    gone,
)
from engine.conversation import ConversationState
from engine.errors import InvalidInput, NotFound, Unavailable
from engine.moves import ActivityMoves
from engine.sidebar import Filters, Page, Sidebar
from persistence.flusher import Flusher
from persistence.journal import NoJournal
from persistence.keyed_lock import KeyedLock
from persistence.records import Message, Record, Snapshot
from persistence.store import Changes, Store, StoreError

T = TypeVar("T")


class StoreBacked:
    """Serves the gateway from the store alone; an async context manager."""

    def __init__(self, store: Store, flusher: Flusher, config: ActorConfig) -> None:
        self._store = store
        self._flusher = flusher  # with durability "store", it writes through before the ack
        self._journal = NoJournal()
        self._config = replace(config, durability="store")
        self._serialized = KeyedLock()  # read-modify-write of one conversation at a time
        self._sidebar = Sidebar(store, None, ActivityMoves())  # writes go through: no overlay

    async def __aenter__(self) -> StoreBacked:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    # -- whole-conversation requests: tree, branches, shares, forks, updates -------------------

    async def get(self, principal: Principal, conversation_id: str) -> ConversationActor:
        actor = self._actor(conversation_id, await _query(self._store.load(conversation_id)))
        actor.require(principal)
        return actor

    async def run(
        self,
        principal: Principal,
        conversation_id: str,
        operation: Callable[[ConversationActor], Awaitable[T]],
    ) -> T:
        async with self._serialized(conversation_id):
            return await operation(await self.get(principal, conversation_id))

    async def create(self, principal: Principal, new: NewConversation) -> ConversationActor:
        principal.require_write()
        event = new.created()
        created: list[ConversationState] = []

        def apply(changes: Changes) -> None:
            created.append(ConversationState.from_created(1, event, changes))
            self._sidebar.observe(None, created[0].meta, event)

        cid = event.conversation.conversation_id
        await commit(self._journal, self._flusher, "store", Record(cid, 1, event, prev=0), apply)
        return ConversationActor(
            created[0], self._journal, self._flusher, self._config, self._sidebar.observe
        )

    async def expire(self, conversation_id: str) -> bool:
        async with self._serialized(conversation_id):
            snapshot = await _query(self._store.load(conversation_id))
            if snapshot is None or snapshot.conversation.deleted:
                return False
            state = ConversationState.from_snapshot(snapshot)
            actor = ConversationActor(
                state, self._journal, self._flusher, self._config, self._sidebar.observe
            )
            return await actor.expire()

    # -- targeted reads --------------------------------------------------------------------------

    async def revision(self, principal: Principal, conversation_id: str) -> None:
        await self._check(principal, conversation_id)
        return None  # nothing is cached in this mode

    async def message(
        self, principal: Principal, conversation_id: str, message_id: str
    ) -> tuple[Message, list[str]]:
        path = await self.lineage(principal, conversation_id, message_id)
        return path[-1], [node.message_id for node in path]

    async def lineage(
        self, principal: Principal, conversation_id: str, message_id: str
    ) -> list[Message]:
        path, _ = await asyncio.gather(
            _query(self._store.lineage(conversation_id, message_id)),
            self._check(principal, conversation_id),
        )
        if not path:
            raise NotFound(f"message {message_id} not found in conversation {conversation_id}")
        return path

    async def children(
        self, principal: Principal, conversation_id: str, message_id: str
    ) -> tuple[list[str], list[Message]]:
        path, children = await asyncio.gather(
            self.lineage(principal, conversation_id, message_id),
            _query(self._store.children(conversation_id, message_id)),
        )
        return [node.message_id for node in path], children

    async def _check(self, principal: Principal, conversation_id: str) -> None:
        """What a targeted read adds to see whether the conversation is there for the
        caller (not deleted, not expired, visible): its head (row and shares)."""
        _require(principal, conversation_id, await _query(self._store.head(conversation_id)), READ)

    async def user_conversations(self, principal: Principal, user_id: str, limit: int) -> list[str]:
        return await self._sidebar.ids(principal, user_id, limit)

    async def sidebar(
        self, principal: Principal, filters: Filters, limit: int, cursor: str | None
    ) -> Page:
        return await self._sidebar.page(principal, filters, limit, cursor)

    # -- a targeted append -----------------------------------------------------------------------

    async def append(
        self, principal: Principal, conversation_id: str, new: NewMessage
    ) -> tuple[Message, list[str]]:
        """The conversation head and the parent's lineage, then a write-through append."""
        async with self._serialized(conversation_id):
            head = await _query(self._store.head(conversation_id))
            head = _require(principal, conversation_id, head, BRANCH, "appending a message")
            parent_id = _parent_id(head, new)
            head.messages = await _query(self._store.lineage(conversation_id, parent_id))
            if not head.messages:
                raise InvalidInput(
                    f"parent_message_id {parent_id} is not in conversation {conversation_id}"
                )
            # The transient actor holds only the parent's path: enough to validate and apply.
            actor = self._actor(conversation_id, head)
            node = await actor.append(principal, new)
            return node, [n.message_id for n in actor.lineage(node.message_id)]

    def _actor(self, conversation_id: str, snapshot: Snapshot | None) -> ConversationActor:
        if snapshot is None or gone(snapshot.conversation):
            raise NotFound(f"conversation {conversation_id} not found")
        state = ConversationState.from_snapshot(snapshot)
        return ConversationActor(
            state, self._journal, self._flusher, self._config, self._sidebar.observe
        )


def _require(
    principal: Principal, conversation_id: str, head: Snapshot | None, need: Level, what: str = ""
) -> Snapshot:
    """The conversation's head (no messages), if the caller may do this: NotFound if it is
    unknown, deleted, expired or not visible to them, Forbidden if they may not."""
    if head is None or gone(head.conversation):
        raise NotFound(f"conversation {conversation_id} not found")
    shares = {share.shared_with: share for share in head.shares}
    principal.require(head.conversation, shares, need, what)
    return head


def _parent_id(head: Snapshot, new: NewMessage) -> str:
    if new.parent_id is not None:
        return new.parent_id
    if new.branch_id is None:
        raise InvalidInput("parent_message_id is required (or a branch_id to append to)")
    for branch in head.branches:
        if branch.branch_id == new.branch_id:
            return branch.leaf_message_id
    raise NotFound(
        f"branch {new.branch_id} not found in conversation {head.conversation.conversation_id}"
    )


async def _query(query: Coroutine[Any, Any, T]) -> T:
    try:
        return await query
    except StoreError as exc:
        raise Unavailable(f"store unavailable: {exc}") from None
