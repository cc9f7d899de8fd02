"""The registry consults the directory on activation and passivation only, drops an actor
whose lease another node took, and a cluster member's journal refuses what it may not
acknowledge; the single-node defaults own everything through the journal."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import msgspec
import pytest

from engine.access import ANONYMOUS
from engine.activation import ActivationTable
from engine.actor import NewConversation
from engine.directory import JournalOwnership, LeaseHeld, LossWatcher
from engine.errors import Conflict, NotFound, Unavailable
from engine.fencing import AcknowledgingJournal
from engine.ids import new_id
from engine.membership import Alone
from engine.registry import CREATE_ATTEMPTS
from persistence.journal import Entry, Journal, JournalError
from persistence.journal_file import FileJournal
from persistence.records import decode_record, encode_record
from persistence.sqlite import SQLiteStore
from tests.engine.test_actor import GatedStore
from tests.engine.test_group_commit import GatedJournal
from tests.waiting import until

if TYPE_CHECKING:
    from conftest import Engine, EngineFactory


class FakeDirectory:
    """Counts calls; refuses what `taken` names; `lose(cid)` plays a renewal's loss."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.calls: list[tuple[str, str]] = []
        self.held: set[str] = set()
        self.taken: set[str] = set()
        self.renewed = True
        self._watchers: list[LossWatcher] = []

    async def __aenter__(self) -> FakeDirectory:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    async def acquire(self, conversation_id: str) -> int:
        self.calls.append(("acquire", conversation_id))
        if conversation_id in self.taken:
            raise LeaseHeld(conversation_id, "other:1")
        await self.journal.acquire(conversation_id)
        self.held.add(conversation_id)
        return len(self.calls)

    def release(self, conversation_id: str) -> None:
        self.calls.append(("release", conversation_id))
        self.held.discard(conversation_id)
        self.journal.release(conversation_id)

    def is_held(self, conversation_id: str) -> bool:
        return conversation_id in self.held

    def can_acknowledge(self) -> bool:
        return self.renewed

    def on_lost(self, watcher: LossWatcher) -> None:
        self._watchers.append(watcher)

    def lose(self, conversation_id: str) -> None:
        self.held.discard(conversation_id)
        self.taken.add(conversation_id)
        for watcher in self._watchers:
            watcher(conversation_id)

    def stats(self) -> dict[str, Any]:
        return {}


async def test_activation_acquires_passivation_releases_hot_reads_touch_nothing(
    open_engine: EngineFactory,
) -> None:
    fakes: list[FakeDirectory] = []
    engine = await open_engine(directory_of=lambda j: fakes.append(FakeDirectory(j)) or fakes[0])
    directory = fakes[0]
    actor = await engine.conversation()
    assert directory.calls == [("acquire", actor.id)]
    for _ in range(100):
        await engine.registry.get(ANONYMOUS, actor.id)
        await engine.say(actor.id, actor.meta.root_id)
    assert directory.calls == [("acquire", actor.id)]  # the hot path never asks
    assert await engine.registry.passivate(actor.id)
    assert directory.calls[-1] == ("release", actor.id)
    await engine.registry.get(ANONYMOUS, actor.id)
    assert directory.calls[-1] == ("acquire", actor.id)


async def test_a_lost_lease_drops_the_actor_and_its_writes_are_refused(
    open_engine: EngineFactory,
) -> None:
    fakes: list[FakeDirectory] = []
    engine = await open_engine(directory_of=lambda j: fakes.append(FakeDirectory(j)) or fakes[0])
    actor = await engine.conversation()
    await engine.flusher.flush(actor.id)  # stored: what its new owner would build on
    fakes[0].lose(actor.id)
    assert actor.closed and len(engine.registry) == 0
    assert engine.registry.stats()["lost"] == 1
    with pytest.raises(Unavailable, match="owned by node other:1"):
        await engine.say(actor.id, actor.meta.root_id)


