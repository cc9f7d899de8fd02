"""The flusher process's worker on real Redis and SQLite: its lease, a close that
always finishes, and a store write cut short."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis.asyncio as redis
from redis.exceptions import RedisError

from engine.access import ANONYMOUS
from engine.actor import NewConversation, NewMessage
from engine.flush_worker import FlushWorker, FlushWorkerConfig, LeaseHeld
from engine.registry import Registry, RegistryConfig
from persistence import redis_keys
from persistence.flusher import Flusher, FlusherConfig
from persistence.flusher_lease import break_dead
from persistence.journal_redis import RedisJournal
from persistence.redis_pool import RedisPool
from persistence.sqlite import SQLiteStore
from persistence.store import Changes
from tests.backends import redis_settings, wipe_redis, wipe_redis_cluster


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[tuple[SQLiteStore, RedisJournal, RedisPool]]:
    settings = redis_settings()
    wipe_redis()
    async with (
        RedisPool(settings) as pool,
        SQLiteStore(tmp_path / "canopy.db") as store,
        RedisJournal(pool) as journal,
    ):
        assert isinstance(pool.client, redis.Redis)
        yield store, journal, pool


async def test_a_second_worker_for_the_node_refuses_until_the_first_one_closed(
    parts: tuple[SQLiteStore, RedisJournal, RedisPool],
) -> None:
    store, journal, pool = parts
    config = FlushWorkerConfig(node="n1")
    async with FlushWorker(store, journal, pool, config):
        with pytest.raises(LeaseHeld, match="another flusher runs for node n1"):
            async with FlushWorker(store, journal, pool, config):
                pass
        async with FlushWorker(store, journal, pool, FlushWorkerConfig(node="n2")):
            pass  # another node's flusher
    async with FlushWorker(store, journal, pool, config):
        pass  # released at close


async def test_the_lease_of_a_dead_process_is_broken_only_by_its_pid(
    parts: tuple[SQLiteStore, RedisJournal, RedisPool],
) -> None:
    store, journal, pool = parts
    client = pool.client
    async with FlushWorker(store, journal, pool, FlushWorkerConfig(node="n1")):
        assert not await break_dead(client, "n1", os.getpid() + 1)
        assert await break_dead(client, "n1", os.getpid())
        async with FlushWorker(store, journal, pool, FlushWorkerConfig(node="n1")):
            pass


async def test_close_finishes_when_a_cycle_swallows_its_cancellation(
    parts: tuple[SQLiteStore, RedisJournal, RedisPool], monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py (8.1) loses a task's cancellation that lands in one of its commands now
    and then: the close must not wait for ever on such a cycle."""
    store, journal, pool = parts
    cycling = asyncio.Event()

    async def swallowing(self: FlushWorker, full: bool = True) -> None:
        cycling.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(3600)

    monkeypatch.setattr(FlushWorker, "_cycle", swallowing)
    config = FlushWorkerConfig(node="n1", interval=0.001, close_timeout=1.0)
    async with asyncio.timeout(60):
        async with FlushWorker(store, journal, pool, config):
            await cycling.wait()


async def test_messages_stored_ahead_of_their_conversation_row_are_written_over(
    parts: tuple[SQLiteStore, RedisJournal, RedisPool],
) -> None:
    """A store write cut short (a killed flusher, a failed batch) can leave messages of
    records after the stored version without the row that carries it. The next flusher
    applies those records again over them and stores and trims the rest; it used to
    refuse the first one and leave the conversation journaled for good."""
    store, journal, pool = parts
    flusher = Flusher(store, journal, FlusherConfig(interval=3600))
    async with flusher, Registry(store, journal, flusher, RegistryConfig()) as registry:
        actor = await registry.create(ANONYMOUS, NewConversation("partial", "fw"))
        text = b'{"type":"text","text":"said"}'
        first, _ = await registry.append(
            ANONYMOUS, actor.id, NewMessage(actor.meta.root_id, "user", text, {}, "fw")
        )
        assert await flusher.flush_all()
        later = [first]
        for _ in range(3):
            node, _ = await registry.append(
                ANONYMOUS, actor.id, NewMessage(later[-1].message_id, "user", text, {}, "fw")
            )
            later.append(node)
        cut_short = {m.message_id: m for m in later[1:3]}  # two of three, no row
        await store.write(actor.id, Changes(messages=cut_short))
        flusher.forget(actor.id)  # this process dies with them unstored
    stored = await store.load(actor.id)
    assert stored is not None and stored.conversation.message_count == 2  # root and first
    async with FlushWorker(store, journal, pool, FlushWorkerConfig(node="n1")):
        pass  # its close stores whatever is due: every journaled conversation
    stored = await store.load(actor.id)
    assert stored is not None
    assert [m.message_id for m in stored.messages[1:]] == [m.message_id for m in later]
    assert stored.conversation.message_count == 5
    assert await journal.journaled() == []


