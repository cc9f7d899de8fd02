"""The conversation actor: one per active conversation, owned by one node.

Reads are plain synchronous calls on in-memory state. Mutations are serialized by
the actor's lock: validate, journal (await durability), apply, acknowledge; so the
journal's order is the order of application.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from typing import Literal

import msgspec
from msgspec.structs import replace

from engine.access import BRANCH, FORK, OWNER, READ, Level, Principal
from engine.conversation import ConversationState, root_content
from engine.errors import CanopyError, Conflict, InvalidInput, NotFound, Unavailable
from engine.ids import new_id, time_ordered_id
from persistence.flusher import Backpressure, Flusher
from persistence.journal import Journal, JournalError, OutcomeUnknown
from persistence.records import (
    Appended,
    Branch,
    BranchDeleted,
    BranchSet,
    Conversation,
    Created,
    Deleted,
    Event,
    Message,
    Record,
    Share,
    ShareRevoked,
    ShareSet,
    Updated,
    encode_record,
)
from persistence.store import Changes, StoreError

log = logging.getLogger(__name__)

Durability = Literal["memory", "journal", "store"]
ROLES = frozenset({"human", "assistant", "system", "tool", "user", "ai"})
PERMISSIONS = ("read", "branch", "fork")  # weakest first
# Per conversation: its branch and share lists are answered whole, so each bounds what
# one GET encodes at once (10,000 branches: ~3 MB, ~8 ms of the loop) and what one
# client holds in memory by asking (found by review: 200k branches were 156 MB a GET).
MAX_BRANCHES = 10_000
MAX_SHARES = 10_000
# What one fork may copy: the copy, its record's encoding and its state are built on the
# loop in one go (~2 s for 500k messages, found by review), and the whole copy joins the
# unflushed bytes at once (its record is admitted while there is room for any write).
MAX_FORK_MESSAGES = 100_000
MAX_FORK_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class ActorConfig:
    durability: Durability = "journal"
    max_lineage_depth: int = 1000


class NewMessage(msgspec.Struct, frozen=True):
    """What a client asks to append: the parent (or a branch to append to) and the body.
    A Struct, made for every append: 0.15 µs, where a frozen dataclass took 1.1."""

    parent_id: str | None
    role: str
    content: bytes  # canonical JSON (engine.content.normalize)
    content_metadata: dict[str, str]
    created_by: str
    branch_id: str | None = None


@dataclass(frozen=True)
class NewConversation:
    """What a client asks to create: a conversation, or a fork with the messages it copies."""

    title: str
    created_by: str
    description: str | None = None
    is_public: bool = False
    fork_from: tuple[str, str | None] | None = None  # (conversation, message or None)
    copied: Sequence[Message] = ()
    is_favorite: bool = False
    tags: tuple[str, ...] = ()
    expires_at: datetime | None = None
    conversation_id: str | None = None  # picked by the node a cluster request reached

    def created(self, conversation_id: str | None = None) -> Created:
        """The creation event: a new row (a new id unless given), its root message, the
        copies re-numbered."""
        at = now()
        conversation_id = self.conversation_id or conversation_id or new_id()
        root_id = time_ordered_id()
        meta = Conversation(
            conversation_id=conversation_id,
            root_id=root_id,
            title=self.title,
            description=self.description,
            created_at=at,
            created_by=self.created_by,
            updated_at=at,
            is_public=self.is_public,
            fork_from_conversation_id=self.fork_from[0] if self.fork_from else None,
            fork_from_message_id=self.fork_from[1] if self.fork_from else None,
            message_count=1 + len(self.copied),
            version=1,
            is_favorite=self.is_favorite,
            tags=self.tags,
            expires_at=self.expires_at,
        )
        root = Message(root_id, None, "root", root_content(meta), {}, at, self.created_by, 1, 0)
        # Copies get their own seq; the old root's children hang on the new root.
        messages = [root] + [
            replace(node, parent_id=root_id if node.depth == 2 else node.parent_id, seq=seq)
            for seq, node in enumerate(self.copied, start=1)
        ]
        return Created(meta, messages)


@dataclass(frozen=True)
class Patch:
    """What a PATCH sets; None leaves a field as it is (`clears_expiry`: no expiry)."""

    title: str | None = None
    description: str | None = None
    is_favorite: bool | None = None
    archived: bool | None = None
    tags: tuple[str, ...] | None = None
    expires_at: datetime | None = None
    clears_expiry: bool = False

    def event(self) -> Updated:
        return Updated(
            now(), self.title, self.description, None, self.is_favorite, self.archived,
            self.tags, self.expires_at, self.clears_expiry,
        )  # fmt: skip


class _QueuedAppend:
    """One caller's append waiting to be committed; `future` gets its message or error."""

    __slots__ = ("principal", "new", "future")

    def __init__(self, principal: Principal, new: NewMessage) -> None:
        self.principal = principal
        self.new = new
        self.future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()


