"""The embedded Store: SQLite in WAL mode, driven from one dedicated thread.

Every call runs on a single-thread executor that owns the connection, so the event
loop never blocks on disk and statements never interleave. Rows keep their body as
MessagePack (the records' own encoding) next to the columns queries need.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from persistence.accounts import Account, decode_account, encode_account
from persistence.records import Branch, Conversation, Message, Share, Snapshot
from persistence.store import Changes, Key, StoreError, activity_us

T = TypeVar("T")

# Clustered by seq: a conversation's new messages go at the end of its range, so a flush
# of 180 appends dirties a few pages where random message ids dirtied one or two each
# (5.5 pages per message: 46 -> 17 µs of store-thread CPU per message, see decisions.md).
_MESSAGES = """
CREATE TABLE IF NOT EXISTS messages (
    conversation_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    message_id TEXT NOT NULL,
    parent_id TEXT,
    body BLOB NOT NULL,
    PRIMARY KEY (conversation_id, seq, message_id)
) WITHOUT ROWID
"""
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS conversations (
    conversation_id TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    body BLOB NOT NULL
) WITHOUT ROWID;
{_MESSAGES};
CREATE UNIQUE INDEX IF NOT EXISTS messages_by_id ON messages (conversation_id, message_id);
-- Its entries carry the key (seq, message_id) too: a parent's children in seq order.
CREATE INDEX IF NOT EXISTS messages_by_parent ON messages (conversation_id, parent_id);
CREATE TABLE IF NOT EXISTS branches (
    conversation_id TEXT NOT NULL,
    branch_id TEXT NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (conversation_id, branch_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS shares (
    conversation_id TEXT NOT NULL,
    shared_with TEXT NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (conversation_id, shared_with)
) WITHOUT ROWID;
-- The owner's listing row, moved on every activity (microseconds, as store.listing_key):
-- one per conversation, so it is also where a share holder's listing finds it.
CREATE TABLE IF NOT EXISTS sidebar (
    user_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    activity INTEGER NOT NULL,
    PRIMARY KEY (user_id, conversation_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sidebar_by_activity ON sidebar (user_id, activity DESC, conversation_id);
CREATE INDEX IF NOT EXISTS sidebar_by_conversation ON sidebar (conversation_id);
-- Conversations with an expiry, for the retention sweeper.
CREATE TABLE IF NOT EXISTS expiring (
    conversation_id TEXT PRIMARY KEY,
    expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS expiring_by_time ON expiring (expires_at);
-- Share holders' listing rows: written on share and revoke only.
CREATE TABLE IF NOT EXISTS shared_conversations (
    user_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    PRIMARY KEY (user_id, conversation_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS shared_conversations_by_conversation
    ON shared_conversations (conversation_id);
-- Built-in accounts: the unique email is what makes a registration atomic.
CREATE TABLE IF NOT EXISTS accounts (
    user_id TEXT PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    body BLOB NOT NULL
) WITHOUT ROWID;
"""

_encode = msgspec.msgpack.Encoder().encode
_conversation = msgspec.msgpack.Decoder(Conversation).decode
_message = msgspec.msgpack.Decoder(Message).decode
_branch = msgspec.msgpack.Decoder(Branch).decode
_share = msgspec.msgpack.Decoder(Share).decode