async def test_a_worker_over_a_redis_cluster_stores_trims_and_publishes(tmp_path: Path) -> None:
    """Its SPOP, the journal tail, the trim and its publication (XADD, HSET) go over the
    lean channel; over a Redis Cluster each is routed to the master of its key."""
    settings = redis_settings(cluster=True)
    wipe_redis_cluster()
    async with (
        RedisPool(settings) as pool,
        SQLiteStore(tmp_path / "canopy.db") as store,
        RedisJournal(pool) as journal,
    ):
        flusher = Flusher(store, journal, FlusherConfig(interval=3600))
        async with flusher, Registry(store, journal, flusher, RegistryConfig()) as registry:
            actor = await registry.create(ANONYMOUS, NewConversation("clustered", "fw"))
            text = b'{"type":"text","text":"said"}'
            parent = actor.meta.root_id
            for _ in range(3):
                node, _ = await registry.append(
                    ANONYMOUS, actor.id, NewMessage(parent, "user", text, {}, "fw")
                )
                parent = node.message_id
            flusher.forget(actor.id)  # stored by the worker, not here
        await pool.client.sadd(redis_keys.dirty("n1"), actor.id)
        async with FlushWorker(store, journal, pool, FlushWorkerConfig(node="n1", interval=3600)):
            pass  # its close takes the dirty set and stores what is due
        stored = await store.load(actor.id)
        assert stored is not None and stored.conversation.message_count == 4
        assert await journal.journaled() == []
        assert await pool.client.scard(redis_keys.dirty("n1")) == 0
        [(_, fields)] = await pool.client.xrange(redis_keys.flushed("n1"))
        assert msgspec.msgpack.decode(fields[b"s"]) == [[actor.id, stored.conversation.version]]
        published = await pool.client.hgetall(redis_keys.flusher_stats("n1"))
        assert int(published[b"batches_written"]) == 1
        assert int(published[b"messages_written"]) == 4  # the root and the three


@pytest.mark.parametrize("over_redis_cluster", [False, True], ids=["redis", "redis-cluster"])
async def test_a_cluster_members_start_takes_no_conversation_a_peer_holds(
    tmp_path: Path, over_redis_cluster: bool
) -> None:
    """Every member's flusher starts by taking the journaled conversations. A peer's
    lease means the peer activated it and marked its records dirty for its own flusher:
    taken here too it would be written once per member. One leased by this node (an
    earlier run of it) or by no one (its holder released it with records unstored) is
    taken. Over a Redis Cluster the lease keys lie in other slots than each other."""
    settings = redis_settings(cluster=over_redis_cluster)
    if over_redis_cluster:
        wipe_redis_cluster()
    else:
        wipe_redis()
    async with (
        RedisPool(settings) as pool,
        SQLiteStore(tmp_path / "canopy.db") as store,
        RedisJournal(pool) as journal,
    ):
        await _start_takes_no_conversation_a_peer_holds(store, journal, pool)


