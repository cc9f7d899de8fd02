"""ConversationActor: creation, appends, reads, validation, durability modes, backpressure."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import msgspec
import pytest

from engine import actor as actor_module
from engine.access import ANONYMOUS
from engine.actor import ConversationActor, NewMessage
from engine.errors import CanopyError, Conflict, InvalidInput, NotFound, Unavailable
from persistence.records import Conversation, Snapshot
from persistence.sqlite import SQLiteStore
from persistence.store import Changes, Key, Store
from tests.waiting import until

if TYPE_CHECKING:
    from conftest import Engine, EngineFactory


def footprint(engine: Engine, actor: ConversationActor) -> tuple[object, ...]:
    """Everything a rejected mutation must leave alone."""
    return (
        actor.meta,
        list(actor.messages()),
        list(actor.branches()),
        engine.journal.records_written,
        engine.flusher.unflushed_bytes,
    )


class GatedStore:
    """A store whose writes wait for `gate`; counts writes that reached it."""

    def __init__(self, inner: SQLiteStore) -> None:
        self.inner = inner
        self.gate = asyncio.Event()
        self.started = 0

    async def load(self, conversation_id: str) -> Snapshot | None:
        return await self.inner.load(conversation_id)

    async def write(self, conversation_id: str, changes: Changes) -> None:
        self.started += 1
        await self.gate.wait()
        await self.inner.write(conversation_id, changes)

    async def owned(self, user_id: str, after: Key | None, limit: int) -> list[Conversation]:
        return await self.inner.owned(user_id, after, limit)

    async def shared(self, user_id: str) -> list[tuple[Conversation, str]]:
        return await self.inner.shared(user_id)


# -- creation and reads -----------------------------------------------------------------


async def test_create_makes_a_root_only_conversation(engine: Engine) -> None:
    actor = await engine.conversation(title="Plans", owner="bob")
    root = actor.message(actor.meta.root_id)
    assert len(actor) == 1
    assert (root.role, root.depth, root.parent_id, root.seq) == ("root", 1, None, 0)
    assert msgspec.json.decode(root.content) == {
        "type": "metadata",
        "title": "Plans",
        "description": None,
        "is_public": False,
    }
    assert actor.lineage(root.message_id) == [root]
    assert list(actor.children(root.message_id)) == []
    assert (actor.meta.title, actor.meta.created_by) == ("Plans", "bob")
    assert (actor.meta.version, actor.meta.message_count) == (1, 1)


async def test_append_then_read_lineage_and_children(engine: Engine) -> None:
    actor = await engine.conversation()
    root = actor.meta.root_id
    a = await engine.say(actor.id, root, "a", metadata={"k": "v"})
    b = await engine.say(actor.id, a.message_id, "b", role="assistant")
    c = await engine.say(actor.id, a.message_id, "c")
    assert [n.message_id for n in actor.lineage(b.message_id)] == [root, a.message_id, b.message_id]
    assert list(actor.children(a.message_id)) == [b, c]
    assert list(actor.children(root)) == [a]
    assert (a.depth, b.depth, c.depth) == (2, 3, 3)
    assert (a.seq, b.seq, c.seq) == (1, 2, 3)
    assert actor.message(b.message_id) == b
    assert (b.role, a.content_metadata, b.content) == (
        "assistant",
        {"k": "v"},
        b'{"type":"text","text":"b"}',
    )
    assert [n.message_id for n in actor.messages()] == [
        root,
        a.message_id,
        b.message_id,
        c.message_id,
    ]
    assert (actor.meta.message_count, actor.meta.version, len(actor)) == (4, 4, 4)
    assert actor.meta.updated_at == c.created_at


@pytest.mark.parametrize("read", ["message", "lineage", "children"])
async def test_reads_of_unknown_message_raise_not_found(engine: Engine, read: str) -> None:
    actor = await engine.conversation()
    with pytest.raises(NotFound, match="no-such-id"):
        getattr(actor, read)("no-such-id")


async def test_unknown_branch_read_raises_not_found(engine: Engine) -> None:
    actor = await engine.conversation()
    with pytest.raises(NotFound):
        actor.branch("no-such-branch")


# -- validation: rejected mutations change nothing -----------------------------------------

Bad = Callable[[ConversationActor], Awaitable[object]]


def bad_append(**overrides: object) -> Bad:
    async def append(actor: ConversationActor) -> object:
        arguments: dict[str, object] = {
            "parent_id": actor.meta.root_id,
            "role": "human",
            "content": b'{"type":"text","text":"x"}',
            "content_metadata": {},
            "created_by": "alice",
        }
        arguments.update(overrides)
        return await actor.append(ANONYMOUS, NewMessage(**arguments))  # type: ignore[arg-type]

    return append


@pytest.mark.parametrize(
    ("mutation", "error"),
    [
        (bad_append(role="wizard"), InvalidInput),
        (bad_append(parent_id="not-in-tree"), InvalidInput),
        (bad_append(parent_id=None), InvalidInput),
        (bad_append(parent_id=None, branch_id="no-such-branch"), NotFound),
        (bad_append(branch_id="no-such-branch"), NotFound),
    ],
    ids=["role", "parent", "no-parent", "branch-only", "branch-with-parent"],
)
async def test_rejected_append_changes_nothing(
    engine: Engine, mutation: Bad, error: type[CanopyError]
) -> None:
    actor = await engine.conversation()
    await engine.say(actor.id, actor.meta.root_id)
    before = footprint(engine, actor)
    with pytest.raises(error):
        await engine.registry.run(ANONYMOUS, actor.id, mutation)
    assert footprint(engine, actor) == before
    assert actor.meta.version == 2 and len(actor) == 2


async def test_depth_limit_allows_max_depth_and_rejects_beyond(open_engine: EngineFactory) -> None:
    engine = await open_engine(max_lineage_depth=3)
    actor = await engine.conversation()
    second = await engine.say(actor.id, actor.meta.root_id)
    third = await engine.say(actor.id, second.message_id)
    assert third.depth == 3
    before = footprint(engine, actor)
    with pytest.raises(InvalidInput, match="depth"):
        await engine.say(actor.id, third.message_id)
    assert footprint(engine, actor) == before
    assert len(actor) == 3


async def test_append_to_branch_moves_its_leaf(engine: Engine) -> None:
    actor = await engine.conversation()
    a = await engine.say(actor.id, actor.meta.root_id, "a")
    main = await actor.create_branch(
        ANONYMOUS, name="main", leaf_id=a.message_id, created_by="alice"
    )
    other = await actor.create_branch(
        ANONYMOUS, name="other", leaf_id=a.message_id, created_by="alice"
    )
    b = await engine.say(actor.id, None, "b", branch_id=main.branch_id)
    c = await engine.say(actor.id, None, "c", branch_id=main.branch_id)
    assert b.parent_id == a.message_id and c.parent_id == b.message_id
    assert actor.branch(main.branch_id).leaf_message_id == c.message_id
    assert actor.branch(main.branch_id).last_updated == c.created_at
    assert actor.branch(other.branch_id) == other
    assert [n.message_id for n in actor.lineage(c.message_id)][-3:] == [
        a.message_id,
        b.message_id,
        c.message_id,
    ]


async def test_append_with_parent_and_branch_hangs_on_parent_and_moves_branch(
    engine: Engine,
) -> None:
    actor = await engine.conversation()
    a = await engine.say(actor.id, actor.meta.root_id, "a")
    branch = await actor.create_branch(
        ANONYMOUS, name="main", leaf_id=a.message_id, created_by="alice"
    )
    side = await engine.say(actor.id, actor.meta.root_id, "side", branch_id=branch.branch_id)
    assert side.parent_id == actor.meta.root_id
    assert actor.branch(branch.branch_id).leaf_message_id == side.message_id


async def test_create_branch_on_unknown_leaf_is_rejected(engine: Engine) -> None:
    actor = await engine.conversation()
    before = footprint(engine, actor)
    with pytest.raises(InvalidInput, match="leaf_message_id"):
        await actor.create_branch(ANONYMOUS, name="b", leaf_id="nope", created_by="alice")
    assert footprint(engine, actor) == before


# -- durability modes ---------------------------------------------------------------------


async def test_store_mode_writes_through_before_any_flush_cycle(open_engine: EngineFactory) -> None:
    engine = await open_engine(durability="store")
    actor = await engine.conversation()
    segments = engine.journal.segments()
    node = await engine.say(actor.id, actor.meta.root_id, "kept")
    stored = await engine.sqlite.load(actor.id)
    assert stored is not None
    assert stored.messages[-1] == node
    assert stored.conversation == actor.meta
    assert engine.flusher.unflushed_bytes == 0
    assert engine.journal.segments() == segments  # no cycle ran: a cycle marks a new segment


async def test_journal_mode_acks_after_journal_but_before_store(engine: Engine) -> None:
    actor = await engine.conversation()
    written = engine.journal.records_written
    await engine.say(actor.id, actor.meta.root_id)
    assert engine.journal.records_written == written + 1
    assert await engine.sqlite.load(actor.id) is None
    await engine.flusher.flush_all()
    stored = await engine.sqlite.load(actor.id)
    assert stored is not None and len(stored.messages) == 2


async def test_memory_mode_acks_before_the_journal_write(open_engine: EngineFactory) -> None:
    engine = await open_engine(durability="memory")
    actor = await engine.conversation()
    written = engine.journal.records_written
    node = await engine.say(actor.id, actor.meta.root_id)
    assert actor.message(node.message_id) == node
    assert engine.journal.records_written == written
    await until(lambda: engine.journal.records_written == written + 1)


# -- backpressure -----------------------------------------------------------------------------


async def test_backpressure_rejects_appends_while_the_store_is_stuck(
    open_engine: EngineFactory,
) -> None:
    gated: list[GatedStore] = []

    def wrap(inner: SQLiteStore) -> Store:
        gated.append(GatedStore(inner))
        return gated[0]

    engine = await open_engine(max_unflushed_bytes=4000, wrap_store=wrap)
    store = gated[0]
    try:
        actor = await engine.conversation()
        stuck = asyncio.ensure_future(engine.flusher.flush_all())
        await until(lambda: store.started == 1)
        accepted = 0
        with pytest.raises(Unavailable) as raised:
            for _ in range(50):
                before = footprint(engine, actor)
                await engine.say(actor.id, actor.meta.root_id, "x" * 1000)
                accepted += 1
        assert raised.value.retry_after > 0
        assert 0 < accepted < 50
        assert footprint(engine, actor) == before
        assert len(actor) == 1 + accepted
        store.gate.set()
        assert await stuck
        assert await engine.flusher.flush_all()
        await engine.say(actor.id, actor.meta.root_id, "after the store caught up")
        assert len(actor) == 2 + accepted
    finally:
        store.gate.set()


async def test_a_conversation_holds_at_most_max_branches_and_shares(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both lists are answered whole: unbounded, one client's 200k branches made every
    GET of them encode 156 MB on the loop (found by review)."""
    monkeypatch.setattr(actor_module, "MAX_BRANCHES", 3)
    monkeypatch.setattr(actor_module, "MAX_SHARES", 2)
    actor = await engine.conversation()
    root = actor.meta.root_id
    for k in range(3):
        await actor.create_branch(ANONYMOUS, name=f"b{k}", leaf_id=root, created_by="alice")
    version = actor.meta.version
    with pytest.raises(Conflict, match="3 branches"):
        await actor.create_branch(ANONYMOUS, name="b3", leaf_id=root, created_by="alice")
    for user in ("bob", "carol"):
        await actor.share(ANONYMOUS, shared_with=user, permission="read", shared_by="alice")
    await actor.share(ANONYMOUS, shared_with="bob", permission="fork", shared_by="alice")
    with pytest.raises(Conflict, match="2 users"):
        await actor.share(ANONYMOUS, shared_with="dave", permission="read", shared_by="alice")
    assert len(actor.state.branches) == 3 and set(actor.state.shares) == {"bob", "carol"}
    assert actor.meta.version == version + 3  # the refusals journaled nothing
    await actor.delete_branch(ANONYMOUS, next(iter(actor.state.branches)))
    await actor.create_branch(ANONYMOUS, name="b3", leaf_id=root, created_by="alice")


async def test_a_fork_copies_at_most_max_fork_messages_and_bytes(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fork is built on the loop in one go and joins the unflushed bytes whole: one of a
    500k-message conversation stalled the loop for ~2 s (found by review)."""
    actor = await engine.conversation()
    parent = actor.meta.root_id
    for k in range(4):
        parent = (await engine.say(actor.id, parent, f"m{k}")).message_id
    monkeypatch.setattr(actor_module, "MAX_FORK_MESSAGES", 3)
    with pytest.raises(InvalidInput, match="4 messages"):
        await actor.fork_copy(ANONYMOUS)
    point, copied = await actor.fork_copy(ANONYMOUS, message_id=actor.state.tree.get(
        parent).parent_id)  # fmt: skip
    assert len(copied) == 3
    monkeypatch.setattr(actor_module, "MAX_FORK_BYTES", sum(len(m.content) for m in copied) - 1)
    with pytest.raises(InvalidInput, match="bytes of content"):
        await actor.fork_copy(ANONYMOUS, message_id=point)