@dataclass
class _Staged:
    """The appends of one batch checked so far: their records and what they change."""

    version: int  # the seq the next record is applied on top of
    message_count: int
    records: list[Record] = field(default_factory=list)
    applies: list[Callable[[Changes], None]] = field(default_factory=list)
    messages: list[tuple[_QueuedAppend, Message]] = field(default_factory=list)
    nodes: dict[str, Message] = field(default_factory=dict)
    leaves: dict[str, str] = field(default_factory=dict)  # branch -> its staged leaf


def _fail(batch: list[_QueuedAppend], error: BaseException) -> None:
    for queued in batch:
        if not queued.future.done():
            queued.future.set_exception(error)


class Passivated(Exception):
    """The actor was dropped while the caller waited; the registry retries on a fresh one."""


def now() -> datetime:
    return datetime.now(UTC)


def gone(meta: Conversation) -> bool:
    """Deleted, or past its expiry: then it answers NotFound to every read and write."""
    return meta.deleted or (meta.expires_at is not None and meta.expires_at <= now())


# Told of every applied mutation: the row before (None for a creation), after, the event.
Observer = Callable[[Conversation | None, Conversation, Event], None]


def _unobserved(before: Conversation | None, after: Conversation, event: Event) -> None:
    pass


class ConversationActor:
    __slots__ = (
        "id", "state", "_journal", "_flusher", "_config", "_observe", "_lock", "_seq", "_appends",
        "_draining", "_drainer", "closed",
    )  # fmt: skip

    def __init__(
        self,
        state: ConversationState,
        journal: Journal,
        flusher: Flusher,
        config: ActorConfig,
        observe: Observer = _unobserved,
    ) -> None:
        self.id = state.meta.conversation_id
        self._observe = observe
        self.state = state
        self._journal = journal
        self._flusher = flusher
        self._config = config
        self._lock = asyncio.Lock()
        self._seq = state.version  # last seq handed out; may run ahead after a failed append
        self._appends: list[_QueuedAppend] = []  # waiting for the next batch
        self._draining = False  # a batch is being committed: new appends wait for the next
        self._drainer: asyncio.Task[None] | None = None  # held: the loop keeps tasks weakly
        self.closed = False

    @property
    def lock(self) -> asyncio.Lock:
        """Held by every mutation; passivation takes it to drop the actor between them."""
        return self._lock

    async def stop(self) -> None:
        """Cancel the drainer of queued appends (they are refused) and wait for it: the
        node is closing and nothing may outlive it."""
        drainer = self._drainer
        if drainer is not None:
            drainer.cancel()
            await asyncio.gather(drainer, return_exceptions=True)

    def resync(self, last_seq: int = 0) -> None:
        """Follow the state after a journal replay applied records to it directly; new
        records are numbered past every seq the journal holds (`last_seq`)."""
        self._seq = max(self._seq, self.state.version, last_seq)

    # -- reads: synchronous, from memory -------------------------------------------------

    @property
    def meta(self) -> Conversation:
        return self.state.meta

    def __len__(self) -> int:
        return len(self.state.tree)

    @property
    def queued_appends(self) -> int:
        """Appends waiting for the lock: they go to the journal together."""
        return len(self._appends)

    @property
    def nbytes(self) -> int:
        """What keeping it hot costs, by the memory budget's model."""
        return self.state.nbytes

    def require(self, principal: Principal, need: Level = READ, what: str = "") -> Level:
        """The caller's level on this conversation, at least `need` (NotFound if they
        may not see it, Forbidden if they may not do this)."""
        return principal.require(self.meta, self.state.shares, need, what)

    def message(self, message_id: str) -> Message:
        node = self.state.tree.get(message_id)
        if node is None:
            raise NotFound(f"message {message_id} not found in conversation {self.id}")
        return node

    def lineage(self, message_id: str) -> list[Message]:
        self.message(message_id)
        return self.state.tree.lineage(message_id)

    def children(self, message_id: str) -> Sequence[Message]:
        """The message's children in creation order (a live sequence: copy to keep)."""
        self.message(message_id)
        return self.state.tree.children(message_id)

    def messages(self) -> Iterable[Message]:
        return self.state.tree

    def messages_after(self, seq: int, limit: int) -> list[Message]:
        """Up to `limit` messages created after the one numbered `seq` (-1: from the
        root), in creation order: one page of the tree."""
        tree = self.state.tree
        page = tree.slice(seq + 1, seq + 1 + limit)  # seq is a node's position
        if page and page[0].seq != seq + 1:  # numbered otherwise: find the place by seq
            page = list(islice((node for node in tree if node.seq > seq), limit))
        return page

    def branch(self, branch_id: str) -> Branch:
        found = self.state.branches.get(branch_id)
        if found is None:
            raise NotFound(f"branch {branch_id} not found in conversation {self.id}")
        return found

    def branches(self) -> Iterable[Branch]:
        return self.state.branches.values()

    def shares(self) -> Iterable[Share]:
        return self.state.shares.values()

    def shares_seen_by(self, principal: Principal) -> list[Share]:
        """Who else it is shared with is the owner's to know: others see their own share."""
        if self.require(principal) == OWNER:
            return list(self.state.shares.values())
        own = self.state.shares.get(principal.user_id or "")
        return [own] if own is not None else []

    def fork_source(self, message_id: str | None) -> list[Message]:
        """Non-root messages a fork copies: all of them, or the lineage of one message."""
        nodes = self.state.tree.lineage(message_id) if message_id else list(self.state.tree)
        return [n for n in nodes if n.parent_id is not None]

    async def fork_copy(
        self, principal: Principal, *, branch_id: str | None = None, message_id: str | None = None
    ) -> tuple[str | None, list[Message]]:
        """The fork point (a branch's leaf, a message, or None for all) and the messages a
        fork copies, taken under the mutation lock: a delete in flight is applied first,
        so a fork never copies a conversation whose deletion was acknowledged."""
        async with self._lock:
            self._check_open()
            self.require(principal, FORK, "forking")
            point: str | None = None
            if branch_id is not None:
                point = self.branch(branch_id).leaf_message_id
            elif message_id is not None:
                point = self.message(message_id).message_id
            copied = self.fork_source(point)
            if len(copied) > MAX_FORK_MESSAGES:
                raise InvalidInput(
                    f"the fork would copy {len(copied)} messages, over the {MAX_FORK_MESSAGES} "
                    "a fork may copy: fork a branch or a message instead"
                )
            nbytes = sum([len(m.content) for m in copied])
            if nbytes > MAX_FORK_BYTES:
                raise InvalidInput(
                    f"the fork would copy {nbytes} bytes of content, over the {MAX_FORK_BYTES} "
                    "a fork may copy: fork a branch or a message instead"
                )
            return point, copied

    # -- mutations: serialized, journaled before applied -------------------------------------

    async def append(self, principal: Principal, new: NewMessage) -> Message:
        """Append a message. Group commit: an append to an idle conversation is committed
        by its caller; those that arrive meanwhile queue, and the drainer commits each
        queue as one batch when the batch before it is done (one journal send), applied
        and acknowledged in seq order. A waiter taking the lock in turn instead would
        commit one record per journal round trip: each finds only the append that arrived
        while the previous one held the lock."""
        if new.role not in ROLES:
            raise InvalidInput(f"role must be one of {', '.join(sorted(ROLES))}; got {new.role!r}")
        queued = _QueuedAppend(principal, new)
        self._appends.append(queued)
        if self._draining:
            return await queued.future
        self._draining = True
        try:
            await self._commit_queued()
        except BaseException:
            if queued.future.done() and not queued.future.cancelled():
                queued.future.exception()  # ours, raised otherwise: retrieved
            raise
        finally:
            if self._appends:
                self._drainer = asyncio.create_task(self._drain(), name=f"appends-{self.id}")
            else:
                self._draining = False
        return queued.future.result()

    async def _drain(self) -> None:
        try:
            while self._appends:
                await self._commit_queued()
        finally:  # cancelled (shutdown): what is still queued is refused, never left waiting
            _fail(self._appends, Unavailable("the conversation stopped taking appends"))
            self._appends = []
            self._draining = False
            self._drainer = None

    async def _commit_queued(self) -> None:
        async with self._lock:
            batch, self._appends = self._appends, []
            await self._commit_appends(batch)

    async def _commit_appends(self, batch: list[_QueuedAppend]) -> None:
        """Validate and number every queued append on top of the state and those staged
        before it, journal them in one go, apply them in order. Each caller hears its own
        refusal; a journal failure fails the batch, and nothing of it is applied."""
        try:
            self._check_open()
            staged = _Staged(self.state.version, self.meta.message_count)
            for queued in batch:
                if queued.future.done():  # its caller stopped waiting: nothing to commit
                    continue
                try:
                    self._stage(queued, staged)
                except CanopyError as exc:  # refused: this caller's alone
                    queued.future.set_exception(exc)
            if staged.records:
                await commit_many(
                    self._journal, self._flusher, self._config.durability,
                    staged.records, staged.applies,
                )  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - every caller of the batch hears it
            _fail(batch, exc)
            return
        except BaseException:  # cancelled: the callers of the batch must not wait on it
            _fail(batch, Unavailable("append interrupted; it may or may not have been stored"))
            raise
        for queued, message in staged.messages:
            if not queued.future.done():
                queued.future.set_result(message)

    def _stage(self, queued: _QueuedAppend, staged: _Staged) -> None:
        """Check one append against the state plus the appends staged before it, and
        stage its record (the next seq, applied on top of the previous one)."""
        new = queued.new
        self.require(queued.principal, BRANCH, "appending a message")
        parent_id = new.parent_id
        if new.branch_id is not None:
            leaf = staged.leaves.get(new.branch_id) or self.branch(new.branch_id).leaf_message_id
            parent_id = parent_id or leaf
        if parent_id is None:
            raise InvalidInput("parent_message_id is required (or a branch_id to append to)")
        parent = self.state.tree.get(parent_id) or staged.nodes.get(parent_id)
        if parent is None:
            raise InvalidInput(f"parent_message_id {parent_id} is not in conversation {self.id}")
        limit = self._config.max_lineage_depth
        if parent.depth >= limit:
            raise InvalidInput(f"lineage depth would exceed MAX_LINEAGE_DEPTH ({limit})")
        node = Message(
            message_id=time_ordered_id(),
            parent_id=parent_id,
            role=new.role,
            content=new.content,
            content_metadata=new.content_metadata,
            created_at=now(),
            created_by=new.created_by,
            depth=parent.depth + 1,
            seq=staged.message_count,  # the tree may hold only a path (store-backed mode)
        )
        self._seq += 1
        seq, event = self._seq, Appended(node, new.branch_id)
        staged.records.append(Record(self.id, seq, event, prev=staged.version))
        staged.applies.append(lambda changes: self.apply(seq, event, changes))
        staged.messages.append((queued, node))
        staged.nodes[node.message_id] = node
        if new.branch_id is not None:
            staged.leaves[new.branch_id] = node.message_id
        staged.version = seq
        staged.message_count += 1

    async def update(
        self,
        principal: Principal,
        *,
        title: str | None,
        description: str | None,
        is_public: bool | None,
    ) -> Conversation:
        async with self._lock:
            self._check_open()
            self.require(principal, OWNER, "updating a conversation")
            await self._commit(Updated(now(), title, description, is_public))
            return self.meta

    async def patch(self, principal: Principal, patch: Patch) -> Conversation:
        async with self._lock:
            self._check_open()
            self.require(principal, OWNER, "updating a conversation")
            await self._commit(patch.event())
            return self.meta

    async def delete(self, principal: Principal) -> None:
        async with self._lock:
            self._check_open()
            self.require(principal, OWNER, "deleting a conversation")
            await self._commit(Deleted(now()))

    async def expire(self) -> bool:
        """Delete the conversation if its expiry has passed: the retention sweeper's call,
        on no caller's behalf. It is journaled like the owner's delete, so the flusher
        removes the conversation's rows from the store and the journal trims its records.
        False if it has not expired (its expiry moved) or was deleted already."""
        async with self._lock:
            if self.closed:
                raise Passivated(self.id)
            at = now()
            if self.meta.deleted or not self.meta.expired(at):
                return False
            await self._commit(Deleted(at))
            return True

    async def create_branch(
        self, principal: Principal, *, name: str, leaf_id: str, created_by: str
    ) -> Branch:
        async with self._lock:
            self._check_open()
            self.require(principal, BRANCH, "creating a branch")
            self._check_leaf(leaf_id)
            if len(self.state.branches) >= MAX_BRANCHES:
                raise Conflict(f"conversation {self.id} has {MAX_BRANCHES} branches, the "
                               "most it may have; delete one first")  # fmt: skip
            at = now()
            branch = Branch(new_id(), name, leaf_id, at, at, created_by)
            await self._commit(BranchSet(branch))
            return branch

    async def update_branch(
        self, principal: Principal, branch_id: str, *, name: str | None, leaf_id: str | None
    ) -> Branch:
        async with self._lock:
            self._check_open()
            self.require(principal, BRANCH, "moving a branch")
            branch = self.branch(branch_id)
            if leaf_id is not None:
                self._check_leaf(leaf_id)
            branch = Branch(
                branch.branch_id,
                branch.branch_name if name is None else name,
                branch.leaf_message_id if leaf_id is None else leaf_id,
                branch.created_at,
                now(),
                branch.created_by,
                branch.is_active,
            )
            await self._commit(BranchSet(branch))
            return branch

    async def delete_branch(self, principal: Principal, branch_id: str) -> None:
        async with self._lock:
            self._check_open()
            self.require(principal, BRANCH, "deleting a branch")
            self.branch(branch_id)
            await self._commit(BranchDeleted(branch_id))

    async def share(
        self, principal: Principal, *, shared_with: str, permission: str, shared_by: str
    ) -> Share:
        if permission not in PERMISSIONS:
            raise InvalidInput(
                f"permission must be one of {', '.join(PERMISSIONS)}; got {permission!r}"
            )
        async with self._lock:
            self._check_open()
            self.require(principal, OWNER, "sharing a conversation")
            shares = self.state.shares
            if shared_with not in shares and len(shares) >= MAX_SHARES:
                raise Conflict(f"conversation {self.id} is shared with {MAX_SHARES} users, "
                               "the most it may be; revoke one first")  # fmt: skip
            share = Share(shared_with, permission, now(), shared_by)
            await self._commit(ShareSet(share))
            return share

    async def revoke(self, principal: Principal, shared_with: str) -> None:
        async with self._lock:
            self._check_open()
            self.require(principal, OWNER, "revoking a share")
            if shared_with not in self.state.shares:
                raise NotFound(f"conversation {self.id} is not shared with {shared_with}")
            await self._commit(ShareRevoked(shared_with))

    def _check_open(self) -> None:
        if self.closed:
            raise Passivated(self.id)
        if gone(self.meta):
            raise NotFound(f"conversation {self.id} not found")

    def _check_leaf(self, leaf_id: str) -> None:
        if leaf_id not in self.state.tree:
            raise InvalidInput(f"leaf_message_id {leaf_id} is not in conversation {self.id}")

    async def _commit(self, event: Event) -> None:
        self._seq += 1
        seq = self._seq
        await commit(
            self._journal, self._flusher, self._config.durability,
            Record(self.id, seq, event, prev=self.state.version),
            lambda changes: self.apply(seq, event, changes),
        )  # fmt: skip

    def apply(self, seq: int, event: Event, changes: Changes) -> None:
        """Apply a journaled event to the state (live or replayed) and tell the observer."""
        before = self.state.meta
        self.state.apply(seq, event, changes)
        self._observe(before, self.state.meta, event)


