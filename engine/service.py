"""What the gateway asks of the engine, whichever serves it.

`Registry` answers from hot actors in memory; `StoreBacked` (`--cache off`) answers
every request with targeted store queries, as the conventional design Canopy replaces
does, so the two can be compared behind the same routes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

from engine.access import Principal
from engine.actor import ConversationActor, NewConversation, NewMessage
from engine.sidebar import Filters, Page
from persistence.records import Message

T = TypeVar("T")


class Conversations(Protocol):
    async def __aenter__(self) -> Conversations: ...

    async def __aexit__(self, *exc: object) -> None: ...

    async def get(self, principal: Principal, conversation_id: str) -> ConversationActor:
        """The conversation's state; NotFound if unknown, deleted or not visible to the
        caller. Every call takes the caller: the engine decides what they may do."""
        ...

    async def run(
        self,
        principal: Principal,
        conversation_id: str,
        operation: Callable[[ConversationActor], Awaitable[T]],
    ) -> T:
        """Run one mutation on the conversation, serialized with its other mutations
        (the operation's actor method checks what the caller may do)."""
        ...

    async def create(self, principal: Principal, new: NewConversation) -> ConversationActor: ...

    async def expire(self, conversation_id: str) -> bool:
        """Delete the conversation if its expiry has passed (the retention sweeper, on no
        caller's behalf); False if it has not, or is unknown or deleted already."""
        ...

    async def revision(self, principal: Principal, conversation_id: str) -> int | None:
        """The conversation's version when served from memory (responses may be cached
        against it); None when every read must go to the store."""
        ...

    async def message(
        self, principal: Principal, conversation_id: str, message_id: str
    ) -> tuple[Message, list[str]]:
        """The message and its lineage (ids, root first)."""
        ...

    async def lineage(
        self, principal: Principal, conversation_id: str, message_id: str
    ) -> list[Message]: ...

    async def children(
        self, principal: Principal, conversation_id: str, message_id: str
    ) -> tuple[list[str], Sequence[Message]]:
        """The parent's lineage (ids) and its children in creation order."""
        ...

    async def append(
        self, principal: Principal, conversation_id: str, new: NewMessage
    ) -> tuple[Message, list[str]]:
        """Append a message; it and its lineage (ids, root first)."""
        ...

    async def user_conversations(self, principal: Principal, user_id: str, limit: int) -> list[str]:
        """Ids of what the user owns or was shared, newest activity first; Forbidden
        unless the caller is that user or a service acting for no user."""
        ...

    async def sidebar(
        self, principal: Principal, filters: Filters, limit: int, cursor: str | None
    ) -> Page:
        """One page of the caller's own and shared conversations, newest activity first;
        `cursor` continues a listing (CursorExpired once it is too old)."""
        ...