class SQLiteStore:
    """Store backend over one SQLite file (see module docstring)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._db: sqlite3.Connection | None = None
        # writes waiting for the one under way: they go together in the next transaction
        self._queued: list[tuple[str, Changes, asyncio.Future[None]]] = []
        self._writing: asyncio.Future[list[BaseException | None]] | None = None
        self.writes_together = 0  # transactions that held more than one conversation

    async def __aenter__(self) -> SQLiteStore:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        await self._run(self._open)
        return self

    async def __aexit__(self, *exc: object) -> None:
        while self._writing is not None:  # and what queued behind it
            await asyncio.wait([self._writing])
        await self._run(self._close)
        self._executor.shutdown(wait=True)

    async def load(self, conversation_id: str) -> Snapshot | None:
        return await self._run(self._load, conversation_id)

    async def write(self, conversation_id: str, changes: Changes) -> None:
        """One conversation's changes, atomically. Writes made while another is under way
        wait for it and then go together, in one transaction whose rows are one
        statement per table (see `_write_together`); one that fails alone fails alone."""
        done = asyncio.get_running_loop().create_future()
        self._queued.append((conversation_id, changes, done))
        if self._writing is None:
            self._start_writes()
        await done

    def _start_writes(self) -> None:
        batch, self._queued = self._queued, []
        items = [(cid, changes) for cid, changes, _ in batch]
        job = asyncio.get_running_loop().run_in_executor(self._executor, self._write_batch, items)
        self._writing = job
        job.add_done_callback(lambda _: self._written(batch, job))

    def _written(
        self,
        batch: list[tuple[str, Changes, asyncio.Future[None]]],
        job: asyncio.Future[list[BaseException | None]],
    ) -> None:
        self._writing = None
        if job.cancelled() or job.exception() is not None:
            failure: BaseException = StoreError(f"sqlite: {job.exception() or 'cancelled'}")
            results: list[BaseException | None] = [failure] * len(batch)
        else:
            results = job.result()
        for (_, _, done), result in zip(batch, results, strict=True):
            if done.done():
                continue  # its writer stopped waiting: written (or not) all the same
            if result is None:
                done.set_result(None)
            else:
                done.set_exception(result)
        if self._queued:
            self._start_writes()

    async def owned(self, user_id: str, after: Key | None, limit: int) -> list[Conversation]:
        return await self._run(self._owned, user_id, after, limit)

    async def shared(self, user_id: str) -> list[tuple[Conversation, str]]:
        return await self._run(self._shared, user_id)

    async def conversations(self, conversation_ids: Sequence[str]) -> list[Conversation]:
        return await self._run(self._conversations, list(conversation_ids))

    async def expired(self, before: datetime, limit: int) -> list[str]:
        return await self._run(self._expired, before.timestamp(), limit)

    async def head(self, conversation_id: str) -> Snapshot | None:
        return await self._run(self._head, conversation_id)

    async def lineage(self, conversation_id: str, message_id: str) -> list[Message]:
        return await self._run(self._lineage, conversation_id, message_id)

    async def children(self, conversation_id: str, message_id: str) -> list[Message]:
        return await self._run(self._children, conversation_id, message_id)

    async def create_account(self, account: Account) -> bool:
        return await self._run(self._create_account, account)

    async def account_by_email(self, email: str) -> Account | None:
        return await self._run(self._account, "email", email)

    async def account(self, user_id: str) -> Account | None:
        return await self._run(self._account, "user_id", user_id)

    # -- on the store thread -----------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite: {exc}") from exc

    def _open(self) -> None:
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit returns once the WAL is on disk. The flusher trims the journal
        # right after it, so under NORMAL (the WAL synced only at checkpoints) a power
        # loss after the trim lost records the journal had fsynced (docs/decisions.md).
        db.execute("PRAGMA synchronous=FULL")
        legacy = _has_table(db, "user_conversations") and not _has_table(db, "shared_conversations")
        unlisted = _has_table(db, "conversations") and not _has_table(db, "sidebar")
        if _has_table(db, "messages") and not _has_index(db, "messages_by_id"):
            _cluster_messages_by_seq(db)
        db.executescript(_SCHEMA)
        if legacy:
            _move_share_rows(db)
        if unlisted:
            _fill_sidebar(db)
        self._db = db

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise sqlite3.ProgrammingError("store is closed")
        return self._db

    def _load(self, conversation_id: str) -> Snapshot | None:
        snapshot = self._head(conversation_id)
        if snapshot is not None and not snapshot.conversation.deleted:
            snapshot.messages = [
                _message(body)
                for (body,) in self._conn.execute(
                    "SELECT body FROM messages WHERE conversation_id = ? ORDER BY seq",
                    (conversation_id,),
                )
            ]
        return snapshot

    def _head(self, conversation_id: str) -> Snapshot | None:
        db = self._conn
        row = db.execute(
            "SELECT body FROM conversations WHERE conversation_id = ?", (conversation_id,)
        ).fetchone()
        if row is None:
            return None
        conversation = _conversation(row[0])
        if conversation.deleted:
            return Snapshot(conversation, [], [], [])
        branches = [
            _branch(body)
            for (body,) in db.execute(
                "SELECT body FROM branches WHERE conversation_id = ?", (conversation_id,)
            )
        ]
        shares = [
            _share(body)
            for (body,) in db.execute(
                "SELECT body FROM shares WHERE conversation_id = ?", (conversation_id,)
            )
        ]
        branches.sort(key=lambda b: b.created_at)
        shares.sort(key=lambda s: s.shared_at)
        return Snapshot(conversation, [], branches, shares)

    def _lineage(self, conversation_id: str, message_id: str) -> list[Message]:
        rows = self._conn.execute(
            "WITH RECURSIVE path(parent_id, body, level) AS ("
            " SELECT parent_id, body, 0 FROM messages"
            "  WHERE conversation_id = ?1 AND message_id = ?2"
            " UNION ALL"
            " SELECT m.parent_id, m.body, path.level + 1 FROM messages m JOIN path"
            "  ON m.conversation_id = ?1 AND m.message_id = path.parent_id)"
            " SELECT body FROM path ORDER BY level DESC",
            (conversation_id, message_id),
        )
        return [_message(body) for (body,) in rows]

    def _children(self, conversation_id: str, message_id: str) -> list[Message]:
        rows = self._conn.execute(
            "SELECT body FROM messages WHERE conversation_id = ? AND parent_id = ? ORDER BY seq",
            (conversation_id, message_id),
        )
        return [_message(body) for (body,) in rows]

    def _write_batch(self, items: list[tuple[str, Changes]]) -> list[BaseException | None]:
        """Write `items` together; if that fails, each on its own, so only what cannot be
        written fails (and a conversation named twice is written in order)."""
        if len(items) > 1 and len({cid for cid, _ in items}) == len(items):
            try:
                self._write_together(items)
            except Exception:  # noqa: BLE001 - retried one by one, each with its error
                pass
            else:
                self.writes_together += 1
                return [None] * len(items)
        return [self._write_one(cid, changes) for cid, changes in items]

    def _write_one(self, cid: str, changes: Changes) -> BaseException | None:
        try:
            self._write_together([(cid, changes)])
        except sqlite3.Error as exc:
            return StoreError(f"sqlite: {exc}")
        except Exception as exc:  # noqa: BLE001 - the writer gets it, the batch goes on
            return exc
        return None

    def _write_together(self, items: list[tuple[str, Changes]]) -> None:
        """One transaction for every conversation of `items` (distinct ids)."""
        db = self._conn
        db.execute("BEGIN")
        try:
            live = [(cid, changes) for cid, changes in items if not changes.deleted]
            for cid, changes in items:
                if changes.deleted:
                    self._delete(cid)
            _execute_rows(db, _MESSAGE_ROWS, [
                (cid, m.seq, m.message_id, m.parent_id, _encode(m))
                for cid, changes in live for m in changes.messages.values()
            ])  # fmt: skip
            for cid, changes in live:
                self._branches_and_shares(cid, changes)
            listed = [(cid, c.conversation) for cid, c in live if c.conversation is not None]
            # the owner's row carries the activity
            _execute_rows(db, _SIDEBAR_ROWS, [
                (meta.created_by, cid, activity_us(meta.updated_at)) for cid, meta in listed
            ])  # fmt: skip
            lasting = [(cid,) for cid, meta in listed if meta.expires_at is None]
            _execute_rows(db, _NOT_EXPIRING, lasting)
            _execute_rows(db, _EXPIRING_ROWS, [
                (cid, meta.expires_at.timestamp()) for cid, meta in listed
                if meta.expires_at is not None
            ])  # fmt: skip
            _execute_rows(db, _CONVERSATION_ROWS, [
                (cid, c.conversation.version, int(c.conversation.deleted), _encode(c.conversation))
                for cid, c in items if c.conversation is not None
            ])  # fmt: skip
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _branches_and_shares(self, cid: str, changes: Changes) -> None:
        db = self._conn
        for branch_id, branch in changes.branches.items():
            if branch is None:
                db.execute(
                    "DELETE FROM branches WHERE conversation_id = ? AND branch_id = ?",
                    (cid, branch_id),
                )
            else:
                db.execute(
                    "INSERT OR REPLACE INTO branches VALUES (?, ?, ?)",
                    (cid, branch_id, _encode(branch)),
                )
        for user, share in changes.shares.items():
            if share is None:
                db.execute(
                    "DELETE FROM shares WHERE conversation_id = ? AND shared_with = ?", (cid, user)
                )
                db.execute(
                    "DELETE FROM shared_conversations WHERE user_id = ? AND conversation_id = ?",
                    (user, cid),
                )
            else:
                db.execute(
                    "INSERT OR REPLACE INTO shares VALUES (?, ?, ?)", (cid, user, _encode(share))
                )
                db.execute("INSERT OR IGNORE INTO shared_conversations VALUES (?, ?)", (user, cid))

    def _delete(self, cid: str) -> None:
        tables = ("messages", "branches", "shares", "sidebar", "shared_conversations", "expiring")
        for table in tables:
            self._conn.execute(f"DELETE FROM {table} WHERE conversation_id = ?", (cid,))

    def _create_account(self, account: Account) -> bool:
        try:
            self._conn.execute(
                "INSERT INTO accounts VALUES (?, ?, ?)",
                (account.user_id, account.email, encode_account(account)),
            )
        except sqlite3.IntegrityError:  # the email (or, never in practice, the UUID) is taken
            return False
        return True

    def _account(self, column: str, value: str) -> Account | None:
        row = self._conn.execute(
            f"SELECT body FROM accounts WHERE {column} = ?", (value,)
        ).fetchone()
        return None if row is None else decode_account(row[0])

    def _owned(self, user_id: str, after: Key | None, limit: int) -> list[Conversation]:
        """A range of the activity index, joined with those rows' conversations."""
        ms, cid = after if after is not None else (2**62, "")
        rows = self._conn.execute(
            "SELECT c.body FROM sidebar s JOIN conversations c USING (conversation_id)"
            " WHERE s.user_id = ?1 AND s.activity <= ?2"
            " AND NOT (s.activity = ?2 AND s.conversation_id <= ?3)"
            " ORDER BY s.activity DESC, s.conversation_id LIMIT ?4",
            (user_id, ms, cid, limit),
        )
        return [_conversation(body) for (body,) in rows]

    def _shared(self, user_id: str) -> list[tuple[Conversation, str]]:
        rows = self._conn.execute(
            "SELECT c.body, h.body FROM shared_conversations s"
            " JOIN conversations c ON c.conversation_id = s.conversation_id"
            " JOIN shares h ON h.conversation_id = s.conversation_id AND h.shared_with = s.user_id"
            " WHERE s.user_id = ? AND c.deleted = 0",
            (user_id,),
        )
        return [(_conversation(meta), _share(share).permission) for meta, share in rows]

    def _conversations(self, conversation_ids: list[str]) -> list[Conversation]:
        found: list[Conversation] = []
        for start in range(0, len(conversation_ids), 500):  # under SQLite's variable limit
            chunk = conversation_ids[start : start + 500]
            rows = self._conn.execute(
                "SELECT body FROM conversations WHERE deleted = 0 AND conversation_id IN"
                f" ({','.join('?' * len(chunk))})",
                chunk,
            )
            found += [_conversation(body) for (body,) in rows]
        return found

    def _expired(self, before: float, limit: int) -> list[str]:
        rows = self._conn.execute(
            "SELECT conversation_id FROM expiring WHERE expires_at <= ?"
            " ORDER BY expires_at LIMIT ?",
            (before, limit),
        )
        return [cid for (cid,) in rows]


