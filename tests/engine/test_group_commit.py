"""Group commit: appends queued behind a conversation's lock are journaled together.

The journal here is the real file journal behind a gate that holds back every
acknowledgement until the test opens it, so which appends wait, which go together and
what happens when one of them fails is decided by the test, not by timing.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest

import engine.actor as actor_module
from engine.access import ANONYMOUS
from engine.errors import InvalidInput, Unavailable
from persistence.journal import JournalError
from persistence.journal_file import FileJournal
from persistence.records import Message
from tests.waiting import until

if TYPE_CHECKING:
    from conftest import Engine, EngineFactory


class GatedJournal:
    """The file journal, whose acknowledgements wait for `gate`; it notes which task
    handed over each record, and refuses the seqs in `failing` (they never reach it)."""

    def __init__(self, inner: FileJournal) -> None:
        self.inner = inner
        self.gate = asyncio.Event()
        self.gate.set()
        self.callers: list[tuple[int, asyncio.Task[object] | None]] = []  # (seq, task)
        self.failing: set[int] = set()

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def append(self, conversation_id: str, seq: int, payload: bytes) -> asyncio.Future[None]:
        self.callers.append((seq, asyncio.current_task()))
        refused = seq in self.failing
        landed = None if refused else self.inner.append(conversation_id, seq, payload)

        async def acknowledged() -> None:
            await self.gate.wait()
            if landed is None:
                raise JournalError(f"record {seq} refused by the test")
            await landed

        return asyncio.ensure_future(acknowledged())


async def open_gated(open_engine: EngineFactory) -> tuple[Engine, GatedJournal]:
    """An engine whose journal is the file journal behind a gate."""
    journals: list[GatedJournal] = []

    def wrap(inner: FileJournal) -> GatedJournal:
        journals.append(GatedJournal(inner))
        return journals[-1]

    engine = await open_engine(wrap_journal=wrap)
    return engine, journals[-1]


@pytest.fixture
async def gated(open_engine: EngineFactory) -> tuple[Engine, GatedJournal]:
    return await open_gated(open_engine)


async def hold_one_append(
    engine: Engine, journal: GatedJournal, cid: str, parent: str
) -> asyncio.Task[Message]:
    """An append that holds the conversation's lock, waiting for the gate."""
    journal.gate.clear()
    before = len(journal.callers)
    leader = asyncio.ensure_future(engine.say(cid, parent, "leader"))
    await until(lambda: len(journal.callers) == before + 1)
    return leader


async def test_appends_queued_behind_the_lock_go_to_the_journal_together(
    gated: tuple[Engine, GatedJournal],
) -> None:
    engine, journal = gated
    actor = await engine.conversation()
    root = actor.meta.root_id
    leader = await hold_one_append(engine, journal, actor.id, root)
    queued = [asyncio.ensure_future(engine.say(actor.id, root, f"m{i}")) for i in range(31)]
    await until(lambda: actor.queued_appends == 31)
    assert len(journal.callers) == 2  # the creation and the leader: the rest wait
    journal.gate.set()
    messages = [await leader, *await asyncio.gather(*queued)]

    batch = journal.callers[2:]
    assert len(batch) == 31 and len({task for _, task in batch}) == 1  # one hand-over
    assert sorted(m.seq for m in messages) == list(range(1, 33))
    assert [seq for seq, _ in journal.callers] == list(range(1, 34))
    assert len(actor) == 33 and all(actor.message(m.message_id) == m for m in messages)


async def test_the_batch_survives_a_restart_whole(open_engine: EngineFactory) -> None:
    engine, journal = await open_gated(open_engine)
    actor = await engine.conversation()
    root = actor.meta.root_id
    leader = await hold_one_append(engine, journal, actor.id, root)
    queued = [asyncio.ensure_future(engine.say(actor.id, root, f"m{i}")) for i in range(9)]
    await until(lambda: actor.queued_appends == 9)
    journal.gate.set()
    acked = [await leader, *await asyncio.gather(*queued)]
    await engine.crash()

    reopened = await open_engine()
    again = await reopened.registry.get(ANONYMOUS, actor.id)
    assert {m.message_id for m in acked} <= {m.message_id for m in again.messages()}
    assert len(again) == 11 and again.meta.message_count == 11