async def commit(
    journal: Journal,
    flusher: Flusher,
    durability: Durability,
    record: Record,
    apply: Callable[[Changes], None],
) -> None:
    """Journal a record per the durability mode, `apply` it, and leave it dirty to flush.

    Every mutation goes through here or `commit_many`: the conversation's own and its
    creation.
    """
    await commit_many(journal, flusher, durability, (record,), (apply,))


async def commit_many(
    journal: Journal,
    flusher: Flusher,
    durability: Durability,
    records: Sequence[Record],
    applies: Sequence[Callable[[Changes], None]],
) -> None:
    """`commit` for consecutive records of one conversation: journaled in one go (one
    journal send), then applied in order; a journal failure applies none of them."""
    conversation_id = records[0].conversation_id
    try:
        flusher.check_capacity()
    except Backpressure as exc:
        raise Unavailable(str(exc), retry_after=exc.retry_after) from None
    payloads = [encode_record(record) for record in records]
    epoch = journal.epoch(conversation_id)  # what the records go under: `diverged` names it
    with flusher.mutation():
        appends = [
            journal.append(conversation_id, record.seq, payload)
            for record, payload in zip(records, payloads, strict=True)
        ]
        if durability == "memory":
            for append in appends:
                appended = asyncio.ensure_future(append)
                appended.add_done_callback(_log_failure)
                flusher.adopt(appended)
        else:
            failure: JournalError | None = None
            unknown = False  # an append may have landed unanswered
            try:
                for append in appends:  # every one awaited: no failure goes unretrieved
                    try:
                        await append
                    except JournalError as exc:
                        failure = failure or exc
                        unknown = unknown or isinstance(exc, OutcomeUnknown)
            except BaseException:  # cancelled with the records on their way
                flusher.diverged(conversation_id, epoch)
                raise
            if unknown:
                flusher.diverged(conversation_id, epoch)
                raise Unavailable(
                    f"journal unavailable: {failure}; the write may or may not have been stored"
                ) from None
            if failure is not None:
                raise Unavailable(f"journal unavailable: {failure}") from None
        flusher.record_many(conversation_id, applies)
    if durability == "store":
        try:
            await flusher.flush(conversation_id)
        except StoreError as exc:
            raise Unavailable(f"store unavailable: {exc}") from None


def _log_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("journal append failed after an in-memory ack: %s", future.exception())