# Rows go in statements of many rows each. The sqlite3 module lets go of the GIL around
# every sqlite3_step, and while the event loop keeps it busy each step waits for it
# again (up to the 5 ms switch interval): `executemany`, a step per row, wrote 3,000
# rows in 10.7-16.4 s against a busy thread, and 128 rows a statement in 210-234 ms
# (docs/decisions.md). Sizes are powers of two, so each has one cached statement.
ROWS_PER_STATEMENT = 128  # at most 640 parameters: under SQLite's 999 before 3.32 too


class _Rows:
    """One statement over many rows: `head`, `group` once per row (comma-separated),
    then `tail`; one text per power-of-two size."""

    def __init__(self, head: str, group: str, tail: str = "") -> None:
        self.sql = {
            size: head + ", ".join([group] * size) + tail
            for size in (1 << k for k in range(ROWS_PER_STATEMENT.bit_length()))
        }


_MESSAGE_ROWS = _Rows(
    "INSERT OR REPLACE INTO messages (conversation_id, seq, message_id, parent_id, body)"
    " VALUES ", "(?, ?, ?, ?, ?)",
)  # fmt: skip
_SIDEBAR_ROWS = _Rows("INSERT OR REPLACE INTO sidebar VALUES ", "(?, ?, ?)")
_NOT_EXPIRING = _Rows("DELETE FROM expiring WHERE conversation_id IN (", "?", ")")
_EXPIRING_ROWS = _Rows("INSERT OR REPLACE INTO expiring VALUES ", "(?, ?)")
_CONVERSATION_ROWS = _Rows(
    "INSERT INTO conversations VALUES ", "(?, ?, ?, ?)",
    " ON CONFLICT DO UPDATE SET version = excluded.version, deleted = excluded.deleted,"
    " body = excluded.body WHERE excluded.version >= conversations.version",
)  # fmt: skip


