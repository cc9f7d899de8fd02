"""Recovery past damage: the acknowledged chain of each conversation is replayed, what
cannot be applied is set aside, and no read raises on what replay left out."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

from engine.access import ANONYMOUS
from engine.actor import ConversationActor
from engine.conversation import ConversationState
from engine.errors import Unavailable
from engine.replay import Replayed, plan
from persistence.journal import Entry, JournalDamaged, JournalError
from persistence.journal_file import DAMAGED, FileJournal, frame, scan
from persistence.records import (
    Appended,
    Conversation,
    Deleted,
    Message,
    Record,
    Snapshot,
    decode_record,
    encode_record,
)
from persistence.sqlite import SQLiteStore
from persistence.store import Changes, StoreError
from tests.engine.conftest import Engine, EngineFactory, text


def frames_of(path: Path) -> Iterator[tuple[int, Record]]:
    for offset, payload in scan(path.read_bytes(), last=False).frames:
        yield offset, decode_record(payload)


def segment(engine: Engine) -> Path:
    return engine.directory / "journal" / engine.journal.segments()[-1]


async def chat(engine: Engine, words: list[str]) -> tuple[ConversationActor, list[Message]]:
    actor = await engine.conversation()
    said, parent = [], actor.meta.root_id
    for word in words:
        said.append(await engine.say(actor.id, parent, word))
        parent = said[-1].message_id
    return actor, said


def ids(actor: ConversationActor) -> list[str]:
    return [m.message_id for m in actor.messages()]


def set_aside(engine: Engine) -> list[Record]:
    path = engine.directory / "journal" / DAMAGED / "set-aside.log"
    return [record for _, record in frames_of(path)] if path.exists() else []


def damage_record(path: Path, cid: str, seq: int) -> None:
    """Flip a byte inside the payload of the conversation's record `seq`."""
    for offset, record in frames_of(path):
        if record.conversation_id == cid and record.seq == seq:
            data = bytearray(path.read_bytes())
            data[offset + 20] ^= 0xFF
            path.write_bytes(bytes(data))
            return
    raise AssertionError(f"no record {cid}/{seq}")


async def test_a_damaged_record_stops_its_conversation_and_no_other(
    open_engine: EngineFactory,
) -> None:
    first = await open_engine()
    hurt, hurt_said = await chat(first, ["a", "b", "c", "d"])
    whole, whole_said = await chat(first, ["x", "y", "z"])
    path = segment(first)
    await first.crash()
    damage_record(path, hurt.id, 3)  # "b": its child "c" would be an orphan

    with pytest.raises(JournalDamaged, match=path.name):
        await open_engine()
    second = await open_engine(recover_damaged=True)
    healed = await second.registry.get(ANONYMOUS, hurt.id)
    assert ids(healed) == [hurt.meta.root_id, hurt_said[0].message_id]  # up to the gap
    for message_id in ids(healed):
        healed.lineage(message_id)
    intact = await second.registry.get(ANONYMOUS, whole.id)
    assert ids(intact)[1:] == [m.message_id for m in whole_said]
    aside = set_aside(second)
    assert [(r.conversation_id, r.seq) for r in aside] == [(hurt.id, 4), (hurt.id, 5)]
    assert (second.directory / "journal" / DAMAGED / path.name).exists()

    await second.close()  # what stood is stored; new writes go on after the gap
    third = await open_engine()
    again = await third.registry.get(ANONYMOUS, hurt.id)
    assert ids(again) == ids(healed)
    added = await third.say(hurt.id, hurt_said[0].message_id, "after")
    assert again.lineage(added.message_id)[-1].message_id == added.message_id


async def test_damage_in_an_older_segment_with_a_newer_one_intact(
    open_engine: EngineFactory,
) -> None:
    first = await open_engine()
    actor, said = await chat(first, ["a", "b"])
    older = segment(first)
    await first.journal.mark()  # what follows goes to a newer segment, never trimmed
    other, other_said = await chat(first, ["p", "q"])
    more = [await first.say(actor.id, said[-1].message_id, "c")]
    await first.crash()
    damage_record(older, actor.id, 3)

    second = await open_engine(recover_damaged=True)
    healed = await second.registry.get(ANONYMOUS, actor.id)
    assert ids(healed) == [actor.meta.root_id, said[0].message_id]
    assert more[0].message_id not in ids(healed)
    assert [r.seq for r in set_aside(second) if r.conversation_id == actor.id] == [4]
    assert ids(await second.registry.get(ANONYMOUS, other.id))[1:] == [
        m.message_id for m in other_said
    ]


