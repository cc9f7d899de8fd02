"""Registry: activation, passivation, the memory budget, deletion and crash recovery."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from engine.access import ANONYMOUS
from engine.actor import ConversationActor, NewMessage
from engine.budget import CONVERSATION_BYTES, ROW_BYTES, message_bytes
from engine.errors import NotFound, Unavailable
from persistence.journal_file import SEGMENT_MAGIC
from persistence.records import Branch, Conversation, Message, Share
from tests.waiting import until

if TYPE_CHECKING:
    from conftest import Engine, EngineFactory

State = tuple[Conversation, list[Message], dict[str, Branch], dict[str, Share]]


def state_of(actor: ConversationActor) -> State:
    return (
        actor.meta,
        list(actor.messages()),
        {b.branch_id: b for b in actor.branches()},
        {s.shared_with: s for s in actor.shares()},
    )


async def evictions_done(engine: Engine) -> None:
    """Await the eviction task the registry spawned when it went over its budget."""
    evicting = [t for t in engine.registry.background_tasks() if t.get_coro().__name__ == "_evict"]
    await asyncio.gather(*evicting)


async def busy_conversation(engine: Engine) -> ConversationActor:
    """A conversation touched by every kind of mutation."""
    actor = await engine.conversation(title="busy")
    cid, root = actor.id, actor.meta.root_id
    a = await engine.say(cid, root, "a", metadata={"model": "m1"})
    b = await engine.say(cid, a.message_id, "b", role="assistant")
    await engine.say(cid, root, "sibling")
    await engine.registry.run(
        ANONYMOUS,
        cid,
        lambda x: x.update(ANONYMOUS, title="renamed", description="d", is_public=True),
    )
    kept = await actor.create_branch(
        ANONYMOUS, name="main", leaf_id=b.message_id, created_by="alice"
    )
    gone = await actor.create_branch(
        ANONYMOUS, name="tmp", leaf_id=a.message_id, created_by="alice"
    )
    await actor.update_branch(ANONYMOUS, kept.branch_id, name="main2", leaf_id=None)
    await actor.delete_branch(ANONYMOUS, gone.branch_id)
    await engine.say(cid, None, "on main", branch_id=kept.branch_id)
    await actor.share(ANONYMOUS, shared_with="bob", permission="read", shared_by="alice")
    await actor.share(ANONYMOUS, shared_with="carol", permission="fork", shared_by="alice")
    await actor.share(ANONYMOUS, shared_with="dave", permission="branch", shared_by="alice")
    await actor.revoke(ANONYMOUS, "dave")
    return actor


# -- activation -------------------------------------------------------------------------------


async def test_get_unknown_conversation_raises_not_found(engine: Engine) -> None:
    with pytest.raises(NotFound):
        await engine.registry.get(ANONYMOUS, "00000000-0000-0000-0000-000000000000")


async def test_hot_get_returns_the_same_actor_without_activation(engine: Engine) -> None:
    actor = await engine.conversation()
    activations = engine.registry.activations
    assert await engine.registry.get(ANONYMOUS, actor.id) is actor
    assert engine.registry.activations == activations


async def test_concurrent_first_touches_share_one_activation(engine: Engine) -> None:
    actor = await engine.conversation()
    await engine.say(actor.id, actor.meta.root_id)
    assert await engine.registry.passivate(actor.id)
    activations = engine.registry.activations
    actors = await asyncio.gather(*(engine.registry.get(ANONYMOUS, actor.id) for _ in range(20)))
    assert engine.registry.activations == activations + 1
    assert len({id(a) for a in actors}) == 1
    assert actors[0] is not actor and not actors[0].closed
    assert state_of(actors[0]) == state_of(actor)


async def test_passivation_then_reactivation_is_identical(engine: Engine) -> None:
    actor = await busy_conversation(engine)
    before = state_of(actor)
    passivations = engine.registry.passivations
    assert await engine.registry.passivate(actor.id)
    assert actor.closed
    assert engine.registry.passivations == passivations + 1
    stored = await engine.sqlite.load(actor.id)
    assert stored is not None and stored.conversation == before[0]
    again = await engine.registry.get(ANONYMOUS, actor.id)
    assert again is not actor
    assert state_of(again) == before
    assert [b.branch_id for b in again.branches()] == [b.branch_id for b in actor.branches()]


async def test_share_order_is_the_same_after_reactivation(engine: Engine) -> None:
    actor = await engine.conversation()
    for user, permission in (("bob", "read"), ("carol", "read"), ("bob", "fork")):
        await actor.share(ANONYMOUS, shared_with=user, permission=permission, shared_by="alice")
    before = [s.shared_with for s in actor.shares()]
    assert await engine.registry.passivate(actor.id)
    again = await engine.registry.get(ANONYMOUS, actor.id)
    assert [s.shared_with for s in again.shares()] == before


async def test_reactivated_actor_accepts_appends(engine: Engine) -> None:
    actor = await engine.conversation()
    first = await engine.say(actor.id, actor.meta.root_id)
    assert await engine.registry.passivate(actor.id)
    second = await engine.say(actor.id, first.message_id)
    again = await engine.registry.get(ANONYMOUS, actor.id)
    assert [n.message_id for n in again.lineage(second.message_id)] == [
        actor.meta.root_id,
        first.message_id,
        second.message_id,
    ]
    assert (second.seq, again.meta.version, again.meta.message_count) == (2, 3, 3)


# -- the memory budget --------------------------------------------------------------------------


async def test_memory_budget_passivates_least_recently_used(open_engine: EngineFactory) -> None:
    engine = await open_engine(max_hot_messages=10)
    actors = []
    for i in range(3):  # 3 conversations x 3 messages = 9 hot messages
        actor = await engine.conversation(title=f"c{i}")
        await engine.say(actor.id, actor.meta.root_id)
        await engine.say(actor.id, actor.meta.root_id)
        actors.append(actor)
    assert engine.registry.hot_messages == 9 and engine.registry.passivations == 0
    await engine.registry.get(ANONYMOUS, actors[0].id)  # c0 is now the most recently used
    expected = {a.id: state_of(a) for a in actors}
    newcomer = await engine.conversation(title="c3")
    await engine.say(newcomer.id, newcomer.meta.root_id)  # 11 > 10: evict down to 9
    await evictions_done(engine)
    assert [a.closed for a in actors] == [False, True, False]
    assert engine.registry.passivations == 1
    assert engine.registry.hot_messages == 8 and len(engine.registry) == 3
    for actor in actors:
        again = await engine.registry.get(ANONYMOUS, actor.id)
        assert state_of(again) == expected[actor.id]


async def test_memory_budget_evicts_many_to_get_under_target(open_engine: EngineFactory) -> None:
    engine = await open_engine(max_hot_messages=20)
    actors = [await engine.conversation(title=f"c{i}") for i in range(20)]
    assert engine.registry.passivations == 0
    big = await engine.conversation(title="big")  # 21 > 20: evict down to 18
    await evictions_done(engine)
    assert engine.registry.hot_messages <= 18
    assert [a.closed for a in actors[:3]] == [True, True, True]
    assert not any(a.closed for a in actors[3:]) and not big.closed
    assert engine.registry.activations == 0
    for actor in actors[:3]:
        assert state_of(await engine.registry.get(ANONYMOUS, actor.id)) == state_of(actor)
    assert engine.registry.activations == 3


async def test_a_messages_metadata_counts_in_the_hot_and_unflushed_bytes(engine: Engine) -> None:
    """64 entries of 8 KB ride on one message within the body limit: uncounted, a 540 KB
    append cost the memory budget and the unflushed-bytes limit ~430 B (found by review)."""
    actor = await engine.conversation()
    before, unflushed = engine.registry.hot_bytes, engine.flusher.unflushed_bytes
    metadata = {f"key-{k:03d}" + "k" * 240: "v" * 8192 for k in range(64)}
    await engine.say(actor.id, actor.meta.root_id, "x", metadata=metadata)
    held = sum(len(k) + len(v) for k, v in metadata.items())
    assert engine.registry.hot_bytes - before > held
    assert engine.flusher.unflushed_bytes - unflushed > held
    assert actor.nbytes == engine.registry.hot_bytes  # the state's own count agrees


async def test_hot_bytes_follow_appends_shares_and_passivations(engine: Engine) -> None:
    first = await engine.conversation()
    root = first.state.tree.root
    expected = CONVERSATION_BYTES + message_bytes(root.content, root.content_metadata)
    assert engine.registry.hot_bytes == first.nbytes == expected
    said = await engine.say(first.id, first.meta.root_id, "x" * 1000)
    expected += message_bytes(said.content, said.content_metadata)
    assert engine.registry.hot_bytes == expected
    await engine.registry.run(
        ANONYMOUS,
        first.id,
        lambda a: a.share(ANONYMOUS, shared_with="bob", permission="read", shared_by="alice"),
    )
    expected += ROW_BYTES
    assert engine.registry.hot_bytes == expected
    second = await engine.conversation()
    assert engine.registry.hot_bytes == expected + second.nbytes
    assert await engine.registry.passivate(first.id)
    assert engine.registry.hot_bytes == second.nbytes
    again = await engine.registry.get(ANONYMOUS, first.id)
    assert again.nbytes == expected
    assert engine.registry.hot_bytes == expected + second.nbytes
    stats = engine.registry.stats()
    assert (stats["hot_actors"], stats["hot_bytes"]) == (2, expected + second.nbytes)
    assert (stats["activations"], stats["passivations"], stats["oversized"]) == (1, 1, 0)


async def test_byte_budget_passivates_least_recently_used(open_engine: EngineFactory) -> None:
    engine = await open_engine(max_hot_bytes=10 * CONVERSATION_BYTES)
    actors = [await engine.conversation(title=f"c{i}") for i in range(12)]
    await evictions_done(engine)
    assert engine.registry.hot_bytes <= 9 * CONVERSATION_BYTES
    assert engine.registry.passivations >= 3
    assert actors[0].closed and not actors[-1].closed


async def test_a_conversation_bigger_than_the_budget_does_not_thrash(
    open_engine: EngineFactory,
) -> None:
    """Alternating reads of one conversation over the budget and of small ones."""
    engine = await open_engine(max_hot_messages=20)
    big = await engine.conversation(title="big")
    for n in range(30):
        await engine.say(big.id, big.meta.root_id, f"m{n}")
    small = [await engine.conversation(title=f"s{i}") for i in range(3)]
    await evictions_done(engine)
    for round_ in range(30):
        await engine.registry.get(ANONYMOUS, big.id)
        await evictions_done(engine)
        await engine.registry.get(ANONYMOUS, small[round_ % 3].id)
        await evictions_done(engine)
    assert engine.registry.activations <= 4  # each at most once, not once per read
    assert engine.registry.stats()["oversized"] == 1


async def test_only_one_oversized_conversation_stays_hot(open_engine: EngineFactory) -> None:
    engine = await open_engine(max_hot_messages=10)
    bigs = []
    for i in range(2):
        big = await engine.conversation(title=f"big{i}")
        for n in range(8):
            await engine.say(big.id, big.meta.root_id, f"m{n}")
        bigs.append(big)
        await evictions_done(engine)
    assert bigs[0].closed and not bigs[1].closed
    assert engine.registry.stats()["oversized_hot"] == 1


# -- mutations racing passivation ----------------------------------------------------------------


async def test_append_racing_passivation_is_not_lost(engine: Engine) -> None:
    actor = await engine.conversation()
    node, passivated = await asyncio.gather(
        engine.say(actor.id, actor.meta.root_id, "racing"), engine.registry.passivate(actor.id)
    )
    assert passivated and actor.closed
    again = await engine.registry.get(ANONYMOUS, actor.id)
    assert again.message(node.message_id) == node


async def test_passivation_racing_append_is_not_lost(engine: Engine) -> None:
    actor = await engine.conversation()
    passivated, node = await asyncio.gather(
        engine.registry.passivate(actor.id), engine.say(actor.id, actor.meta.root_id, "racing")
    )
    assert passivated and actor.closed
    again = await engine.registry.get(ANONYMOUS, actor.id)
    assert again.message(node.message_id) == node


async def test_append_waiting_on_a_passivating_actor_retries_on_a_fresh_one(engine: Engine) -> None:
    actor = await engine.conversation()
    activations = engine.registry.activations
    passivating = asyncio.ensure_future(engine.registry.passivate(actor.id))
    await until(actor.lock.locked)  # the passivation holds the lock while it flushes
    node, passivated = await asyncio.gather(
        engine.say(actor.id, actor.meta.root_id, "late"), passivating
    )
    assert passivated and actor.closed
    assert node.message_id not in actor.state.tree  # applied to the new actor only
    again = await engine.registry.get(ANONYMOUS, actor.id)
    assert again is not actor and again.message(node.message_id) == node
    assert engine.registry.activations == activations + 1
    assert await engine.registry.passivate(again.id)
    assert (await engine.registry.get(ANONYMOUS, actor.id)).message(node.message_id) == node


# -- deletion -----------------------------------------------------------------------------------


async def deleted_conversation(engine: Engine) -> ConversationActor:
    actor = await engine.conversation()
    await engine.say(actor.id, actor.meta.root_id)
    await engine.registry.run(ANONYMOUS, actor.id, lambda a: a.delete(ANONYMOUS))
    return actor


async def test_deleted_conversation_is_not_found_while_hot(engine: Engine) -> None:
    actor = await deleted_conversation(engine)
    with pytest.raises(NotFound):
        await engine.registry.get(ANONYMOUS, actor.id)
    with pytest.raises(NotFound):
        await actor.append(ANONYMOUS, NewMessage(actor.meta.root_id, "human", b"{}", {}, "alice"))


async def test_deleted_conversation_is_not_found_after_passivation(engine: Engine) -> None:
    actor = await deleted_conversation(engine)
    assert await engine.registry.passivate(actor.id)
    with pytest.raises(NotFound):
        await engine.registry.get(ANONYMOUS, actor.id)


async def test_deleted_conversation_is_not_found_after_restart(open_engine: EngineFactory) -> None:
    first = await open_engine()
    actor = await deleted_conversation(first)
    await first.close()
    second = await open_engine()
    with pytest.raises(NotFound):
        await second.registry.get(ANONYMOUS, actor.id)


async def test_deleted_conversation_leaves_the_owners_listing(engine: Engine) -> None:
    kept = await engine.conversation()
    await deleted_conversation(engine)
    assert await engine.registry.user_conversations(ANONYMOUS, "alice", 10) == [kept.id]
    await engine.flusher.flush_all()
    assert await engine.registry.user_conversations(ANONYMOUS, "alice", 10) == [kept.id]


# -- crash recovery -----------------------------------------------------------------------------


async def test_recovery_replays_every_acknowledged_write(open_engine: EngineFactory) -> None:
    first = await open_engine()
    stored = await first.conversation(title="stored first")
    assert await first.flusher.flush_all()  # in the store; the journal now holds only what follows
    cid = stored.id
    a = await first.say(cid, stored.meta.root_id, "a")
    await first.say(cid, a.message_id, "b")
    await stored.share(ANONYMOUS, shared_with="bob", permission="read", shared_by="alice")
    fresh = await busy_conversation(first)  # never reached the store
    expected = {cid: state_of(stored), fresh.id: state_of(fresh)}
    old_segments = set(first.journal.segments())
    snapshot = await first.sqlite.load(cid)
    assert snapshot is not None and len(snapshot.messages) == 1
    assert await first.sqlite.load(fresh.id) is None
    await first.crash()

    second = await open_engine()
    for conversation_id, state in expected.items():
        assert state_of(await second.registry.get(ANONYMOUS, conversation_id)) == state
        snapshot = await second.sqlite.load(conversation_id)
        assert snapshot is not None and snapshot.conversation == state[0]
        assert snapshot.messages == state[1]
    remaining = second.journal.segments()
    assert old_segments.isdisjoint(remaining)
    assert all(
        (second.directory / "journal" / name).stat().st_size == len(SEGMENT_MAGIC)
        for name in remaining
    )


async def test_recovery_is_idempotent_across_two_crashes(open_engine: EngineFactory) -> None:
    first = await open_engine()
    actor = await busy_conversation(first)
    expected = state_of(actor)
    await first.crash()
    second = await open_engine()
    await second.crash()
    third = await open_engine()
    assert state_of(await third.registry.get(ANONYMOUS, actor.id)) == expected


async def test_recovery_of_a_conversation_deleted_and_passivated(
    open_engine: EngineFactory,
) -> None:
    first = await open_engine()
    actor = await first.conversation()
    assert await first.flusher.flush_all()  # Created is stored and trimmed from the journal
    await first.say(actor.id, actor.meta.root_id)
    await first.registry.run(ANONYMOUS, actor.id, lambda a: a.delete(ANONYMOUS))
    assert await first.registry.passivate(actor.id)  # the store holds the tombstone
    await first.crash()
    second = await open_engine()
    with pytest.raises(NotFound):
        await second.registry.get(ANONYMOUS, actor.id)


# -- backpressure on creation -------------------------------------------------------------------


async def test_create_over_the_unflushed_limit_raises_unavailable(
    open_engine: EngineFactory,
) -> None:
    engine = await open_engine(max_unflushed_bytes=1)
    await engine.conversation()
    hot = len(engine.registry)
    with pytest.raises(Unavailable) as raised:
        await engine.conversation()
    assert raised.value.retry_after > 0
    assert len(engine.registry) == hot


# -- listing ---------------------------------------------------------------------------------


async def test_an_append_to_a_widely_shared_conversation_writes_no_share_rows(
    engine: Engine,
) -> None:
    actor = await engine.conversation()
    for n in range(200):
        await actor.share(ANONYMOUS, shared_with=f"user{n}", permission="read", shared_by="alice")
    assert await engine.flusher.flush_all()
    db = engine.sqlite._conn
    before = db.total_changes
    await engine.say(actor.id, actor.meta.root_id)
    assert await engine.flusher.flush_all()
    assert db.total_changes - before == 3  # the message, the conversation, the owner's listing
    other = await engine.conversation(owner="bob")
    assert await engine.flusher.flush_all()
    assert await engine.registry.user_conversations(ANONYMOUS, "user7", 10) == [actor.id]
    await engine.say(actor.id, actor.meta.root_id)  # the shared one is active again
    assert await engine.flusher.flush_all()
    assert [(m.conversation_id, m.updated_at) for m, _ in await engine.sqlite.shared("user7")] == [
        (actor.id, actor.meta.updated_at)
    ]
    assert other.id not in await engine.registry.user_conversations(ANONYMOUS, "user7", 10)


async def test_listing_fills_its_limit_past_many_unflushed_deletes(engine: Engine) -> None:
    actors = [await engine.conversation(title=f"c{i}") for i in range(100)]
    assert await engine.flusher.flush_all()
    for actor in actors[20:]:  # the 80 most recent, deleted but not yet flushed
        await engine.registry.run(ANONYMOUS, actor.id, lambda a: a.delete(ANONYMOUS))
    kept = [a.id for a in reversed(actors[:20])]
    assert await engine.registry.user_conversations(ANONYMOUS, "alice", 10) == kept[:10]
    assert await engine.registry.user_conversations(ANONYMOUS, "alice", 50) == kept


async def test_hot_counts_stay_exact_under_concurrent_appends(engine: Engine) -> None:
    """Each queued append used to count the ones that finished ahead of it too (32
    concurrent appends counted 528 messages): the counts follow what the actors hold."""
    actor = await engine.conversation()
    other = await engine.conversation()
    await asyncio.gather(
        *(engine.say(cid, root, f"m{i}") for i in range(32) for cid, root in (
            (actor.id, actor.meta.root_id), (other.id, other.meta.root_id)))
    )  # fmt: skip
    assert engine.registry.hot_messages == len(actor) + len(other) == 2 * 33
    assert engine.registry.hot_bytes == actor.nbytes + other.nbytes
    assert await engine.registry.passivate(actor.id)
    assert engine.registry.hot_messages == len(other)
    assert engine.registry.hot_bytes == other.nbytes


async def test_hot_counts_stay_exact_under_appends_forks_and_passivations(
    engine: Engine,
) -> None:
    """32 writers at once: appends to a few conversations, forks of them (a creation with
    copied messages) and passivations in between. The counts are what the hot actors hold."""
    from engine.actor import NewConversation

    sources = [await engine.conversation(title=f"s{i}") for i in range(4)]

    async def writer(n: int) -> None:
        source = sources[n % len(sources)]
        for step in range(6):
            if step == 3 and n % 4 == 0:
                await engine.registry.passivate(source.id)  # reactivated by the next touch
            elif step == 4 and n % 2 == 0:
                point, copied = await engine.registry.run(
                    ANONYMOUS, source.id, lambda a: a.fork_copy(ANONYMOUS)
                )
                fork = NewConversation("f", "bob", fork_from=(source.id, point), copied=copied)
                await engine.registry.create(ANONYMOUS, fork)
            else:
                await engine.say(source.id, source.meta.root_id, f"w{n}-{step}")

    await asyncio.gather(*(writer(n) for n in range(32)))
    hot = engine.registry.actors()
    assert len(hot) > len(sources)  # the forks are hot too
    assert engine.registry.hot_messages == sum(len(actor) for actor in hot)
    assert engine.registry.hot_bytes == sum(actor.nbytes for actor in hot)


async def test_expire_deletes_only_what_has_expired(engine: Engine) -> None:
    from datetime import UTC, datetime, timedelta

    from engine.actor import NewConversation
    from engine.errors import NotFound

    soon = datetime.now(UTC) + timedelta(hours=1)
    ahead = await engine.registry.create(ANONYMOUS, NewConversation("t", "alice", expires_at=soon))
    assert not await engine.registry.expire(ahead.id)  # not due: kept, still served
    assert (await engine.registry.get(ANONYMOUS, ahead.id)).meta.title == "t"
    assert not await engine.registry.expire("00000000-0000-0000-0000-000000000000")

    past = datetime.now(UTC) - timedelta(seconds=1)
    due = await engine.registry.create(ANONYMOUS, NewConversation("t", "alice", expires_at=past))
    assert await engine.registry.expire(due.id)
    assert due.id not in [a.id for a in engine.registry.actors()]  # passivated: its memory is free
    snapshot = await engine.sqlite.load(due.id)
    assert snapshot is not None and snapshot.conversation.deleted
    assert not await engine.registry.expire(due.id)  # deleted already
    with pytest.raises(NotFound):
        await engine.registry.get(ANONYMOUS, due.id)


async def test_a_divergence_reported_for_an_older_epoch_leaves_the_newer_actor(
    engine: Engine,
) -> None:
    """A send answered 'may or may not be stored' names the epoch its records went under:
    an actor made since under another epoch (the node declared dead, the conversation
    taken again meanwhile) follows the journal and stays hot (found by review)."""
    actor = await engine.conversation()
    epoch = engine.journal.epoch(actor.id)
    engine.registry._rebuild(actor.id, epoch + 1)  # an older actor's send
    assert engine.registry.serves(actor.id) and engine.registry.rebuilds == 0
    engine.registry._rebuild(actor.id, epoch)  # this actor's own
    assert not engine.registry.serves(actor.id) and engine.registry.rebuilds == 1