def _execute_rows(
    db: sqlite3.Connection, rows: _Rows, values: Sequence[tuple[object, ...]]
) -> None:
    done = 0
    while done < len(values):
        size = ROWS_PER_STATEMENT
        while size > len(values) - done:
            size //= 2
        db.execute(rows.sql[size], [v for row in values[done : done + size] for v in row])
        done += size


def _has_table(db: sqlite3.Connection, name: str) -> bool:
    found = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
    return found.fetchone() is not None


def _has_index(db: sqlite3.Connection, name: str) -> bool:
    found = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?", (name,))
    return found.fetchone() is not None


def _cluster_messages_by_seq(db: sqlite3.Connection) -> None:
    """Data from before messages were clustered by seq kept them keyed by message id:
    copy them into the new layout (the schema then adds its indexes)."""
    columns = "conversation_id, seq, message_id, parent_id, body"
    db.execute("BEGIN")
    db.execute("DROP INDEX IF EXISTS messages_by_parent")
    db.execute("ALTER TABLE messages RENAME TO messages_by_message_id")
    db.execute(_MESSAGES)
    db.execute(f"INSERT INTO messages ({columns}) SELECT {columns} FROM messages_by_message_id")
    db.execute("DROP TABLE messages_by_message_id")
    db.execute("COMMIT")