async def test_an_activation_waits_for_a_holder_letting_go(open_engine: EngineFactory) -> None:
    """A move or a leave releases its lease a moment after forwarding sends the request
    on: the activation asks again for up to `lease_wait_seconds`, then serves."""
    fakes: list[FakeDirectory] = []
    engine = await open_engine(
        directory_of=lambda j: fakes.append(FakeDirectory(j)) or fakes[0], lease_wait_seconds=30
    )
    actor = await engine.conversation()
    await engine.flusher.flush(actor.id)
    await engine.registry.passivate(actor.id)
    directory = fakes[0]
    directory.taken.add(actor.id)  # another node holds it, letting go
    asked_thrice = asyncio.Event()
    acquire = directory.acquire

    async def counted(conversation_id: str) -> int:
        if directory.calls.count(("acquire", conversation_id)) >= 3:
            asked_thrice.set()
        return await acquire(conversation_id)

    directory.acquire = counted  # type: ignore[method-assign]
    served = asyncio.create_task(engine.registry.get(ANONYMOUS, actor.id))
    asked = asyncio.ensure_future(asked_thrice.wait())
    await asyncio.wait({served, asked}, return_when=asyncio.FIRST_COMPLETED)
    assert not served.done(), served  # still asking, not refused
    directory.taken.discard(actor.id)  # its release reached Redis
    assert (await served).id == actor.id
    assert engine.registry.stats()["lease_waits"] >= 2


async def test_a_member_that_may_not_acknowledge_refuses_appends(
    open_engine: EngineFactory,
) -> None:
    fakes: list[FakeDirectory] = []

    def fenced(journal: Journal) -> Journal:
        fakes.append(FakeDirectory(journal))
        return AcknowledgingJournal(journal, Alone("n:1", "http://n", dict), fakes[0])

    engine = await open_engine(wrap_journal=fenced, directory_of=lambda _: fakes[0])
    actor = await engine.conversation()
    await engine.say(actor.id, actor.meta.root_id, "kept")
    fakes[0].renewed = False
    with pytest.raises(Unavailable, match="leases were not renewed"):
        await engine.say(actor.id, actor.meta.root_id, "refused")
    fakes[0].renewed = True
    fakes[0].held.discard(actor.id)  # lost, but not yet told
    with pytest.raises(Unavailable, match="no longer owns"):
        await engine.say(actor.id, actor.meta.root_id, "refused")
    assert [m.content for m in actor.messages()][-1].endswith(b'"kept"}')
    fakes[0].held.add(actor.id)  # still ours after all: the close may store it


async def test_the_single_node_default_owns_through_the_journal(
    open_engine: EngineFactory,
) -> None:
    engine = await open_engine()
    actor = await engine.conversation()
    assert await engine.registry.passivate(actor.id)
    await engine.registry.get(ANONYMOUS, actor.id)
    directory = engine.registry._directory
    assert isinstance(directory, JournalOwnership) and directory.stats()["acquired"] == 2
    assert directory.is_held(actor.id) and directory.can_acknowledge()
    alone = Alone("n:1", "http://n", lambda: {"actors": 1})
    assert [m.node_id for m in alone.live()] == ["n:1"] and alone.can_acknowledge()


async def test_a_lost_lease_drops_the_unflushed_changes_and_a_late_renewal_fences_writes(
    open_engine: EngineFactory,
) -> None:
    """The node that lost a conversation never stores it again: its new owner replayed
    the journal and stores those records (and what it wrote since)."""
    fakes: list[FakeDirectory] = []
    engine = await open_engine(directory_of=lambda j: fakes.append(FakeDirectory(j)) or fakes[0])
    kept, lost = await engine.conversation(), await engine.conversation()
    assert await engine.flusher.flush_all()
    fakes[0].renewed = False  # e.g. paused: its leases may have been taken meanwhile
    await engine.say(kept.id, kept.meta.root_id, "unflushed")
    await engine.say(lost.id, lost.meta.root_id, "unflushed")
    assert not await engine.flusher.flush_all()  # held back while it may not own them
    assert engine.flusher.stats()["fenced_writes"] >= 2
    fakes[0].lose(lost.id)  # the renewal: one was taken, the other is still ours
    fakes[0].renewed = True
    assert await engine.flusher.flush_all()
    assert engine.flusher.stats()["forgotten"] == 1
    assert engine.flusher.stats()["dirty_conversations"] == 0


