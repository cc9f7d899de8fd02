"""The serving side of `--flusher-process`: passivation writes nothing, so a conversation
evicted before its flusher stored it reloads whole from the store plus the journal."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import msgspec
import pytest
import redis.asyncio as redis
from redis.exceptions import RedisError

from engine.access import ANONYMOUS
from engine.actor import ConversationActor, NewMessage
from engine.registry import Registry
from gateway.keys import CONVERSATIONS, FLUSHER, JOURNAL, STORE
from persistence import redis_keys
from persistence.journal_redis import RedisJournal
from persistence.records import Message
from persistence.store import StoreError
from tests.conftest import FLUSHER_PROCESS, Node, NodeFactory, emptied
from tests.services import REDIS_URL


@pytest.fixture
def backend() -> dict[str, Any]:
    """Cassandra + Redis (emptied), the flusher in its own process."""
    return emptied(FLUSHER_PROCESS)


@contextmanager
def flusher_stopped(node: Node) -> Iterator[None]:
    """SIGSTOP the node's flusher process: nothing reaches the store meanwhile."""
    pid = node.app[FLUSHER].stats()["flusher_process_pid"]
    assert pid
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def _eventually(condition: Callable[[], Any], seconds: float = 60.0) -> None:
    """Poll what the flusher process does, within a deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not await condition():
        assert loop.time() < deadline, "the flusher process never stored it"
        await asyncio.sleep(0.05)


async def _append(node: Node, cid: str, parent: str, text: str) -> str:
    body = {"parent_message_id": parent, "role": "human", "created_by": "u",
            "content": {"type": "text", "text": text}}  # fmt: skip
    status, message = await node.request("POST", f"/api/v1/conversations/{cid}/messages", json=body)
    assert status == 200, message
    return str(message["message_id"])


async def _tree(node: Node, cid: str) -> list[str]:
    status, tree = await node.request("GET", f"/api/v1/conversations/{cid}/tree")
    assert status == 200, tree
    return [m["content"]["text"] for m in tree["messages"][1:]]


async def _conversation_with(node: Node, count: int) -> tuple[str, str]:
    """A new conversation with a chain of `count` messages m0, m1...: its id, last id."""
    status, created = await node.request(
        "POST", "/api/v1/conversations", json={"title": "f", "created_by": "u"}
    )
    assert status == 200
    cid = created["conversation_id"]
    status, tree = await node.request("GET", f"/api/v1/conversations/{cid}/tree")
    parent = tree["messages"][0]["message_id"]
    for i in range(count):
        parent = await _append(node, cid, parent, f"m{i}")
    return cid, parent


async def test_evicted_before_stored_reloads_whole(start_node: NodeFactory) -> None:
    node = await start_node()
    registry = node.app[CONVERSATIONS]
    assert isinstance(registry, Registry)
    store = node.app[STORE]
    with flusher_stopped(node):  # created and appended to, nothing stored
        cid, parent = await _conversation_with(node, 3)
        assert await registry.passivate(cid)
        assert await store.load(cid) is None
        assert await _tree(node, cid) == ["m0", "m1", "m2"]  # from the journal alone

    async def stored(count: int) -> bool:
        snapshot = await store.load(cid)
        return snapshot is not None and snapshot.conversation.message_count == count

    await _eventually(lambda: stored(4))
    with flusher_stopped(node):  # part stored, part journaled only
        for i in range(3, 5):
            parent = await _append(node, cid, parent, f"m{i}")
        assert await registry.passivate(cid)
        assert await _tree(node, cid) == [f"m{i}" for i in range(5)]
    await _eventually(lambda: stored(6))
    assert await _tree(node, cid) == [f"m{i}" for i in range(5)]
    flusher = node.app[FLUSHER]

    async def caught_up() -> bool:  # what the flusher published reached the node
        stats = flusher.stats()
        return stats["unflushed_bytes"] == 0 and stats["dirty_conversations"] == 0

    await _eventually(caught_up)
    stats = flusher.stats()
    assert stats["flusher_process_restarts"] == 0 and stats["flusher_process_running"] == 1
    assert stats["flusher_batches_written"] >= 2 and stats["flusher_lease_ms"] > 0


async def test_an_unknown_conversation_is_not_found_and_leaves_nothing_in_redis(
    start_node: NodeFactory,
) -> None:
    node = await start_node()
    status, body = await node.request("GET", f"/api/v1/conversations/{uuid.uuid4()}/tree")
    assert status == 404, body
    async with redis.Redis.from_url(REDIS_URL) as client:
        assert not await client.keys("canopy:epoch:*")


async def test_an_activation_racing_the_flusher_builds_on_what_it_stored(
    start_node: NodeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store read of an activation returns a version the flusher process then stores
    past and trims the journal behind: the activation must not serve the older state."""
    node = await start_node()
    registry = node.app[CONVERSATIONS]
    assert isinstance(registry, Registry)
    store = node.app[STORE]
    cid, parent = await _conversation_with(node, 1)

    async def stored(count: int) -> bool:
        snapshot = await store.load(cid)
        return snapshot is not None and snapshot.conversation.message_count == count

    await _eventually(lambda: stored(2))
    stale = await store.load(cid)
    for i in range(1, 3):
        parent = await _append(node, cid, parent, f"m{i}")
    await _eventually(lambda: stored(4))
    await _eventually(lambda: _trimmed(cid))
    assert await registry.passivate(cid)
    load = store.load
    calls = 0

    async def first_read_is_stale(conversation_id: str) -> Any:
        nonlocal calls
        calls += 1
        return stale if calls == 1 else await load(conversation_id)

    monkeypatch.setattr(store, "load", first_read_is_stale)
    assert await _tree(node, cid) == ["m0", "m1", "m2"]
    parent = await _append(node, cid, parent, "m3")
    monkeypatch.undo()
    await _eventually(lambda: stored(5))
    assert await _tree(node, cid) == ["m0", "m1", "m2", "m3"]