def _move_share_rows(db: sqlite3.Connection) -> None:
    """Data from before shared_conversations kept every member's row in user_conversations;
    keep there only the owner's, and move the share holders' to shared_conversations."""
    rows = db.execute(
        "SELECT u.user_id, u.conversation_id, c.body FROM user_conversations u"
        " JOIN conversations c ON c.conversation_id = u.conversation_id"
    ).fetchall()
    moved = [(user, cid) for user, cid, body in rows if _conversation(body).created_by != user]
    db.execute("BEGIN")
    db.executemany("INSERT OR IGNORE INTO shared_conversations VALUES (?, ?)", moved)
    db.executemany(
        "DELETE FROM user_conversations WHERE user_id = ? AND conversation_id = ?", moved
    )
    db.execute("COMMIT")


def _fill_sidebar(db: sqlite3.Connection) -> None:
    """Data from before the sidebar index: list every conversation for its owner once
    (no row had an expiry then), and drop the float-seconds index it replaces."""
    metas = [_conversation(body) for (body,) in db.execute("SELECT body FROM conversations")]
    live = [meta for meta in metas if not meta.deleted]
    db.execute("BEGIN")
    db.executemany(
        "INSERT OR REPLACE INTO sidebar VALUES (?, ?, ?)",
        [(m.created_by, m.conversation_id, activity_us(m.updated_at)) for m in live],
    )
    db.execute("DROP TABLE IF EXISTS user_conversations")
    db.execute("COMMIT")
