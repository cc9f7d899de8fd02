"""The statements of a Cassandra write: which rows one conversation's changes become.

Every row carries an explicit write timestamp derived from the conversation's version
(`_put` for inserts, `_erase` for deletes), so a replayed older write can never overwrite
a newer one and retrying a write whole is harmless.

The owner's listing row is keyed by the conversation's activity, so moving it needs the
activity it was listed at: `Listings` remembers what this store last listed for each
conversation it wrote (bounded), and only a conversation it does not remember costs a
read first. Another writer may move the row meanwhile only if the conversation moved to
another node, and it comes back through an activation (`Store.load`), which forgets it.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

import msgspec

from persistence.records import Conversation, Share
from persistence.store import Changes, activity_us

Statement = tuple[str, Sequence[Any]]

EXPIRY_SHARDS = 16
LISTED = (
    "SELECT last_activity, expires_at FROM user_conversation_activity"
    " WHERE user_id = ? AND conversation_id = ?"
)
_encode = msgspec.msgpack.Encoder().encode


class Listed(NamedTuple):
    """Where a conversation's owner row and expiry row are keyed, as last written."""

    owner: str
    activity: datetime
    expires_at: datetime | None


class Listings:
    """What this store last listed for each conversation it wrote, the newest `limit`."""

    def __init__(self, limit: int = 16_384) -> None:
        self._limit = limit
        self._listed: dict[str, Listed] = {}

    def get(self, conversation_id: str, owner: str) -> Listed | None:
        listed = self._listed.get(conversation_id)
        return listed if listed is not None and listed.owner == owner else None

    def written(self, conversation_id: str, meta: Conversation) -> None:
        """The write of `meta` landed: its rows are where it listed them."""
        self._listed.pop(conversation_id, None)
        if meta.deleted:
            return
        self._listed[conversation_id] = Listed(meta.created_by, meta.updated_at, meta.expires_at)
        if len(self._listed) > self._limit:
            del self._listed[next(iter(self._listed))]  # the least recently written

    def forget(self, conversation_id: str) -> None:
        """Someone else may have moved its rows (a failed write, an activation)."""
        self._listed.pop(conversation_id, None)

    def __len__(self) -> int:
        return len(self._listed)


def stored(rows: Sequence[Any], owner: str) -> Listed | None:
    """The `LISTED` read's answer."""
    return Listed(owner, rows[0][0], rows[0][1]) if rows and rows[0][0] is not None else None


def deletion(cid: str, stamp: int) -> list[Statement]:
    """Rows of messages, branches and shares carry the stamps of `rows` (the version
    mapped twice); their delete must be on that scale to win."""
    return [
        (
            f"DELETE FROM {table} USING TIMESTAMP ? WHERE conversation_id = ?",
            (_erase(_put(stamp)) if table != "conversation_activity" else _erase(stamp), cid),
        )
        for table in ("messages", "branches", "shares", "conversation_activity")
    ]


def rows(cid: str, changes: Changes, stamp: int) -> list[Statement]:
    """The conversation's own rows: messages, branches, shares and its activity row."""
    at = _put(_put(stamp))
    cql = (
        "INSERT INTO messages (conversation_id, message_id, parent_id, seq, body)"
        " VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?"
    )
    statements: list[Statement] = [
        (cql, (cid, m.message_id, m.parent_id, m.seq, _encode(m), at))
        for m in changes.messages.values()
    ]
    statements += _keyed_rows("branches", "branch_id", changes.branches, cid, _put(stamp))
    statements += _keyed_rows("shares", "shared_with", changes.shares, cid, _put(stamp))
    meta = changes.conversation
    if meta is not None:
        statements.append((
            "INSERT INTO conversation_activity (conversation_id, last_activity, summary)"
            " VALUES (?, ?, ?) USING TIMESTAMP ?",
            (cid, meta.updated_at, _encode(meta), _put(stamp)),
        ))  # fmt: skip
    return statements


def removals(changes: Changes, statements: list[Statement]) -> list[Statement]:
    """Of a write's `statements`, the removals of branches and shares (`rows`' deletes)."""
    if None not in changes.branches.values() and None not in changes.shares.values():
        return []
    removing = ("DELETE FROM branches", "DELETE FROM shares")
    return [s for s in statements if s[0].startswith(removing)]


def conversation(cid: str, meta: Conversation, stamp: int) -> Statement:
    return (
        "INSERT INTO conversations (conversation_id, version, deleted, body)"
        " VALUES (?, ?, ?, ?) USING TIMESTAMP ?",
        (cid, meta.version, meta.deleted, _encode(meta), _put(stamp)),
    )