async def _start_takes_no_conversation_a_peer_holds(
    store: SQLiteStore, journal: RedisJournal, pool: RedisPool
) -> None:
    flusher = Flusher(store, journal, FlusherConfig(interval=3600))
    ids: dict[str, str] = {}
    async with flusher, Registry(store, journal, flusher, RegistryConfig()) as registry:
        for name in ("peers", "mine", "nobodys"):
            actor = await registry.create(ANONYMOUS, NewConversation(name, "fw"))
            await registry.append(
                ANONYMOUS, actor.id, NewMessage(actor.meta.root_id, "user", b'"hi"', {}, "fw")
            )
            ids[name] = actor.id
            flusher.forget(actor.id)  # left to the flusher process
    await pool.client.set(redis_keys.lease(ids["peers"]), "n2 7")
    await pool.client.set(redis_keys.lease(ids["mine"]), "n1 3")
    config = FlushWorkerConfig(node="n1", interval=3600, cluster=True)
    async with FlushWorker(store, journal, pool, config):
        pass  # its close stores what it took at start
    assert await store.load(ids["peers"]) is None
    for name in ("mine", "nobodys"):
        stored = await store.load(ids[name])
        assert stored is not None and stored.conversation.message_count == 2
    assert await journal.journaled() == [ids["peers"]]
    async with FlushWorker(store, journal, pool, FlushWorkerConfig(node="n2", interval=3600)):
        pass  # the holder's own flusher, or a node's outside a cluster, takes it
    assert await journal.journaled() == []


async def test_a_conversation_asked_for_now_is_stored_between_long_cycles(
    parts: tuple[SQLiteStore, RedisJournal, RedisPool],
) -> None:
    """The admin's flush (`redis_keys.flush_now`) does not wait for the next cycle."""
    store, journal, pool = parts
    flusher = Flusher(store, journal, FlusherConfig(interval=3600))
    async with flusher, Registry(store, journal, flusher, RegistryConfig()) as registry:
        actor = await registry.create(ANONYMOUS, NewConversation("now", "fw"))
        flusher.forget(actor.id)  # left to the flusher process
    config = FlushWorkerConfig(node="n1", interval=3600)
    async with FlushWorker(store, journal, pool, config) as worker:
        await asyncio.sleep(0)  # its start took every journaled conversation: store them
        async with asyncio.timeout(60):
            while await journal.journaled():
                await asyncio.sleep(0.01)
        assert worker.stats()["cycles"] == 0
        actor_id = actor.id
        async with flusher, Registry(store, journal, flusher, RegistryConfig()) as registry:
            await registry.append(
                ANONYMOUS, actor_id, NewMessage(actor.meta.root_id, "user", b'"hi"', {}, "fw")
            )
            flusher.forget(actor_id)
        await pool.client.sadd(redis_keys.flush_now("n1"), actor_id)
        async with asyncio.timeout(60):  # bounded: without the look between cycles, never
            while await journal.journaled():
                await asyncio.sleep(0.01)
        stored = await store.load(actor_id)
        assert stored is not None and stored.conversation.message_count == 2
        assert worker.stats()["cycles"] == 0  # no cycle came meanwhile


async def test_a_take_whose_answer_was_lost_finds_its_conversations_again(
    parts: tuple[SQLiteStore, RedisJournal, RedisPool], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SPOP ran and its answer was lost (a timeout): those dirty marks are gone from
    the set, and their conversations waited journaled for the next write or start
    (found by review). The next cycle looks at every journaled conversation again."""
    store, journal, pool = parts
    config = FlushWorkerConfig(node="n1", interval=3600)
    async with FlushWorker(store, journal, pool, config) as worker:
        cycles = worker._tasks[0]  # the test runs each cycle itself
        cycles.cancel()
        await asyncio.gather(cycles, return_exceptions=True)
        flusher = Flusher(store, journal, FlusherConfig(interval=3600))
        async with flusher, Registry(store, journal, flusher, RegistryConfig()) as registry:
            actor = await registry.create(ANONYMOUS, NewConversation("lost", "fw"))
            flusher.forget(actor.id)  # left to the flusher process
        await pool.client.sadd(redis_keys.dirty("n1"), actor.id)
        execute = worker._lean.execute

        async def answer_lost(commands: Any) -> Any:
            monkeypatch.undo()
            await execute(commands)  # the SPOPs run
            raise RedisError("Timeout reading from redis")

        monkeypatch.setattr(worker._lean, "execute", answer_lost)
        with pytest.raises(RedisError):
            await worker._cycle()
        assert await pool.client.scard(redis_keys.dirty("n1")) == 0  # the mark is gone
        await worker._cycle()  # starts the conversation's write
        await asyncio.gather(*worker._flushing.values())
        stored = await store.load(actor.id)
        assert stored is not None and stored.conversation.message_count == 1