async def test_an_activation_that_fails_after_taking_the_lease_lets_it_go(
    open_engine: EngineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Kept, the lease of a live node with nothing hot keeps the conversation from every
    other node's flusher start and adoption: its journaled writes would wait for the
    next request."""
    fakes: list[FakeDirectory] = []
    engine = await open_engine(directory_of=lambda j: fakes.append(FakeDirectory(j)) or fakes[0])
    directory = fakes[0]
    actor = await engine.conversation()
    await engine.say(actor.id, actor.meta.root_id)
    assert await engine.registry.passivate(actor.id)
    assert actor.id not in directory.held

    async def unreachable(conversation_id: str, after_seq: int) -> list[Any]:
        raise JournalError("redis unavailable: connection refused")

    monkeypatch.setattr(engine.journal, "tail", unreachable)
    with pytest.raises(Unavailable, match="cannot activate"):
        await engine.registry.get(ANONYMOUS, actor.id)
    assert directory.calls[-2:] == [("acquire", actor.id), ("release", actor.id)]
    assert actor.id not in directory.held
    monkeypatch.undo()
    hot = await engine.registry.get(ANONYMOUS, actor.id)  # served again once it can be
    assert hot.meta.message_count == 2 and actor.id in directory.held


async def open_creating(
    open_engine: EngineFactory,
) -> tuple[Engine, GatedJournal, FakeDirectory]:
    """An engine with leases whose journal holds acknowledgements back until its gate opens."""
    gated: list[GatedJournal] = []
    fakes: list[FakeDirectory] = []

    def wrap(inner: FileJournal) -> GatedJournal:
        gated.append(GatedJournal(inner))
        return gated[0]

    engine = await open_engine(
        wrap_journal=wrap, directory_of=lambda j: fakes.append(FakeDirectory(j)) or fakes[0]
    )
    return engine, gated[0], fakes[0]


def creation(cid: str) -> NewConversation:
    """A creation of an id picked elsewhere (a cluster's node that relays it here)."""
    return NewConversation("chat", "alice", conversation_id=cid)


async def test_a_second_creation_of_an_id_in_flight_is_refused_and_leaves_the_lease(
    open_engine: EngineFactory,
) -> None:
    """A relayed creation sent again while the first is journaled: the second waits for
    the first and answers Conflict; it must not let go of the lease the first holds
    (it did: its acquire saw epoch 2, and its refusal released the lease)."""
    engine, journal, directory = await open_creating(open_engine)
    cid = new_id()
    journal.gate.clear()
    first = asyncio.ensure_future(engine.registry.create(ANONYMOUS, creation(cid)))
    await until(lambda: len(journal.callers) == 1)  # its record is on its way
    second = asyncio.ensure_future(engine.registry.create(ANONYMOUS, creation(cid)))
    await asyncio.sleep(0)  # one turn: it finds the first in flight
    assert not second.done()  # waiting for the first, not refused at once
    journal.gate.set()
    actor = await first
    with pytest.raises(Conflict, match="exists already"):
        await second
    assert directory.calls == [("acquire", cid)]
    assert cid in directory.held and engine.registry.serves(cid)
    assert engine.registry.hot_messages == len(actor) == 1
    assert (await engine.registry.get(ANONYMOUS, cid)) is actor


async def test_a_creation_of_a_hot_id_is_refused_without_touching_its_lease(
    open_engine: EngineFactory,
) -> None:
    engine, _, directory = await open_creating(open_engine)
    actor = await engine.conversation()
    with pytest.raises(Conflict, match="exists already"):
        await engine.registry.create(ANONYMOUS, creation(actor.id))
    assert directory.calls == [("acquire", actor.id)]
    assert actor.id in directory.held and engine.registry.serves(actor.id)


async def test_a_read_during_a_creation_gets_the_created_conversation(
    open_engine: EngineFactory,
) -> None:
    """The creation is the id's activation: a read meanwhile waits for it, and never
    builds a second actor from the journaled creation (which would count it twice)."""
    engine, journal, directory = await open_creating(open_engine)
    cid = new_id()
    journal.gate.clear()
    creating = asyncio.ensure_future(engine.registry.create(ANONYMOUS, creation(cid)))
    await until(lambda: len(journal.callers) == 1)
    reading = asyncio.ensure_future(engine.registry.get(ANONYMOUS, cid))
    await until(lambda: engine.journal.records_written == 1)  # readable in the journal
    journal.gate.set()
    actor = await creating
    assert (await reading) is actor
    assert directory.calls == [("acquire", cid)]
    assert engine.registry.hot_messages == 1 and len(engine.registry) == 1


async def test_a_creation_the_journal_refuses_lets_its_lease_go(
    open_engine: EngineFactory,
) -> None:
    """Kept, a live node would hold the lease of a conversation that does not exist."""
    engine, journal, directory = await open_creating(open_engine)
    journal.failing.add(1)  # the creation's record
    cid = new_id()
    with pytest.raises(Unavailable, match="journal unavailable"):
        await engine.registry.create(ANONYMOUS, creation(cid))
    assert directory.calls == [("acquire", cid), ("release", cid)]
    assert cid not in directory.held and len(engine.registry) == 0


async def test_a_read_waiting_on_a_resent_creation_of_a_stored_id_gets_the_conversation(
    open_engine: EngineFactory,
) -> None:
    """The id was used before (its epoch moved on): the resent creation answers Conflict,
    and a read that waited for it gets the conversation, loaded, not that Conflict."""
    engine, _, directory = await open_creating(open_engine)
    actor = await engine.registry.create(ANONYMOUS, creation(new_id()))
    await engine.say(actor.id, actor.meta.root_id, "kept")
    await engine.flusher.flush(actor.id)
    assert await engine.registry.passivate(actor.id)
    activations = engine.registry.stats()["activations"]
    answered, acquire = asyncio.Event(), directory.acquire

    async def held_back(conversation_id: str) -> int:
        await answered.wait()
        return await acquire(conversation_id)

    directory.acquire = held_back  # type: ignore[method-assign]
    resent = asyncio.ensure_future(engine.registry.create(ANONYMOUS, creation(actor.id)))
    await asyncio.sleep(0)  # one turn: it is the id's activation, waiting for its lease
    reading = asyncio.ensure_future(engine.registry.get(ANONYMOUS, actor.id))
    await asyncio.sleep(0)
    assert not resent.done() and not reading.done()  # the read waits for the creation
    answered.set()
    with pytest.raises(Conflict, match="exists already"):
        await resent
    loaded = await reading
    assert loaded.meta.message_count == 2 and actor.id in directory.held
    assert engine.registry.stats()["activations"] == activations + 1  # one load, shared


async def test_a_read_waiting_on_a_cancelled_creation_activates_for_itself(
    open_engine: EngineFactory,
) -> None:
    """A creation cancelled under its caller (a shutdown, a client gone) is not the
    waiting read's failure: the read runs its own activation and hears its answer (here
    NotFound: this journal's tail is empty and nothing reached the store), not a
    CancelledError of someone else's."""
    engine, journal, directory = await open_creating(open_engine)
    cid = new_id()
    journal.gate.clear()
    creating = asyncio.ensure_future(engine.registry.create(ANONYMOUS, creation(cid)))
    await until(lambda: len(journal.callers) == 1)
    reading = asyncio.ensure_future(engine.registry.get(ANONYMOUS, cid))
    await asyncio.sleep(0)  # one turn: the read waits for the creation
    assert not reading.done()
    creating.cancel()
    with pytest.raises(asyncio.CancelledError):
        await creating
    with pytest.raises(NotFound):
        await reading
    assert directory.calls == [("acquire", cid), ("release", cid)]  # the creation's, let go
    assert cid not in directory.held
    journal.gate.set()


async def test_a_lease_lost_while_its_passivation_flushes_drops_the_actor_once(
    open_engine: EngineFactory,
) -> None:
    """The second drop raised KeyError out of the passivation (found by review), and
    would have released a lease by then maybe another actor's."""
    fakes: list[FakeDirectory] = []
    stores: list[GatedStore] = []

    def gated(inner: SQLiteStore) -> GatedStore:
        stores.append(GatedStore(inner))
        return stores[0]

    engine = await open_engine(
        wrap_store=gated, directory_of=lambda j: fakes.append(FakeDirectory(j)) or fakes[0]
    )
    directory, store = fakes[0], stores[0]
    store.gate.set()
    actor = await engine.conversation()
    await engine.say(actor.id, actor.meta.root_id)
    store.gate.clear()
    before = store.started
    passivating = asyncio.ensure_future(engine.registry.passivate(actor.id))
    await until(lambda: store.started == before + 1)  # its flush waits at the store
    directory.lose(actor.id)  # another node took it meanwhile
    assert actor.closed and engine.registry.hot_messages == 0
    calls = list(directory.calls)
    store.gate.set()
    assert await passivating is True
    assert directory.calls == calls  # no second release
    assert engine.registry.hot_messages == 0 and len(engine.registry) == 0
    assert engine.registry.stats()["passivations"] == 0 and engine.registry.stats()["lost"] == 1


async def test_a_lease_lost_during_the_activation_leaves_nothing_hot(
    open_engine: EngineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`_lost` found nothing to drop while the activation read the journal; the actor it
    built was then hot and counted with no lease (found by review)."""
    fakes: list[FakeDirectory] = []
    engine = await open_engine(directory_of=lambda j: fakes.append(FakeDirectory(j)) or fakes[0])
    directory = fakes[0]
    actor = await engine.conversation()
    await engine.say(actor.id, actor.meta.root_id)
    assert await engine.registry.passivate(actor.id)
    tail = engine.journal.tail

    async def taken_meanwhile(conversation_id: str, after_seq: int) -> list[Any]:
        directory.lose(conversation_id)  # another node took it during the read
        return await tail(conversation_id, after_seq)

    monkeypatch.setattr(engine.journal, "tail", taken_meanwhile)
    with pytest.raises(Unavailable, match="taken by another node"):
        await engine.registry.get(ANONYMOUS, actor.id)
    assert len(engine.registry) == 0 and engine.registry.hot_messages == 0
    assert engine.registry.hot_bytes == 0 and actor.id not in directory.held
    monkeypatch.undo()
    directory.taken.discard(actor.id)  # let go again
    hot = await engine.registry.get(ANONYMOUS, actor.id)
    assert hot.meta.message_count == 2 and engine.registry.hot_messages == 2


async def test_appends_during_an_activations_set_aside_go_past_the_stranded_seqs(
    open_engine: EngineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While an activation sets stranded records aside, its actor is hot already: an
    append then was numbered on the applied chain, at a seq a stranded record holds
    (found by review)."""
    fakes: list[FakeDirectory] = []
    engine = await open_engine(directory_of=lambda j: fakes.append(FakeDirectory(j)) or fakes[0])
    actor = await engine.conversation()
    payloads: list[bytes] = []
    append = engine.journal.append

    def capture(cid: str, seq: int, payload: bytes) -> asyncio.Future[None]:
        payloads.append(payload)
        return append(cid, seq, payload)

    monkeypatch.setattr(engine.journal, "append", capture)
    await engine.say(actor.id, actor.meta.root_id, "stored")  # record 2
    assert await engine.registry.passivate(actor.id)  # stored at version 2
    stored = decode_record(payloads[-1])
    stranded = msgspec.structs.replace(stored, seq=9, prev=8)  # behind a gap: set aside
    entries = [Entry(payloads[-1], "test@2"), Entry(encode_record(stranded), "test@9")]

    async def tail(conversation_id: str, after_seq: int) -> list[Entry]:
        return entries

    setting_aside, aside = asyncio.Event(), asyncio.Event()

    async def held_set_aside(entry: Entry, reason: str) -> None:
        setting_aside.set()
        await aside.wait()

    monkeypatch.setattr(engine.journal, "tail", tail)
    monkeypatch.setattr(engine.journal, "set_aside", held_set_aside)
    activating = asyncio.ensure_future(engine.registry.get(ANONYMOUS, actor.id))
    await until(setting_aside.is_set)
    hot = engine.registry._table.get(actor.id)
    assert hot is not None and hot.state.version == 2
    await engine.say(actor.id, actor.meta.root_id, "meanwhile")
    assert hot.state.version == 10  # numbered past the stranded seq 9
    aside.set()
    assert (await activating) is hot


async def test_a_creation_behind_reads_that_keep_finding_nothing_gives_up(
    open_engine: EngineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each read of the id ahead of the creation activates it and finds nothing; the
    creation then tried again, with no bound (noticed in session 16)."""
    engine, _, directory = await open_creating(open_engine)
    cid = new_id()
    activate, looked = ActivationTable.activate, []

    async def found_nothing_first(table: ActivationTable, conversation_id: str, load: Any) -> Any:
        if len(looked) < 1000:  # another activation's outcome, shared: nothing there
            looked.append(conversation_id)
            raise NotFound(conversation_id)
        return await activate(table, conversation_id, load)

    monkeypatch.setattr(ActivationTable, "activate", found_nothing_first)
    with pytest.raises(Unavailable, match="ask again"):
        await engine.registry.create(ANONYMOUS, creation(cid))
    assert len(looked) == CREATE_ATTEMPTS and not directory.held
