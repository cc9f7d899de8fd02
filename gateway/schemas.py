"""Request and response bodies, decoded and encoded with msgspec (seed 000's wire format).

Requests are decoded strictly into Structs: a wrong type or a missing field is where
a 422 comes from. Responses are Structs whose fields are exactly seed 000's; message
content is embedded as the stored JSON bytes, never re-encoded.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

import msgspec

from persistence.records import Branch, Conversation, Message, Share

# -- requests -----------------------------------------------------------------------------

# Field limits: msgspec answers 422 past them, and the OpenAPI document shows them.
# Message content is bounded by the body size (--max-body-bytes).
MAX_USER_ID = 256  # created_by, shared_with, shared_by, X-Canopy-User
MAX_NAME = 256  # branch_name
MAX_TITLE = 1_000
MAX_DESCRIPTION = 10_000
MAX_METADATA_ENTRIES = 64
MAX_METADATA_KEY = 256
MAX_METADATA_VALUE = 8 * 1024

# A user or branch name: it identifies something (a share with `shared_with: ""` could
# never be revoked by path), so it may not be empty. Titles and descriptions may be.
UserId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_USER_ID)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME)]
Title = Annotated[str, msgspec.Meta(max_length=MAX_TITLE)]
Description = Annotated[str, msgspec.Meta(max_length=MAX_DESCRIPTION)]
ContentMetadata = Annotated[
    dict[
        Annotated[str, msgspec.Meta(max_length=MAX_METADATA_KEY)],
        Annotated[str, msgspec.Meta(max_length=MAX_METADATA_VALUE)],
    ],
    msgspec.Meta(max_length=MAX_METADATA_ENTRIES),
]


def _require_a_change(update: msgspec.Struct) -> None:
    """A PUT must set at least one field: `{}` or only unknown fields would change nothing
    and still bump the version. msgspec turns the ValueError into a 422."""
    if all(getattr(update, field) is None for field in update.__struct_fields__):
        raise ValueError(f"nothing to update: give one of {', '.join(update.__struct_fields__)}")


class CreateConversation(msgspec.Struct):
    title: Title
    created_by: UserId | None = None  # the caller when left out
    description: Description | None = None
    is_public: bool = False


class UpdateConversation(msgspec.Struct):
    title: Title | None = None
    description: Description | None = None
    is_public: bool | None = None

    def __post_init__(self) -> None:
        _require_a_change(self)


class CreateMessage(msgspec.Struct):
    role: str
    content: dict[str, Any]
    created_by: UserId | None = None  # the caller when left out
    parent_message_id: uuid.UUID | None = None
    content_metadata: ContentMetadata = {}
    branch_id: uuid.UUID | None = None


class CreateBranch(msgspec.Struct):
    branch_name: Name
    leaf_message_id: uuid.UUID
    created_by: UserId | None = None  # the caller when left out


class UpdateBranch(msgspec.Struct):
    branch_name: Name | None = None
    leaf_message_id: uuid.UUID | None = None

    def __post_init__(self) -> None:
        _require_a_change(self)


class Fork(msgspec.Struct):
    title: Title
    created_by: UserId | None = None  # the caller when left out


class CreateShare(msgspec.Struct):
    shared_with: UserId
    permission: str
    shared_by: UserId | None = None  # the caller when left out


# -- responses ----------------------------------------------------------------------------


class ConversationOut(msgspec.Struct):
    conversation_id: str
    title: str
    description: str | None
    created_at: datetime
    created_by: str
    is_public: bool
    fork_from_conversation_id: str | None
    fork_from_message_id: str | None


class MessageOut(msgspec.Struct):
    conversation_id: str
    message_id: str
    parent_message_id: str | None
    role: str
    content: msgspec.Raw
    content_metadata: dict[str, str]
    lineage: list[str]
    depth: int
    created_at: datetime
    created_by: str


class CompactMessageOut(msgspec.Struct):
    """A message without its lineage (`?compact=true`): depth and parent rebuild it."""

    conversation_id: str
    message_id: str
    parent_message_id: str | None
    role: str
    content: msgspec.Raw
    content_metadata: dict[str, str]
    depth: int
    created_at: datetime
    created_by: str


class TreeOut(msgspec.Struct):
    conversation_id: str
    messages: list[MessageOut]
    total_messages: int  # in the conversation, also when `messages` is one page of them
    next_cursor: str | None | msgspec.UnsetType = msgspec.UNSET  # on paged requests only


class CompactTreeOut(msgspec.Struct):
    """The tree with `?compact=true`: TreeOut with compact messages."""

    conversation_id: str
    messages: list[CompactMessageOut]
    total_messages: int
    next_cursor: str | None | msgspec.UnsetType = msgspec.UNSET


class BranchOut(msgspec.Struct):
    conversation_id: str
    branch_id: str
    branch_name: str
    leaf_message_id: str
    created_at: datetime
    last_updated: datetime
    created_by: str
    is_active: bool


class ShareOut(msgspec.Struct):
    conversation_id: str
    shared_with: str
    permission: str
    shared_at: datetime
    shared_by: str


class Health(msgspec.Struct):
    status: str
    timestamp: datetime


class Deleted(msgspec.Struct):
    message: str


class ErrorDetail(msgspec.Struct):
    code: str
    message: str


class ErrorOut(msgspec.Struct):
    error: ErrorDetail


def conversation_out(meta: Conversation) -> ConversationOut:
    return ConversationOut(
        meta.conversation_id,
        meta.title,
        meta.description,
        meta.created_at,
        meta.created_by,
        meta.is_public,
        meta.fork_from_conversation_id,
        meta.fork_from_message_id,
    )


def message_out(conversation_id: str, node: Message, lineage: list[str]) -> MessageOut:
    return MessageOut(
        conversation_id,
        node.message_id,
        node.parent_id,
        node.role,
        msgspec.Raw(node.content),
        node.content_metadata,
        lineage,
        len(lineage),
        node.created_at,
        node.created_by,
    )


def compact_out(conversation_id: str, node: Message) -> CompactMessageOut:
    return CompactMessageOut(
        conversation_id,
        node.message_id,
        node.parent_id,
        node.role,
        msgspec.Raw(node.content),
        node.content_metadata,
        node.depth,
        node.created_at,
        node.created_by,
    )


def path_out(conversation_id: str, path: list[Message]) -> list[MessageOut]:
    """A root..node path, each message carrying its own lineage (a prefix of the path's)."""
    ids = [node.message_id for node in path]
    return [message_out(conversation_id, node, ids[: i + 1]) for i, node in enumerate(path)]


def branch_out(conversation_id: str, branch: Branch) -> BranchOut:
    return BranchOut(
        conversation_id,
        branch.branch_id,
        branch.branch_name,
        branch.leaf_message_id,
        branch.created_at,
        branch.last_updated,
        branch.created_by,
        branch.is_active,
    )


def share_out(conversation_id: str, share: Share) -> ShareOut:
    return ShareOut(
        conversation_id, share.shared_with, share.permission, share.shared_at, share.shared_by
    )


# -- built-in accounts (--accounts) -------------------------------------------------------

Password = Annotated[str, msgspec.Meta(min_length=8, max_length=1024)]


class Register(msgspec.Struct):
    email: Annotated[str, msgspec.Meta(max_length=320)]
    password: Password
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None


class Login(msgspec.Struct):
    email: Annotated[str, msgspec.Meta(max_length=320)]
    password: Annotated[str, msgspec.Meta(max_length=1024)]


class UserOut(msgspec.Struct):
    user_id: str
    email: str
    name: str | None
    created_at: datetime


class TokenOut(msgspec.Struct):
    access_token: str
    token_type: str
    expires_in: int  # seconds
    user: UserOut
