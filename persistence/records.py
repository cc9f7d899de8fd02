"""The durable shapes of Canopy's data: rows the Store keeps and events the Journal carries.

All are msgspec Structs encoded as MessagePack arrays (`array_like`): compact in the
journal and the store, and fast to decode on activation. Message content is kept as
the canonical JSON bytes of the content object, so it is validated once on the way in
and copied verbatim into every response.
"""

from __future__ import annotations

from datetime import datetime

import msgspec


class Message(msgspec.Struct, array_like=True, gc=False):
    """One node of a conversation tree. Immutable once built: changes replace the node."""

    message_id: str
    parent_id: str | None
    role: str
    content: bytes  # canonical JSON of the content object, {"type": ..., ...}
    content_metadata: dict[str, str]
    created_at: datetime
    created_by: str
    depth: int
    seq: int  # position in the conversation's creation order (root = 0)
    status: str = "complete"


class Conversation(msgspec.Struct, array_like=True, gc=False):
    """A conversation's metadata row; the root message's content is derived from it."""

    conversation_id: str
    root_id: str
    title: str
    description: str | None
    created_at: datetime
    created_by: str
    updated_at: datetime
    is_public: bool
    fork_from_conversation_id: str | None
    fork_from_message_id: str | None
    message_count: int
    version: int  # seq of the last journal record applied
    deleted: bool = False
    # Session fields (issue 11), trailing with defaults: rows written before still decode.
    is_favorite: bool = False
    archived: bool = False
    tags: tuple[str, ...] = ()
    expires_at: datetime | None = None
    last_message: str | None = None  # a preview of the newest message (engine.preview)

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now


class Branch(msgspec.Struct, array_like=True, gc=False):
    branch_id: str
    branch_name: str
    leaf_message_id: str
    created_at: datetime
    last_updated: datetime
    created_by: str
    is_active: bool = True


class Share(msgspec.Struct, array_like=True, gc=False):
    shared_with: str
    permission: str
    shared_at: datetime
    shared_by: str


class Snapshot(msgspec.Struct, array_like=True):
    """Everything the Store holds for one conversation, enough to rebuild its actor."""

    conversation: Conversation
    messages: list[Message]
    branches: list[Branch]
    shares: list[Share]


# Journal events: one per acknowledged mutation, applied in journal order.


class Created(msgspec.Struct, tag="c", array_like=True):
    conversation: Conversation
    messages: list[Message]  # the root first; a fork carries its copied messages too


class Appended(msgspec.Struct, tag="a", array_like=True):
    message: Message
    branch_id: str | None


class Updated(msgspec.Struct, tag="u", array_like=True):
    """Fields set by PUT or PATCH; None leaves one as it is. The trailing fields came with
    sessions (records journaled before them decode with the defaults)."""

    at: datetime
    title: str | None
    description: str | None
    is_public: bool | None
    is_favorite: bool | None = None
    archived: bool | None = None
    tags: tuple[str, ...] | None = None
    expires_at: datetime | None = None
    clears_expiry: bool = False  # expires_at set to null: the conversation stays


class Deleted(msgspec.Struct, tag="d", array_like=True):
    at: datetime


class BranchSet(msgspec.Struct, tag="bs", array_like=True):
    branch: Branch


class BranchDeleted(msgspec.Struct, tag="bd", array_like=True):
    branch_id: str


class ShareSet(msgspec.Struct, tag="ss", array_like=True):
    share: Share


class ShareRevoked(msgspec.Struct, tag="sr", array_like=True):
    shared_with: str


Event = Created | Appended | Updated | Deleted | BranchSet | BranchDeleted | ShareSet | ShareRevoked


class Record(msgspec.Struct, array_like=True):
    """A journal entry: the event and its position in the conversation's history.

    `prev` is the seq of the record this one was applied on top of (0 for a creation).
    Seqs are not dense (a failed append still uses one up), so replay follows `prev`
    links: a record whose predecessor is missing lies after a gap. -1: written before
    the links existed.
    """

    conversation_id: str
    seq: int
    event: Event
    prev: int = -1


_record_encoder = msgspec.msgpack.Encoder()
_record_decoder = msgspec.msgpack.Decoder(Record)


def encode_record(record: Record) -> bytes:
    return _record_encoder.encode(record)


def decode_record(payload: bytes) -> Record:
    return _record_decoder.decode(payload)