def owner_listing(cid: str, meta: Conversation, old: Listed | None, stamp: int) -> list[Statement]:
    """Move the conversation's row in its owner's listing and in the expiry index from
    where `old` listed them (drop both once deleted)."""
    owner = meta.created_by
    expires_at = None if meta.deleted else meta.expires_at
    statements: list[Statement] = []
    if old is not None and (meta.deleted or _ms(old.activity) != _ms(meta.updated_at)):
        statements.append((
            "DELETE FROM user_conversations USING TIMESTAMP ?"
            " WHERE user_id = ? AND last_activity = ? AND conversation_id = ?",
            (_erase(stamp), owner, old.activity, cid),
        ))  # fmt: skip
    statements += _expiry_rows(cid, old.expires_at if old else None, expires_at, stamp)
    if meta.deleted:
        statements.append((
            "DELETE FROM user_conversation_activity USING TIMESTAMP ?"
            " WHERE user_id = ? AND conversation_id = ?",
            (_erase(stamp), owner, cid),
        ))  # fmt: skip
        return statements
    statements.append((
        "INSERT INTO user_conversations (user_id, last_activity, conversation_id, summary)"
        " VALUES (?, ?, ?, ?) USING TIMESTAMP ?",
        (owner, meta.updated_at, cid, _encode(meta), _put(stamp)),
    ))  # fmt: skip
    statements.append((
        "INSERT INTO user_conversation_activity"
        " (user_id, conversation_id, last_activity, expires_at) VALUES (?, ?, ?, ?)"
        " USING TIMESTAMP ?",
        (owner, cid, meta.updated_at, expires_at, _put(stamp)),
    ))  # fmt: skip
    return statements


def shared_rows(shares: Mapping[str, Share | None], cid: str, stamp: int) -> list[Statement]:
    """Share holders' listing rows (other partitions than the conversation's)."""
    statements: list[Statement] = []
    for user, share in shares.items():
        if share is None:
            statements.append((
                "DELETE FROM shared_conversations USING TIMESTAMP ?"
                " WHERE user_id = ? AND conversation_id = ?",
                (_erase(stamp), user, cid),
            ))  # fmt: skip
        else:
            statements.append((
                "INSERT INTO shared_conversations (user_id, conversation_id, permission)"
                " VALUES (?, ?, ?) USING TIMESTAMP ?",
                (user, cid, share.permission, _put(stamp)),
            ))  # fmt: skip
    return statements


def _keyed_rows(
    table: str, key: str, rows: Mapping[str, msgspec.Struct | None], cid: str, stamp: int
) -> list[Statement]:
    """Upserts and deletions (None) of a table keyed by (conversation_id, `key`)."""
    statements: list[Statement] = []
    for row_key, row in rows.items():
        if row is None:
            statements.append((
                f"DELETE FROM {table} USING TIMESTAMP ? WHERE conversation_id = ? AND {key} = ?",
                (_erase(stamp), cid, row_key),
            ))  # fmt: skip
        else:
            statements.append((
                f"INSERT INTO {table} (conversation_id, {key}, body) VALUES (?, ?, ?)"
                " USING TIMESTAMP ?",
                (cid, row_key, _encode(row), _put(stamp)),
            ))  # fmt: skip
    return statements


def _expiry_rows(
    cid: str, old: datetime | None, new: datetime | None, stamp: int
) -> list[Statement]:
    """Move the conversation in the expiry index from `old` (as stored) to `new`."""
    shard = zlib.crc32(cid.encode()) % EXPIRY_SHARDS
    statements: list[Statement] = []
    if old is not None and (new is None or _ms(old) != _ms(new)):
        statements.append((
            "DELETE FROM expiring_conversations USING TIMESTAMP ?"
            " WHERE shard = ? AND expires_at = ? AND conversation_id = ?",
            (_erase(stamp), shard, old, cid),
        ))  # fmt: skip
    if new is not None:
        statements.append((
            "INSERT INTO expiring_conversations (shard, expires_at, conversation_id)"
            " VALUES (?, ?, ?) USING TIMESTAMP ?",
            (shard, new, cid, _put(stamp)),
        ))  # fmt: skip
    return statements


def _ms(at: datetime) -> int:
    """A timestamp in milliseconds, as Cassandra keeps it (a read gives naive UTC)."""
    return activity_us(at if at.tzinfo is not None else at.replace(tzinfo=UTC)) // 1000


def _put(version: int) -> int:
    """Write timestamp of an insert at `version`: above any delete of the same version."""
    return 2 * version + 1


def _erase(version: int) -> int:
    """Write timestamp of a delete at `version`: above every insert of older versions."""
    return 2 * version