async def test_an_undecodable_payload_is_set_aside_and_the_node_starts(
    open_engine: EngineFactory,
) -> None:
    first = await open_engine()
    actor, said = await chat(first, ["a"])
    path = segment(first)
    await first.crash()
    with path.open("ab") as f:
        f.write(frame(b"\x93\xa1x\x01\xc1"))  # a valid frame whose payload is no Record
        f.write(frame(msgspec.msgpack.encode(["c", "not", "a record"])))
    second = await open_engine()
    assert ids(await second.registry.get(ANONYMOUS, actor.id))[1:] == [said[0].message_id]
    aside = (second.directory / "journal" / DAMAGED / "set-aside.log").read_bytes()
    assert len(scan(aside, last=False).frames) == 2
    assert second.journal.stats()["set_aside_records"] == 2


async def test_a_failed_append_that_reached_the_journal_is_not_replayed(
    open_engine: EngineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client of a failed append was told so; its retry is what was acknowledged."""
    first = await open_engine()
    actor, said = await chat(first, ["a"])
    journal = first.journal
    real_append = journal.append
    failed: list[int] = []

    async def lands_then_fails(cid: str, seq: int, payload: bytes) -> None:
        await real_append(cid, seq, payload)
        failed.append(seq)
        raise JournalError("timed out after the write")

    monkeypatch.setattr(journal, "append", lands_then_fails)
    with pytest.raises(Exception, match="timed out"):
        await first.say(actor.id, said[0].message_id, "lost")
    monkeypatch.setattr(journal, "append", real_append)
    retried = await first.say(actor.id, said[0].message_id, "retried")
    await first.crash()

    second = await open_engine()
    healed = await second.registry.get(ANONYMOUS, actor.id)
    assert ids(healed)[1:] == [said[0].message_id, retried.message_id]
    assert [m.content for m in healed.messages()][-1] == text("retried")
    assert failed and set_aside(second) == []


async def test_orphans_a_store_holds_are_never_served(engine: Engine) -> None:
    actor, said = await chat(engine, ["a"])
    await engine.flusher.flush_all()
    orphan = msgspec.structs.replace(said[0], message_id="orphan", parent_id="missing", seq=9)
    child = msgspec.structs.replace(said[0], message_id="child", parent_id="orphan", seq=10)
    await engine.sqlite.write(actor.id, Changes(messages={"orphan": orphan, "child": child}))
    assert await engine.registry.passivate(actor.id)
    again = await engine.registry.get(ANONYMOUS, actor.id)
    assert ids(again) == [actor.meta.root_id, said[0].message_id]
    for message_id in ids(again):
        assert again.lineage(message_id)[0].message_id == actor.meta.root_id


async def test_messages_stored_ahead_of_their_conversation_row_replay_over_themselves(
    open_engine: EngineFactory,
) -> None:
    """A store write cut short leaves messages after the stored version without the row
    that carries it; recovery applies their records again over them (it set them aside,
    and every acknowledged record after them, as inconsistent)."""
    first = await open_engine()
    actor, said = await chat(first, ["a"])
    assert await first.flusher.flush_all()
    parent, later = said[0].message_id, []
    for word in ["b", "c", "d"]:
        later.append(await first.say(actor.id, parent, word))
        parent = later[-1].message_id
    await first.sqlite.write(actor.id, Changes(messages={m.message_id: m for m in later[:2]}))
    await first.crash()

    second = await open_engine()
    healed = await second.registry.get(ANONYMOUS, actor.id)
    assert ids(healed)[1:] == [said[0].message_id, *(m.message_id for m in later)]
    assert healed.meta.message_count == 5 and set_aside(second) == []
    assert await second.flusher.flush_all()
    stored = await second.sqlite.load(actor.id)
    assert stored is not None and stored.conversation.message_count == 5


def test_a_message_id_held_with_other_content_is_still_refused() -> None:
    at = datetime.now(UTC)
    meta = Conversation("c", "r", "t", None, at, "u", at, False, None, None, 2, 2)
    root = Message("r", None, "system", b"{}", {}, at, "u", 0, 0)
    held = Message("m", "r", "user", text("held"), {}, at, "u", 1, 1)
    state = ConversationState(meta, [root, held], [], [])
    assert state.refuses(Appended(held, None)) is None  # stored ahead: applies over itself
    other = msgspec.structs.replace(held, content=text("other"))
    assert state.refuses(Appended(other, None)) == "message m exists already"


# -- the plan alone --------------------------------------------------------------------------


def replayed(cid: str, seq: int, prev: int) -> Replayed:
    record = Record(cid, seq, Deleted(datetime.now(UTC)), prev)
    return Replayed(record, Entry(b"", f"test@{seq}"))


@pytest.mark.parametrize(
    ("links", "base", "applied", "stranded", "superseded"),
    [
        ([(1, 0), (2, 1), (3, 2)], 0, [1, 2, 3], [], 0),
        ([(1, 0), (2, 1), (3, 2)], 2, [3], [], 0),
        ([(1, 0), (3, 2), (4, 3)], 0, [1], [3, 4], 0),  # record 2 lost
        ([(1, 0), (2, 1), (3, 1), (4, 3)], 0, [1, 3, 4], [], 1),  # 2 failed, 3 retried
        ([(5, 4), (6, 5)], 4, [5, 6], [], 0),
        ([(1, -1), (3, -1)], 0, [1, 3], [], 0),  # written before the links: journal order
        ([(1, 0), (2, 2), (3, 2)], 0, [1], [2, 3], 0),  # a link to itself: no loop
        ([(2, 3), (3, 2)], 1, [], [2, 3], 0),  # a cycle
    ],
)
def test_plan_follows_links_from_the_stored_version(
    links: list[tuple[int, int]],
    base: int,
    applied: list[int],
    stranded: list[int],
    superseded: int,
) -> None:
    result = plan([replayed("c", seq, prev) for seq, prev in links], base)
    assert [r.record.seq for r in result.apply] == applied
    assert [r.record.seq for r in result.stranded] == stranded
    assert result.superseded == superseded
    assert result.last_seq == max(seq for seq, _ in links)


class SlowSecondLoad:
    """A store whose load of one conversation waits until the journal was trimmed once,
    then fails: recovery is still going on while the flusher's cycle runs."""

    def __init__(self, inner: SQLiteStore, slow: str, trimmed: asyncio.Event) -> None:
        self.inner, self.slow, self.trimmed = inner, slow, trimmed

    async def load(self, conversation_id: str) -> Snapshot | None:
        if conversation_id == self.slow:
            await self.trimmed.wait()
            raise StoreError("the store went away mid-recovery")
        return await self.inner.load(conversation_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_the_flusher_never_trims_what_recovery_has_not_loaded_yet(
    open_engine: EngineFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await open_engine()
    early, early_said = await chat(first, ["a"])
    late, late_said = await chat(first, ["b", "c"])
    assert await first.flusher.flush_all()
    await first.say(early.id, early_said[-1].message_id, "journaled only")
    late_more = await first.say(late.id, late_said[-1].message_id, "journaled only")
    await first.crash()

    trimmed = asyncio.Event()
    trim = FileJournal.trim

    async def noting(self: FileJournal, mark: object, flushed: Mapping[str, int]) -> None:
        await trim(self, mark, flushed)
        trimmed.set()

    monkeypatch.setattr(FileJournal, "trim", noting)
    with pytest.raises(Unavailable):  # the second load fails after the cycle trimmed
        await open_engine(
            flush_interval=0.001,
            wrap_store=lambda inner: SlowSecondLoad(inner, late.id, trimmed),  # type: ignore[arg-type]
        )
    assert trimmed.is_set()
    monkeypatch.undo()
    third = await open_engine()
    assert late_more.message_id in ids(await third.registry.get(ANONYMOUS, late.id))


async def test_a_gap_right_after_the_stored_version_sets_aside_everything_after_it(
    open_engine: EngineFactory,
) -> None:
    first = await open_engine()
    actor, said = await chat(first, ["a"])
    assert await first.flusher.flush_all()  # stored at version 2
    more = [await first.say(actor.id, said[-1].message_id, w) for w in ("b", "c")]
    path = segment(first)
    await first.crash()
    damage_record(path, actor.id, 3)  # the record right after the stored version

    second = await open_engine(recover_damaged=True)
    healed = await second.registry.get(ANONYMOUS, actor.id)
    assert ids(healed)[1:] == [said[0].message_id]
    assert [r.seq for r in set_aside(second)] == [4]
    assert more[1].message_id not in ids(healed)


async def test_an_activation_whose_set_aside_fails_leaves_no_half_replayed_actor(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An activation after another owner's death (the Redis journal's tail), as the file
    journal's tail stands in here: a stranded record it cannot set aside fails the
    activation, and nothing of it stays hot to serve with the wrong numbering."""
    actor, said = await chat(engine, ["a"])
    await engine.flusher.flush_all()
    assert await engine.registry.passivate(actor.id)
    stranded = Record(actor.id, 9, Deleted(datetime.now(UTC)), prev=7)  # its predecessor lost
    entry = Entry(encode_record(stranded), "test@9")

    async def tail(conversation_id: str, after_seq: int) -> list[Entry]:
        return [entry]

    async def refuse(entry: Entry, reason: str) -> None:
        raise JournalError("set-aside storage unavailable")

    monkeypatch.setattr(engine.journal, "tail", tail)
    monkeypatch.setattr(engine.journal, "set_aside", refuse)
    with pytest.raises(Unavailable):
        await engine.registry.get(ANONYMOUS, actor.id)
    assert len(engine.registry) == 0 and engine.registry.hot_bytes == 0
    monkeypatch.undo()
    monkeypatch.setattr(engine.journal, "tail", tail)
    again = await engine.registry.get(ANONYMOUS, actor.id)
    assert ids(again)[1:] == [said[0].message_id]
    appended = await engine.say(actor.id, said[0].message_id, "numbered past it")
    assert again.state.version > 9 and again.message(appended.message_id)