async def _trimmed(cid: str) -> bool:
    async with redis.Redis.from_url(REDIS_URL) as client:
        return not await client.exists(redis_keys.journal(cid))


async def test_a_conversation_another_node_took_is_no_longer_counted_unflushed(
    start_node: NodeFactory,
) -> None:
    """A cluster member that lost a conversation forgets what is unstored of it: the new
    owner counts it (and its flusher stores it). Counted here, it held this node's
    backpressure until this node's flusher process happened to store it."""
    node = await start_node()
    flusher = node.app[FLUSHER]
    with flusher_stopped(node):
        cid, _ = await _conversation_with(node, 1)
        assert flusher.unflushed(cid)[1] == 2 and flusher.stats()["unflushed_bytes"] > 0
        flusher.forget(cid)  # what Registry does when another node took the lease
        assert flusher.unflushed(cid) == (0, 0)
        stats = flusher.stats()
        assert stats["unflushed_bytes"] == 0 and stats["unflushed_records"] == 0


async def test_a_flush_now_of_a_busy_conversation_waits_only_for_what_came_before(
    start_node: NodeFactory,
) -> None:
    """Appends keep coming while the flush waits: it answers once what was written
    before it is stored (it waited for a moment with nothing unstored, which a busy
    conversation never has, and gave a 503)."""
    node = await start_node()
    flusher = node.app[FLUSHER]
    flusher._remote = dataclasses.replace(flusher._remote, flush_now_timeout=60.0)
    with flusher_stopped(node):
        cid, parent = await _conversation_with(node, 3)
        before = flusher.unflushed(cid)[1]
        flushing = asyncio.create_task(flusher.flush_now(cid))
    stop = asyncio.Event()

    async def writer() -> None:
        while not stop.is_set():
            await _append(node, cid, parent, "later")  # siblings: no depth limit to reach

    writing = asyncio.create_task(writer())
    try:
        await flushing
    finally:
        stop.set()
        await writing
    stored = await node.app[STORE].load(cid)
    assert stored is not None and stored.conversation.message_count >= before


async def test_a_flush_now_fails_when_another_node_took_the_conversation_meanwhile(
    start_node: NodeFactory,
) -> None:
    node = await start_node()
    flusher = node.app[FLUSHER]
    flusher._remote = dataclasses.replace(flusher._remote, flush_now_timeout=60.0)
    with flusher_stopped(node):
        cid, _ = await _conversation_with(node, 1)
        flushing = asyncio.create_task(flusher.flush_now(cid))
        while cid not in flusher._waiting:  # it waits on the stopped flusher process
            await asyncio.sleep(0)
        flusher.forget(cid)  # what Registry does when another node took the lease
        with pytest.raises(StoreError, match="another node took"):
            await flushing


