"""The Store protocol: where flushed conversation state lives durably.

Every backend (SQLite embedded, ScyllaDB/Cassandra) implements it and runs the same
contract suite. The hot tier needs `load`, `write` and the listing queries (`owned`,
`shared`, `conversations`, `expired`); the targeted queries serve the store-backed mode
(`--cache off`) the benchmarks compare with. Writes are idempotent upserts of one
conversation's coalesced changes, so replaying a journal after a crash can never do harm.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from persistence.accounts import Account
from persistence.records import Branch, Conversation, Message, Share, Snapshot

# Where a conversation stands in a listing: (activity in microseconds, id). Listings run
# newest activity first, ties by id ascending; every tier orders by exactly these.
Key = tuple[int, str]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def activity_us(at: datetime) -> int:
    return (at - _EPOCH) // _US


def listing_key(meta: Conversation) -> Key:
    return activity_us(meta.updated_at), meta.conversation_id


def rank(key: Key) -> tuple[int, str]:
    """A key as Python sorts it: ascending rank is listing order."""
    return -key[0], key[1]


class StoreError(Exception):
    """The store could not complete an operation; the caller may retry."""


@dataclass
class Changes:
    """One conversation's unflushed changes, coalesced: the newest value of each row wins.

    `None` in `branches` or `shares` marks a deletion. The listing rows follow from
    what changed, never from the whole membership: the conversation row carries the
    owner and the activity, `shares` the share holders added and removed.
    """

    conversation: Conversation | None = None
    messages: dict[str, Message] = field(default_factory=dict)
    branches: dict[str, Branch | None] = field(default_factory=dict)
    shares: dict[str, Share | None] = field(default_factory=dict)
    version: int = 0
    nbytes: int = 0
    records: int = 0  # journal records folded in (the admin API's unflushed records)

    @property
    def deleted(self) -> bool:
        return self.conversation is not None and self.conversation.deleted

    def absorb(self, newer: Changes) -> None:
        """Fold `newer` on top of these (older) changes, newer rows winning."""
        if newer.conversation is not None:
            self.conversation = newer.conversation
        self.messages.update(newer.messages)
        self.branches.update(newer.branches)
        self.shares.update(newer.shares)
        self.version = max(self.version, newer.version)
        self.nbytes += newer.nbytes
        self.records += newer.records


class Store(Protocol):
    """Durable conversation state. Implementations are async context managers."""

    async def __aenter__(self) -> Store: ...

    async def __aexit__(self, *exc: object) -> None: ...

    async def load(self, conversation_id: str) -> Snapshot | None:
        """The conversation as last flushed (a tombstone if deleted), or None if unknown."""
        ...

    async def write(self, conversation_id: str, changes: Changes) -> None:
        """Apply one conversation's changes atomically enough to be retried whole."""
        ...

    async def owned(self, user_id: str, after: Key | None, limit: int) -> list[Conversation]:
        """Up to `limit` of the user's own conversations (not deleted) in listing order
        (`listing_key`), those strictly after `after`; their rows as last flushed."""
        ...

    async def shared(self, user_id: str) -> list[tuple[Conversation, str]]:
        """Every conversation shared with the user (not deleted), with the share's
        permission, in no particular order."""
        ...

    async def conversations(self, conversation_ids: Sequence[str]) -> list[Conversation]:
        """The rows of these conversations (those that exist and are not deleted)."""
        ...

    async def expired(self, before: datetime, limit: int) -> list[str]:
        """Up to `limit` conversations whose `expires_at` is at or before `before`, the
        oldest expiry first: what a retention sweeper removes."""
        ...

    # Targeted queries: what a store-backed service (`--cache off`) asks per request.

    async def head(self, conversation_id: str) -> Snapshot | None:
        """Like `load` but without messages: the conversation row, its branches and shares."""
        ...

    async def lineage(self, conversation_id: str, message_id: str) -> list[Message]:
        """The path root..message by parent walk in the store; empty if the message is unknown."""
        ...

    async def children(self, conversation_id: str, message_id: str) -> list[Message]:
        """The message's children in creation order."""
        ...

    # Built-in accounts (`--accounts`): a unique email per account, decided by the store.

    async def create_account(self, account: Account) -> bool:
        """Store a new account; False (and nothing written) if its email is taken."""
        ...

    async def account_by_email(self, email: str) -> Account | None:
        """The account with this (normalised) email, or None."""
        ...

    async def account(self, user_id: str) -> Account | None:
        """The account with this user id, or None."""
        ...