async def test_a_refused_append_in_a_batch_fails_alone(gated: tuple[Engine, GatedJournal]) -> None:
    engine, journal = gated
    actor = await engine.conversation()
    root = actor.meta.root_id
    leader = await hold_one_append(engine, journal, actor.id, root)
    good = [asyncio.ensure_future(engine.say(actor.id, root, f"ok{i}")) for i in range(3)]
    bad = asyncio.ensure_future(engine.say(actor.id, "no-such-message", "orphan"))
    late = asyncio.ensure_future(engine.say(actor.id, root, "after the refused one"))
    await until(lambda: actor.queued_appends == 5)
    journal.gate.set()
    accepted = [await leader, *await asyncio.gather(*good), await late]
    with pytest.raises(InvalidInput, match="no-such-message"):
        await bad
    assert [m.seq for m in accepted] == [1, 2, 3, 4, 5]  # the refusal used no number
    assert len(actor) == 6 and actor.meta.message_count == 6


async def test_appends_to_one_branch_in_a_batch_chain_on_each_other(
    gated: tuple[Engine, GatedJournal],
) -> None:
    engine, journal = gated
    actor = await engine.conversation()
    root = actor.meta.root_id
    branch = await actor.create_branch(ANONYMOUS, name="main", leaf_id=root, created_by="alice")
    leader = await hold_one_append(engine, journal, actor.id, root)
    on_branch = [
        asyncio.ensure_future(engine.say(actor.id, None, f"b{i}", branch_id=branch.branch_id))
        for i in range(5)
    ]
    await until(lambda: actor.queued_appends == 5)
    journal.gate.set()
    await leader
    chain = await asyncio.gather(*on_branch)
    assert chain[0].parent_id == root
    for parent, child in zip(chain, chain[1:], strict=False):
        assert child.parent_id == parent.message_id and child.depth == parent.depth + 1
    assert actor.branch(branch.branch_id).leaf_message_id == chain[-1].message_id


async def test_a_journal_failure_fails_the_whole_batch_and_applies_none_of_it(
    open_engine: EngineFactory,
) -> None:
    engine, journal = await open_gated(open_engine)
    actor = await engine.conversation()
    root = actor.meta.root_id
    leader = await hold_one_append(engine, journal, actor.id, root)
    queued = [asyncio.ensure_future(engine.say(actor.id, root, f"m{i}")) for i in range(4)]
    await until(lambda: actor.queued_appends == 4)
    journal.failing = {4}  # the batch's third record: seqs 3..6 go together
    journal.gate.set()
    kept = await leader
    results = await asyncio.gather(*queued, return_exceptions=True)
    assert all(isinstance(r, Unavailable) for r in results)
    assert len(actor) == 2 and actor.meta.message_count == 2
    after = await engine.say(actor.id, root, "after the failure")
    assert after.seq == 2 and len(actor) == 3

    await engine.crash()  # the batch's records that landed must not come back
    reopened = await open_engine()
    again = await reopened.registry.get(ANONYMOUS, actor.id)
    assert {m.message_id for m in again.messages()} == {root, kept.message_id, after.message_id}


async def test_a_cancelled_holder_leaves_the_queued_appends_to_the_next(
    gated: tuple[Engine, GatedJournal],
) -> None:
    engine, journal = gated
    actor = await engine.conversation()
    root = actor.meta.root_id
    leader = await hold_one_append(engine, journal, actor.id, root)
    queued = [asyncio.ensure_future(engine.say(actor.id, root, f"m{i}")) for i in range(3)]
    await until(lambda: actor.queued_appends == 3)
    leader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leader
    journal.gate.set()
    messages = await asyncio.gather(*queued)
    assert len({m.message_id for m in messages}) == 3
    assert all(actor.message(m.message_id) == m for m in messages)


async def test_writers_that_wait_for_their_ack_keep_sharing_journal_sends(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """32 writers, each appending again as soon as it is acknowledged (the bench's load):
    each batch takes everything that queued during the one before. Waiters taking the
    lock in turn would commit about one record per send instead."""
    sizes: list[int] = []
    commit_many = actor_module.commit_many

    async def counted(*args: Any) -> None:
        sizes.append(len(args[3]))
        await commit_many(*args)

    monkeypatch.setattr(actor_module, "commit_many", counted)
    actor = await engine.conversation()
    root = actor.meta.root_id
    sizes.clear()  # the creation's

    async def writer(k: int) -> None:
        for i in range(5):
            await engine.say(actor.id, root, f"w{k}-{i}")

    await asyncio.gather(*(writer(k) for k in range(32)))
    assert sum(sizes) == 160 and len(actor) == 161
    assert len(sizes) <= 20, sizes  # about two batches per round of 32
