"""The ScyllaDB / Apache Cassandra Store, on cassandra-driver.

Prepared statements, token-aware routing, configurable consistency (LOCAL_QUORUM by
default), per-partition unlogged batches of at most `batch_size` statements, and an
explicit write timestamp on every write derived from the conversation's version, so
a replayed older batch can never overwrite a newer one. Driver futures are bridged
to asyncio: nothing here blocks the event loop.

Cold activation reads one partition per table (conversation, messages, branches,
shares), all keyed by the conversation id and issued concurrently: never a query
per message.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
from cassandra import ConsistencyLevel, ProtocolVersion
from cassandra.cluster import (
    EXEC_PROFILE_DEFAULT,
    Cluster,
    ExecutionProfile,
    NoHostAvailable,
    ResponseFuture,
    Session,
)
from cassandra.connection import ConnectionBusy
from cassandra.policies import (
    DCAwareRoundRobinPolicy,
    ExponentialReconnectionPolicy,
    TokenAwarePolicy,
)
from cassandra.pool import NoConnectionsAvailable
from cassandra.query import BatchType, PreparedStatement, tuple_factory

from persistence import scylla_writes as writes
from persistence.accounts import Account, decode_account, encode_account
from persistence.background import Backoff, within
from persistence.records import Branch, Conversation, Message, Share, Snapshot
from persistence.scylla_batches import Batches, Binder
from persistence.scylla_writes import EXPIRY_SHARDS
from persistence.store import Changes, Key, StoreError, listing_key, rank

log = logging.getLogger(__name__)


class _OneKeyspaceWarning(logging.Filter):
    """Drops Cassandra 5's warning at a PREPARE on a session with a keyspace set, when the
    statement's keyspace is the session's. It warns of unqualified table names meaning
    another keyspace after a `USE`; a store's session is set to its one keyspace once
    (`create_schema`) and every statement is in it, so a node logged it at every start
    for nothing. Any other server warning, this one with two keyspaces included, passes."""

    _KEYSPACES = re.compile(r"Keyspace used: (\S+), statement keyspace: (\S+),")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "`USE <keyspace>` with prepared statements" not in message:
            return True
        named = self._KEYSPACES.search(message)
        return named is None or named[1] != named[2]


logging.getLogger("cassandra.protocol").addFilter(_OneKeyspaceWarning())

_BATCH_BYTES = 32 * 1024
# Branch and share removals that go in the conversation row's own logged batch (~100
# bytes each, ~300 for a share to a long user id). The batch is one partition's mutation
# (all three tables are keyed by the conversation id), which Cassandra's 50 KiB batch
# limit leaves alone: a ~40 KB row with 2,000 removals lands
# (tests/persistence/test_scylla_batches.py). What bounds it is the largest mutation,
# half a commit log segment (4 MiB with the suite's 8 MiB; 16 MiB by default): 2,000
# removals of 300 bytes are 0.6 MB. More in one write (a flush that coalesced that many,
# after a store outage) go ahead of it as before.
MAX_REMOVALS_WITH_ROW = 2_000
SNAPSHOT_READS = 5  # reads of a snapshot that writes kept moving under, the last kept as is
_encode = msgspec.msgpack.Encoder().encode
_conversation = msgspec.msgpack.Decoder(Conversation).decode
_message = msgspec.msgpack.Decoder(Message).decode
_branch = msgspec.msgpack.Decoder(Branch).decode
_share = msgspec.msgpack.Decoder(Share).decode

TABLES = (
    """CREATE TABLE IF NOT EXISTS conversations (
        conversation_id text PRIMARY KEY, version bigint, deleted boolean, body blob)""",
    """CREATE TABLE IF NOT EXISTS messages (
        conversation_id text, message_id text, parent_id text, seq int, body blob,
        PRIMARY KEY (conversation_id, message_id))""",
    """CREATE TABLE IF NOT EXISTS branches (
        conversation_id text, branch_id text, body blob,
        PRIMARY KEY (conversation_id, branch_id))""",
    """CREATE TABLE IF NOT EXISTS shares (
        conversation_id text, shared_with text, body blob,
        PRIMARY KEY (conversation_id, shared_with))""",
    # An owner's conversations, most recent first, each with its row (`summary`) so that
    # a sidebar page is one range read; the lookup table finds the row to move.
    """CREATE TABLE IF NOT EXISTS user_conversations (
        user_id text, last_activity timestamp, conversation_id text, summary blob,
        PRIMARY KEY (user_id, last_activity, conversation_id))
        WITH CLUSTERING ORDER BY (last_activity DESC, conversation_id ASC)""",
    """CREATE TABLE IF NOT EXISTS user_conversation_activity (
        user_id text, conversation_id text, last_activity timestamp, expires_at timestamp,
        PRIMARY KEY (user_id, conversation_id))""",
    # Share holders' listings: written on share and revoke only, joined with the
    # conversation's activity row when listed (a share never costs a write per activity).
    """CREATE TABLE IF NOT EXISTS shared_conversations (
        user_id text, conversation_id text, permission text,
        PRIMARY KEY (user_id, conversation_id))""",
    """CREATE TABLE IF NOT EXISTS conversation_activity (
        conversation_id text PRIMARY KEY, last_activity timestamp, summary blob)""",
    # Built-in accounts: the email's row is claimed with a lightweight transaction (one
    # registration wins), then the account is also written under its user id.
    """CREATE TABLE IF NOT EXISTS accounts_by_email (
        email text PRIMARY KEY, user_id text, body blob)""",
    """CREATE TABLE IF NOT EXISTS accounts (user_id text PRIMARY KEY, body blob)""",
    # Conversations with an expiry by time, spread over EXPIRY_SHARDS partitions: what
    # the retention sweeper reads.
    """CREATE TABLE IF NOT EXISTS expiring_conversations (
        shard int, expires_at timestamp, conversation_id text,
        PRIMARY KEY (shard, expires_at, conversation_id))""",
)
# Columns added since the tables were first made: keyspaces from before get them.
ADDED_COLUMNS = (
    ("user_conversations", "summary", "blob"),
    ("user_conversation_activity", "expires_at", "timestamp"),
    ("shared_conversations", "permission", "text"),
    ("conversation_activity", "summary", "blob"),
)

# The sidebar's queries, prepared when the store opens: a cold node's first page then
# pays no prepare round trips (32 -> see docs/decisions.md).
_OWNED_SELECT = "SELECT last_activity, conversation_id, summary FROM user_conversations"
_OWNED = _OWNED_SELECT + " WHERE user_id = ? LIMIT ?"
_OWNED_AFTER = _OWNED_SELECT + " WHERE user_id = ? AND last_activity <= ? LIMIT ?"
_SHARED = "SELECT conversation_id, permission FROM shared_conversations WHERE user_id = ?"
_SUMMARIES = "SELECT conversation_id, summary FROM conversation_activity WHERE conversation_id IN ?"
PREPARED_AT_OPEN = (_OWNED, _OWNED_AFTER, _SHARED, _SUMMARIES)


@dataclass(frozen=True)
class ScyllaConfig:
    nodes: tuple[str, ...] = ("127.0.0.1:9042",)
    keyspace: str = "canopy"
    replication: str = "SimpleStrategy:1"  # or "NetworkTopologyStrategy:dc1=3,dc2=3"
    consistency: str = "LOCAL_QUORUM"
    batch_size: int = 100
    max_in_flight: int = 128  # requests per store; past the driver's limit it refuses them
    connect_timeout: float = 10.0
    request_timeout: float = 5.0
    close_timeout: float = 5.0  # the driver's shutdown can hang (scylladb/python-driver#172)

    def contact_points(self) -> tuple[list[str], int]:
        hosts, port = [], 9042
        for node in self.nodes:
            host, _, maybe_port = node.strip().partition(":")
            hosts.append(host)
            if maybe_port:
                port = int(maybe_port)
        return hosts, port

    def replication_map(self) -> dict[str, Any]:
        strategy, _, spec = self.replication.partition(":")
        if strategy == "SimpleStrategy":
            return {"class": strategy, "replication_factor": int(spec or 1)}
        factors = dict(item.split("=") for item in spec.split(",") if item)
        return {"class": strategy, **{dc: int(n) for dc, n in factors.items()}}


def _cluster(config: ScyllaConfig) -> Cluster:
    hosts, port = config.contact_points()
    profile = ExecutionProfile(
        load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy()),
        consistency_level=getattr(ConsistencyLevel, config.consistency),
        request_timeout=config.request_timeout,
        # Rows as plain tuples: the default factory builds a namedtuple class for every
        # result (about 60 µs of the driver's I/O thread per read; see docs/decisions.md).
        row_factory=tuple_factory,
    )
    return Cluster(
        hosts,
        port=port,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        connect_timeout=config.connect_timeout,
        control_connection_timeout=config.connect_timeout,
        # The hot tier must notice a returning cluster within seconds, not minutes.
        reconnection_policy=ExponentialReconnectionPolicy(0.5, 5.0),
        # Protocol v5's checksummed segments fail now and then in the driver ("CRC
        # mismatch on header", PYTHON-1337) and ScyllaDB speaks v4 only anyway.
        protocol_version=ProtocolVersion.V4,
    )


def migrate(config: ScyllaConfig) -> None:
    """Create the keyspace and tables if missing (blocking; `canopy migrate`)."""
    cluster = _cluster(config)
    try:
        create_schema(cluster, cluster.connect(), config)
    finally:
        cluster.shutdown()


def create_schema(cluster: Cluster, session: Session, config: ScyllaConfig) -> None:
    """The keyspace and tables, each created if missing, and `session` set to the keyspace
    (blocking). A store opening does it on its own connection: a second one for it cost
    every start ~50 ms."""
    replication = config.replication_map()
    session.execute(
        f"CREATE KEYSPACE IF NOT EXISTS {config.keyspace} WITH replication = {replication!r}"
    )
    session.set_keyspace(config.keyspace)
    for statement in TABLES:
        session.execute(statement)
    tables = cluster.metadata.keyspaces[config.keyspace].tables
    for table, column, kind in ADDED_COLUMNS:
        if column not in tables[table].columns:
            session.execute(f"ALTER TABLE {table} ADD {column} {kind}")


class ScyllaStore:
    """Store backend over ScyllaDB or Apache Cassandra (see module docstring)."""

    def __init__(self, config: ScyllaConfig) -> None:
        self._config = config
        self._cluster: Cluster | None = None
        self._session: Session | None = None
        self._prepared: dict[str, PreparedStatement] = {}
        self._in_flight = asyncio.Semaphore(config.max_in_flight)
        self.busy_retries = 0  # requests sent again after the driver could not send them
        self._listings = writes.Listings()
        self._binders: dict[str, Binder] = {}
        self._turn = asyncio.Lock()  # held by the write binding a batch, for a loop pass
        self._batches = Batches(config.batch_size, _BATCH_BYTES)

    async def __aenter__(self) -> ScyllaStore:
        loop = asyncio.get_running_loop()
        try:
            cluster = self._cluster = _cluster(self._config)
            session = await loop.run_in_executor(None, cluster.connect)
            await loop.run_in_executor(None, create_schema, cluster, session, self._config)
            self._session = session
            await asyncio.gather(*(self._statement(cql) for cql in PREPARED_AT_OPEN))
        except Exception as exc:
            if self._cluster is not None:
                self._cluster.shutdown()
            raise StoreError(f"cannot connect to {','.join(self._config.nodes)}: {exc}") from exc
        return self

    async def __aexit__(self, *exc: object) -> None:
        cluster, self._cluster, self._session = self._cluster, None, None
        if cluster is not None:
            await within(self._config.close_timeout, cluster.shutdown, "cassandra shutdown")

    # -- reads --------------------------------------------------------------------------

    async def load(self, conversation_id: str) -> Snapshot | None:
        """The conversation row first, then its branches, shares and messages, then the
        row's version again: a write sends its row once its other rows landed, and its
        branch and share removals with the row (`write`), so what was read between two
        reads of one version holds everything up to it and no removal past it. A write
        landing in between (the flusher process's, while an activation reads) is read
        again; before, a branch removed past the version read could be missing from a
        state that the records after the version still append to, and they were set
        aside. Stored rows of a version past it replay over themselves."""
        self._listings.forget(conversation_id)  # an activation: another node may have written
        return await self._unmoved_read(functools.partial(self._read_snapshot, conversation_id))

    async def head(self, conversation_id: str) -> Snapshot | None:
        """`load` without the messages."""
        return await self._unmoved_read(functools.partial(self._read_head, conversation_id))

    async def _unmoved_read(
        self, read: Callable[[], Awaitable[Snapshot | None]]
    ) -> Snapshot | None:
        for _ in range(SNAPSHOT_READS - 1):
            head = await read()
            if head is None or head.conversation.deleted or await self._unmoved(head):
                return head
        return await read()  # writes kept moving it: as read

    async def _read_snapshot(self, conversation_id: str) -> Snapshot | None:
        head = await self._read_head(conversation_id)
        if head is None or head.conversation.deleted:
            return head
        message_rows = await self._query(
            "SELECT body FROM messages WHERE conversation_id = ?", (conversation_id,)
        )
        head.messages = sorted((_message(row[0]) for row in message_rows), key=_by_seq)
        return head

    async def _read_head(self, conversation_id: str) -> Snapshot | None:
        key = (conversation_id,)
        meta_rows = await self._query(
            "SELECT body FROM conversations WHERE conversation_id = ?", key
        )
        if not meta_rows:
            return None
        conversation = _conversation(meta_rows[0][0])
        if conversation.deleted:
            return Snapshot(conversation, [], [], [])
        branch_rows, share_rows = await asyncio.gather(
            self._query("SELECT body FROM branches WHERE conversation_id = ?", key),
            self._query("SELECT body FROM shares WHERE conversation_id = ?", key),
        )
        branches = sorted((_branch(row[0]) for row in branch_rows), key=lambda b: b.created_at)
        shares = sorted((_share(row[0]) for row in share_rows), key=lambda s: s.shared_at)
        return Snapshot(conversation, [], branches, shares)

    async def _unmoved(self, head: Snapshot) -> bool:
        """Whether the conversation row still has the version `head` was read at."""
        rows = await self._query(
            "SELECT version FROM conversations WHERE conversation_id = ?",
            (head.conversation.conversation_id,),
        )
        return bool(rows) and rows[0][0] == head.conversation.version

    async def lineage(self, conversation_id: str, message_id: str) -> list[Message]:
        # CQL has no recursion: one point read per ancestor, as a store-backed service does.
        path: list[Message] = []
        next_id: str | None = message_id
        while next_id is not None:
            rows = await self._query(
                "SELECT body FROM messages WHERE conversation_id = ? AND message_id = ?",
                (conversation_id, next_id),
            )
            if not rows:
                break
            path.append(_message(rows[0][0]))
            next_id = path[-1].parent_id
        return path[::-1]

    async def children(self, conversation_id: str, message_id: str) -> list[Message]:
        # parent_id is a regular column: filtered within the one partition, not indexed.
        rows = await self._query(
            "SELECT body FROM messages WHERE conversation_id = ? AND parent_id = ? ALLOW FILTERING",
            (conversation_id, message_id),
        )
        return sorted((_message(row[0]) for row in rows), key=_by_seq)

    async def owned(self, user_id: str, after: Key | None, limit: int) -> list[Conversation]:
        """Rows are clustered by millisecond (all a timestamp holds); the summaries carry
        the microseconds that order them, so a millisecond is read whole or not at all."""
        want = limit + 1
        while True:
            if after is None:
                rows = await self._query(_OWNED, (user_id, want))
            else:
                rows = await self._query(_OWNED_AFTER, (user_id, after[0] // 1000, want))
            full = len(rows) == want
            if full:  # the last millisecond read may go on past the limit
                rows = [row for row in rows if row[0] != rows[-1][0]]
            metas = await self._summaries([(cid, summary) for _, cid, summary in rows])
            if after is not None:
                metas = [m for m in metas if rank(listing_key(m)) > rank(after)]
            if not full or len(metas) >= limit:
                metas.sort(key=lambda m: rank(listing_key(m)))
                return metas[:limit]
            want *= 4

    async def shared(self, user_id: str) -> list[tuple[Conversation, str]]:
        held = await self._query(_SHARED, (user_id,))
        permissions: dict[str, str | None] = dict(held)
        ids = list(permissions)
        chunks = [ids[i : i + 100] for i in range(0, len(ids), 100)]
        pages = await asyncio.gather(*(self._query(_SUMMARIES, (chunk,)) for chunk in chunks))
        metas = await self._summaries([row for page in pages for row in page])
        unknown = [m.conversation_id for m in metas if permissions[m.conversation_id] is None]
        if unknown:  # rows written before they carried the permission
            permissions.update(await self._permissions(user_id, unknown))
        return [(m, permissions[m.conversation_id] or "read") for m in metas]

    async def conversations(self, conversation_ids: Sequence[str]) -> list[Conversation]:
        ids = list(conversation_ids)
        chunks = [ids[i : i + 100] for i in range(0, len(ids), 100)]
        pages = await asyncio.gather(
            *(
                self._query("SELECT body FROM conversations WHERE conversation_id IN ?", (chunk,))
                for chunk in chunks
            )
        )
        metas = (_conversation(row[0]) for page in pages for row in page)
        return [meta for meta in metas if not meta.deleted]

    async def expired(self, before: datetime, limit: int) -> list[str]:
        shards = await asyncio.gather(
            *(
                self._query(
                    "SELECT expires_at, conversation_id FROM expiring_conversations"
                    " WHERE shard = ? AND expires_at <= ? LIMIT ?",
                    (shard, before, limit),
                )
                for shard in range(EXPIRY_SHARDS)
            )
        )
        due = sorted(tuple(row) for rows in shards for row in rows)
        return [cid for _, cid in due[:limit]]

    async def _summaries(self, rows: list[Any]) -> list[Conversation]:
        """(conversation_id, summary) rows as conversations, in their order, each once;
        rows written before they carried a summary are read from the conversation."""
        missing = [cid for cid, summary in rows if summary is None]
        found = {m.conversation_id: m for m in await self.conversations(missing)} if missing else {}
        metas: dict[str, Conversation] = {}
        for cid, summary in rows:  # a replay's stale rows may repeat an id: the first wins
            meta = _conversation(summary) if summary is not None else found.get(cid)
            if meta is not None and not meta.deleted:
                metas.setdefault(cid, meta)
        return list(metas.values())

    async def _permissions(self, user_id: str, conversation_ids: list[str]) -> dict[str, str]:
        found = await asyncio.gather(
            *(
                self._query(
                    "SELECT body FROM shares WHERE conversation_id = ? AND shared_with = ?",
                    (cid, user_id),
                )
                for cid in conversation_ids
            )
        )
        return {
            cid: _share(rows[0][0]).permission
            for cid, rows in zip(conversation_ids, found, strict=True)
            if rows
        }

    # -- writes ---------------------------------------------------------------------------

    async def write(self, conversation_id: str, changes: Changes) -> None:
        """The conversation's rows, its owner's listing and its conversation row go as
        unlogged batches at once, the conversation row in the last one; share holders'
        rows, in their own partitions, as a statement each.

        The conversation row carries the version a reload replays the journal after.
        Had it landed while a batch of messages failed (or before the process died
        between batches), a reload would skip those messages' records and a trim drop
        them. So the last batch, which holds it, goes once the others landed, and as a
        logged batch: all of it or none lands (Cassandra's batchlog finishes one cut
        short). An append's flush is that one logged batch. A write cut short leaves at
        most rows ahead of the version, which replay applies again over themselves
        (`ConversationState.refuses`). A deletion's few partition deletes and its row
        fit one batch: one logged batch, so none of it lands without the rest
        (docs/decisions.md)."""
        cid, meta = conversation_id, changes.conversation
        stamp = changes.version  # monotonic per conversation: the base of write timestamps
        if changes.deleted:
            statements = writes.deletion(cid, stamp)
            holders = await self._query(
                "SELECT shared_with FROM shares WHERE conversation_id = ?", (cid,)
            )
            listing = writes.shared_rows({row[0]: None for row in holders}, cid, stamp)
        else:
            statements = writes.rows(cid, changes, stamp)
            listing = writes.shared_rows(changes.shares, cid, stamp)
        final: list[writes.Statement] = []  # what goes in the row's own batch, with it
        if meta is not None:
            statements += writes.owner_listing(cid, meta, await self._listed(cid, meta), stamp)
            removals = [] if changes.deleted else writes.removals(changes, statements)
            if 0 < len(removals) <= MAX_REMOVALS_WITH_ROW:
                # A branch or share removed ahead of the row would break replay (a row
                # ahead does not): the records after the version still append to it.
                moved = {id(s) for s in removals}
                statements = [s for s in statements if id(s) not in moved]
                final = removals
            final.append(writes.conversation(cid, meta, stamp))  # last: see above
        try:
            # share holders' rows too land before the conversation row (or a reload past
            # the version would never write them)
            holders_rows = [asyncio.ensure_future(self._query(cql, p)) for cql, p in listing]
            if len(final) > 1:
                await self._batched(statements, also=holders_rows, final=final)
            else:
                await self._batched(
                    statements + final, last_after_rest=meta is not None, also=holders_rows
                )
        except BaseException:
            self._listings.forget(cid)  # a part may have landed: read where it stands
            raise
        if meta is not None:
            self._listings.written(cid, meta)

    async def _listed(self, cid: str, meta: Conversation) -> writes.Listed | None:
        """Where the owner's listing holds the conversation now: remembered, or read."""
        owner = meta.created_by
        listed = self._listings.get(cid, owner)
        if listed is None:
            listed = writes.stored(await self._query(writes.LISTED, (owner, cid)), owner)
        return listed

    # -- accounts ---------------------------------------------------------------------------

    async def create_account(self, account: Account) -> bool:
        body = encode_account(account)
        claimed = await self._query(
            "INSERT INTO accounts_by_email (email, user_id, body) VALUES (?, ?, ?) IF NOT EXISTS",
            (account.email, account.user_id, body),
        )
        if not claimed[0][0]:  # [applied]: another registration holds the email
            return False
        await self._query(
            "INSERT INTO accounts (user_id, body) VALUES (?, ?)", (account.user_id, body)
        )
        return True

    async def account_by_email(self, email: str) -> Account | None:
        rows = await self._query("SELECT body FROM accounts_by_email WHERE email = ?", (email,))
        return decode_account(rows[0][0]) if rows else None

    async def account(self, user_id: str) -> Account | None:
        rows = await self._query("SELECT body FROM accounts WHERE user_id = ?", (user_id,))
        return decode_account(rows[0][0]) if rows else None

    # -- driver plumbing -------------------------------------------------------------------

    async def _statement(self, cql: str) -> PreparedStatement:
        """The prepared statement for `cql`, prepared off the loop on first use."""
        prepared = self._prepared.get(cql)
        if prepared is None:
            if self._session is None:
                raise StoreError("store is closed")
            try:
                prepared = await asyncio.get_running_loop().run_in_executor(
                    None, self._session.prepare, cql
                )
            except Exception as exc:
                raise StoreError(f"cassandra: {exc}") from exc
            self._prepared[cql] = prepared
        return prepared

    async def _batched(
        self,
        statements: list[tuple[str, Sequence[Any]]],
        *,
        last_after_rest: bool = False,
        also: Sequence[asyncio.Future[list[Any]]] = (),
        final: Sequence[tuple[str, Sequence[Any]]] = (),
    ) -> None:
        """Send `statements` as unlogged batches, each as soon as it is bound. Between two
        batches the loop runs, and writes take turns (the turn is held over the loop pass
        that follows a binding), so many forks' write-behinds bind one batch a pass.
        `last_after_rest`: the last batch goes logged, once every other one and every
        request of `also` (sent already, awaited and cancelled with these) landed.
        `final`: statements sent after all of those as one logged batch of their own."""
        sends: list[asyncio.Future[list[Any]]] = list(also)
        try:
            every = [*statements, *final]
            binders = {cql: await self._binder(cql) for cql in {cql for cql, _ in every}}
            batches = self._batches.cut((binders[cql], params) for cql, params in statements)
            more = bool(statements)
            while more:
                async with self._turn:
                    batch, more = next(batches)
                    if more or not last_after_rest:
                        sends.append(asyncio.ensure_future(self._execute(batch)))
                    # Held over the next pass after the last binding too: let go at once,
                    # a write whose sends landed in this pass took the turn and bound its
                    # batch in the same pass (a flake of the suite under load).
                    await asyncio.sleep(0)
            if last_after_rest and statements:
                await self._landed(sends)
                batch.batch_type = BatchType.LOGGED
                sends.append(asyncio.ensure_future(self._execute(batch)))
            if final:
                await self._landed(sends)
                sends.append(asyncio.ensure_future(self._execute(self._batches.together(
                    [(binders[cql], params) for cql, params in final]
                ))))  # fmt: skip
            await self._landed(sends)
        except BaseException:
            for send in sends:
                send.cancel()
            raise

    @staticmethod
    async def _landed(sends: list[asyncio.Future[list[Any]]]) -> None:
        """Every one of `sends` succeeded (the first failure raised, the rest awaited)."""
        done = await asyncio.gather(*sends, return_exceptions=True)
        failed = [result for result in done if isinstance(result, BaseException)]
        if failed:
            raise failed[0]

    async def _binder(self, cql: str) -> Binder:
        binder = self._binders.get(cql)
        if binder is None:
            binder = self._binders[cql] = Binder(await self._statement(cql))
        return binder

    async def _query(self, cql: str, params: Sequence[Any]) -> list[Any]:
        return await self._execute((await self._statement(cql)).bind(params))

    async def _execute(self, statement: Any) -> list[Any]:
        """Run a statement under the in-flight limit, waiting out a full connection.

        The driver refuses a request it could not even send ("Connection ... is
        overloaded": the socket's buffer is full, as a fork's 1,000 rows in batches beside
        other flushes make it): nothing reached Cassandra, so it is sent again once the
        connection drains, within `request_timeout`, instead of failing the flush.
        """
        loop = asyncio.get_running_loop()
        async with self._in_flight:
            deadline = loop.time() + self._config.request_timeout
            backoff = Backoff(0.001, 0.05)
            while True:
                try:
                    return await self._execute_now(statement)
                except StoreError as exc:
                    if not _never_sent(exc.__cause__) or loop.time() >= deadline:
                        raise
                self.busy_retries += 1
                await asyncio.sleep(backoff.failed())

    async def _execute_now(self, statement: Any) -> list[Any]:
        if self._session is None:
            raise StoreError("store is closed")
        loop = asyncio.get_running_loop()
        done: asyncio.Future[list[Any]] = loop.create_future()
        rows: list[Any] = []
        try:
            response: ResponseFuture = self._session.execute_async(statement)
        except Exception as exc:
            raise StoreError(f"cassandra: {exc}") from exc

        def on_page(page: list[Any]) -> None:
            rows.extend(page or ())  # writes answer with no rows
            if response.has_more_pages:
                response.start_fetching_next_page()
            else:
                loop.call_soon_threadsafe(_resolve, done, rows)

        def on_error(exc: BaseException) -> None:
            loop.call_soon_threadsafe(_fail, done, exc)

        response.add_callbacks(on_page, on_error)
        try:
            return await done
        except Exception as exc:
            raise StoreError(f"cassandra: {exc}") from exc
        finally:
            if done.done():  # the driver is done with it (not so for a cancelled await)
                _release(response)


def _never_sent(exc: BaseException | None) -> bool:
    """Every host refused the request before sending it: its socket full or no stream id."""
    return (
        isinstance(exc, NoHostAvailable)
        and bool(exc.errors)
        and all(
            isinstance(error, ConnectionBusy | NoConnectionsAvailable)
            for error in exc.errors.values()
        )
    )


def _by_seq(message: Message) -> int:
    return message.seq


def _release(response: ResponseFuture) -> None:
    """Let go of a finished request's statement now. The driver's future, its timer and
    our callbacks refer to each other: that cycle kept every request's statement (a fork's
    1,000 bound rows) alive until a full collection, which then took 80 ms."""
    response.clear_callbacks()
    response.query = response.message = response.query_plan = None


def _resolve(future: asyncio.Future[list[Any]], rows: list[Any]) -> None:
    if not future.done():
        future.set_result(rows)


def _fail(future: asyncio.Future[list[Any]], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
