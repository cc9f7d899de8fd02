"""Bodies of the session routes (seeds 002-004): PATCH, the sidebar, and what a create adds.

Seed 000's routes keep their exact shapes (`gateway/schemas.py`); these add fields and
never rename one. Limits are in the types, so msgspec answers the 422 itself.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import msgspec

from gateway.schemas import ConversationOut, CreateConversation, Description, Title
from persistence.records import Conversation

MAX_TAGS = 20
Tag = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Tags = Annotated[tuple[Tag, ...], msgspec.Meta(max_length=MAX_TAGS)]
Instant = Annotated[datetime, msgspec.Meta(tz=True)]  # RFC 3339 with its offset
MAX_TTL_SECONDS = 100 * 366 * 86400  # a century: past it, no expiry is meant
Seconds = Annotated[int, msgspec.Meta(gt=0, le=MAX_TTL_SECONDS)]


def _one_expiry(expires_at: object, ttl_seconds: object) -> None:
    if expires_at is not msgspec.UNSET and ttl_seconds is not msgspec.UNSET:
        raise ValueError("give expires_at or ttl_seconds, not both")


class CreateSession(CreateConversation):
    """A create body: seed 000's fields, and the session's."""

    is_favorite: bool = False
    tags: Tags = ()
    expires_at: Instant | None = None
    ttl_seconds: Seconds | None = None

    def __post_init__(self) -> None:
        if self.expires_at is not None and self.ttl_seconds is not None:
            raise ValueError("give expires_at or ttl_seconds, not both")
        if self.expires_at is not None and self.expires_at <= datetime.now(UTC):
            raise ValueError("expires_at is in the past: the conversation would be gone at once")


class PatchConversation(msgspec.Struct):
    """Any of these; `expires_at: null` (or `ttl_seconds: null`) removes the expiry, and
    an `expires_at` already past expires the conversation now."""

    title: Title | msgspec.UnsetType = msgspec.UNSET
    description: Description | msgspec.UnsetType = msgspec.UNSET
    is_favorite: bool | msgspec.UnsetType = msgspec.UNSET
    archived: bool | msgspec.UnsetType = msgspec.UNSET
    tags: Tags | msgspec.UnsetType = msgspec.UNSET
    expires_at: Instant | None | msgspec.UnsetType = msgspec.UNSET
    ttl_seconds: Seconds | None | msgspec.UnsetType = msgspec.UNSET

    def __post_init__(self) -> None:
        fields = self.__struct_fields__
        if all(getattr(self, name) is msgspec.UNSET for name in fields):
            raise ValueError(f"nothing to update: give one of {', '.join(fields)}")
        _one_expiry(self.expires_at, self.ttl_seconds)


class SessionOut(ConversationOut, kw_only=True):
    """A conversation as the session routes answer it: seed 000's fields and these."""

    updated_at: datetime
    message_count: int
    last_message: str | None
    is_favorite: bool
    archived: bool
    tags: list[str]
    expires_at: datetime | None


class SidebarItem(SessionOut, kw_only=True):
    permission: str  # "owner", or the share's: read, branch, fork


class SidebarOut(msgspec.Struct):
    conversations: list[SidebarItem]
    next_cursor: str | None


def _session_fields(meta: Conversation) -> dict[str, object]:
    return {
        "conversation_id": meta.conversation_id,
        "title": meta.title,
        "description": meta.description,
        "created_at": meta.created_at,
        "created_by": meta.created_by,
        "is_public": meta.is_public,
        "fork_from_conversation_id": meta.fork_from_conversation_id,
        "fork_from_message_id": meta.fork_from_message_id,
        "updated_at": meta.updated_at,
        "message_count": meta.message_count,
        "last_message": meta.last_message,
        "is_favorite": meta.is_favorite,
        "archived": meta.archived,
        "tags": list(meta.tags),
        "expires_at": meta.expires_at,
    }


def session_out(meta: Conversation) -> SessionOut:
    return SessionOut(**_session_fields(meta))  # type: ignore[arg-type]


def sidebar_item(meta: Conversation, permission: str) -> SidebarItem:
    return SidebarItem(**_session_fields(meta), permission=permission)  # type: ignore[arg-type]