async def test_an_append_answered_unknown_is_followed_by_the_next_in_the_store(
    start_node: NodeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An append whose script ran in Redis and whose answer was lost (a timeout): the
    client hears 503 "may or may not have been stored", and the flusher process stores
    that record from the journal. The next append must follow it. It used to be numbered
    on the actor's state (its `prev` the record before), so the flusher process, stored
    past it already, never stored it or anything after, and a reload set them aside:
    acknowledged messages gone (found by review)."""
    node = await start_node()
    store, journal = node.app[STORE], node.app[JOURNAL]
    assert isinstance(journal, RedisJournal)
    cid, parent = await _conversation_with(node, 1)
    with flusher_stopped(node):
        first = await _append(node, cid, parent, "acked")
        settle = journal._settle

        def answer_lost(prepared: Any, outcome: Any, started: float) -> None:
            monkeypatch.undo()
            settle(prepared, RedisError("Timeout reading from redis"), started)

        monkeypatch.setattr(journal, "_settle", answer_lost)
        body = {"parent_message_id": first, "role": "human", "created_by": "u",
                "content": {"type": "text", "text": "unanswered"}}  # fmt: skip
        status, refused = await node.request(
            "POST", f"/api/v1/conversations/{cid}/messages", json=body
        )
        assert status == 503 and "may or may not" in refused["error"]["message"], refused

    async def stored(count: int) -> bool:
        snapshot = await store.load(cid)
        return snapshot is not None and snapshot.conversation.message_count == count

    await _eventually(lambda: stored(4))  # root, m0, acked and the unanswered one
    await _append(node, cid, first, "after")  # acknowledged: it must reach the store
    await _eventually(lambda: stored(5))
    registry = node.app[CONVERSATIONS]
    assert isinstance(registry, Registry) and registry.stats()["rebuilds"] == 1
    assert await registry.passivate(cid)
    assert sorted(await _tree(node, cid)) == ["acked", "after", "m0", "unanswered"]


async def test_a_memory_append_still_queued_is_journaled_before_its_passivation(
    start_node: NodeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--durability memory` acknowledges before the journal send. Behind another send,
    the record waits in the journal's queue; a passivation let the conversation go at
    once (the flusher process writes nothing here), its epoch went with it, and the
    queued record was refused "not acquired": acknowledged, never journaled (found by
    review)."""
    node = await start_node(durability="memory")
    registry, journal = node.app[CONVERSATIONS], node.app[JOURNAL]
    assert isinstance(registry, Registry) and isinstance(journal, RedisJournal)
    cid, parent = await _conversation_with(node, 1)
    monkeypatch.setattr(journal._lean, "send_now", lambda commands: None)  # by a task, later

    async def append(actor: ConversationActor) -> Message:
        text = msgspec.json.encode({"type": "text", "text": "queued"})
        return await actor.append(ANONYMOUS, NewMessage(parent, "human", text, {}, "u"))

    await registry.run(ANONYMOUS, cid, append)  # acknowledged; its send not made yet
    assert await registry.passivate(cid)
    monkeypatch.undo()
    assert await _tree(node, cid) == ["m0", "queued"]


async def test_a_batch_of_appends_counts_each_record_until_all_are_stored(
    start_node: NodeFactory,
) -> None:
    """Concurrent appends are journaled in batches, each remembered as one entry (its
    last version): the unflushed records still count every append, and the batch is
    let go whole once the flusher process stored it."""
    node = await start_node()
    flusher = node.app[FLUSHER]
    registry = node.app[CONVERSATIONS]
    with flusher_stopped(node):
        cid, parent = await _conversation_with(node, 0)

        def new(text: str) -> NewMessage:
            content = msgspec.json.encode({"type": "text", "text": text})
            return NewMessage(parent, "human", content, {}, "u")

        # All queued in one loop pass: the first commits alone, the other 19 behind it.
        await asyncio.gather(*(registry.append(ANONYMOUS, cid, new(f"c{i}")) for i in range(20)))
        assert len(flusher._unstored[cid]) == 3  # the creation, then two batches
        assert flusher.unflushed(cid)[1] == 21
        assert flusher.stats()["unflushed_records"] == 21
    await flusher.flush_now(cid)
    assert flusher.unflushed(cid) == (0, 0)
    assert flusher.stats()["unflushed_records"] == 0 and flusher.stats()["unflushed_bytes"] == 0
    assert sorted(await _tree(node, cid)) == sorted(f"c{i}" for i in range(20))


async def test_what_a_batch_applied_before_an_apply_raised_stays_counted(
    start_node: NodeFactory,
) -> None:
    """An apply raising midway (never expected of a validated event) leaves what the
    batch applied before it counted as unflushed, as one record call each would have."""
    node = await start_node()
    flusher = node.app[FLUSHER]
    cid = str(uuid.uuid4())

    def applied(changes: Any) -> None:
        changes.version, changes.nbytes = 7, changes.nbytes + 100

    def broken(changes: Any) -> None:
        raise RuntimeError("apply failed")

    with pytest.raises(RuntimeError):
        flusher.record_many(cid, [applied, broken])
    assert flusher.unflushed(cid) == (100, 2)
    flusher.forget(cid)
