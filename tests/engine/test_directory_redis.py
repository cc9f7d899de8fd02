"""Leases over a real Redis: one holder at a time, valid while the holder's heartbeat
is, the epoch grows at each acquisition, a dead holder's lease is taken over, an idle
node sends no lease command however many it holds, and a node found declared dead
drops what it held."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import RedisError

from engine.directory import LeaseHeld
from engine.directory_redis import _ACQUIRE, RedisDirectory
from engine.membership_redis import RedisMembership
from persistence import redis_keys
from persistence.journal import NoJournal
from persistence.journal_redis import Fenced, RedisJournal
from persistence.redis_pool import Client, RedisPool
from tests.backends import redis_settings, wipe_redis
from tests.services import REDIS_URL, require

INTERVAL, DEADLINE = 0.05, 0.3


@pytest.fixture
async def client() -> AsyncIterator[redis.Redis]:
    require("redis")
    wipe_redis()
    connection = redis.Redis.from_url(REDIS_URL)
    yield connection
    await connection.aclose()


class Journal(NoJournal):
    def __init__(self) -> None:
        self.owned: set[str] = set()

    async def acquire(self, conversation_id: str) -> None:
        self.owned.add(conversation_id)

    def release(self, conversation_id: str) -> None:
        self.owned.discard(conversation_id)


@contextlib.asynccontextmanager
async def node(
    client: Client, node_id: str, journal: Any = None
) -> AsyncIterator[tuple[RedisMembership, RedisDirectory]]:
    """A member and its directory, entered and left as cluster_member.join does."""
    membership = RedisMembership(
        client, node_id, f"http://{node_id}", dict, interval=INTERVAL, deadline=DEADLINE
    )
    leases = RedisDirectory(client, journal or Journal(), membership, release_seconds=30.0)
    async with membership, leases:
        yield membership, leases


async def pause(membership: RedisMembership) -> None:
    """The node stops heartbeating (as if SIGSTOPped)."""
    assert membership._task is not None
    membership._task.cancel()
    await asyncio.gather(membership._task, return_exceptions=True)


async def eventually(condition: Callable[[], Any], seconds: float = 10.0) -> None:
    """Redis' clock expires keys: poll it with a bounded deadline."""
    deadline = time.monotonic() + seconds
    while not await condition():
        assert time.monotonic() < deadline, "condition never held"
        await asyncio.sleep(0.02)


async def test_one_holder_at_a_time_and_the_epoch_grows(client: redis.Redis) -> None:
    async with node(client, "a:1") as (_, a), node(client, "b:2") as (_, b):
        assert await a.acquire("c1") == 1
        assert a.is_held("c1") and "c1" in a._journal.owned  # type: ignore[attr-defined]
        assert await client.get(redis_keys.lease("c1")) == b"a:1 1"
        assert await client.pttl(redis_keys.lease("c1")) == -1  # no TTL: no renewal
        assert await b.holder("c1") == "a:1"
        with pytest.raises(LeaseHeld) as refused:
            await b.acquire("c1")  # a's heartbeat is current: a stays the owner
        assert refused.value.owner == "a:1" and not b.is_held("c1")
        a.release("c1")
        assert not a.is_held("c1")
        await a.send_releases()  # the release goes out with the next batch
        assert await client.get(redis_keys.lease("c1")) is None
        assert await b.acquire("c1") == 2
        b.release("c1")
        await b.send_releases()
        assert await a.acquire("c1") == 3
    assert await client.get(redis_keys.lease("c1")) is None  # closing released it


async def sends_of(monkeypatch: pytest.MonkeyPatch, call: Callable[[], Any]) -> int:
    sends = 0
    original = AbstractConnection.send_packed_command

    async def counted(self: AbstractConnection, *args: Any, **kwargs: Any) -> None:
        nonlocal sends
        sends += 1
        await original(self, *args, **kwargs)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counted)
    try:
        await call()
    finally:
        monkeypatch.undo()
    return sends


async def test_holding_leases_costs_no_command_however_many(
    client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No per-conversation renewal: an interval sends the heartbeat only, the same for
    one hot conversation as for 200."""
    async with node(client, "a:1") as (membership, a):
        await pause(membership)  # beats counted by hand below

        async def interval() -> None:
            await a.send_releases()
            await membership._beat()

        await a.acquire("c0")
        with_one = await sends_of(monkeypatch, interval)
        for n in range(1, 200):
            await a.acquire(f"c{n}")
        assert await sends_of(monkeypatch, a.send_releases) == 0
        assert await sends_of(monkeypatch, interval) == with_one
        assert a.can_acknowledge() and len(a._held) == 200


async def test_leases_are_valid_while_the_heartbeat_is(client: redis.Redis) -> None:
    async with node(client, "a:1") as (membership, a):
        await a.acquire("c1")
        await pause(membership)

        async def late() -> bool:
            return not a.can_acknowledge()

        await eventually(late)  # the heartbeat deadline passed
        assert a.is_held("c1") and not membership.can_acknowledge()


async def test_a_dead_holders_lease_is_taken_over_and_it_learns_it_lost(
    client: redis.Redis,
) -> None:
    lost: list[str] = []
    async with node(client, "a:1") as (alive_a, a), node(client, "b:2") as (_, b):
        a.on_lost(lost.append)
        assert await a.acquire("c1") == 1
        await a.acquire("c2")
        await pause(alive_a)  # a stops heartbeating: its key expires

        async def dead() -> bool:
            return await client.get(redis_keys.member("a:1")) is None

        await eventually(dead)
        assert not a.can_acknowledge()  # before anyone could find it dead
        assert await b.acquire("c1") == 2  # compare-and-set on "a:1 1"
        assert b.stats()["takeovers"] == 1
        assert await client.get(redis_keys.lease("c1")) == b"b:2 2"
        await alive_a._beat()  # a wakes: its heartbeat finds its key gone
        assert sorted(lost) == ["c1", "c2"] and not a.is_held("c1")
        assert "c1" not in a._journal.owned  # type: ignore[attr-defined]
        assert a.stats()["lost_leases"] == 2 and alive_a.stats()["expulsions"] == 1
        assert a.can_acknowledge()  # a member again, owning nothing
        with pytest.raises(LeaseHeld):
            await a.acquire("c1")  # b is alive: b stays the owner
        assert await a.acquire("c2") == 2  # its own stale key: taken back, fenced anew


async def test_a_takeover_sets_only_the_value_it_read(client: redis.Redis) -> None:
    """The compare-and-set: a key that changed since the dead holder's value was read
    (another node took it meanwhile) is not taken."""
    async with node(client, "b:2") as (_, b):
        keys = (redis_keys.lease("c1"), redis_keys.epoch("c1"))
        await client.set(keys[0], "y:8 6")
        assert await b._eval(_ACQUIRE, keys, ("b:2", "x:9 5")) == [0, b"y:8 6"]
        with pytest.raises(LeaseHeld) as refused:  # y:8 has no heartbeat: dead
            await client.set(redis_keys.member("y:8"), b"{}")
            await b.acquire("c1")
        assert refused.value.owner == "y:8"
        await client.delete(redis_keys.member("y:8"))
        assert await b.acquire("c1") == 1  # y:8 is gone: taken
        assert await client.get(keys[0]) == b"b:2 1"


def answer_lost(directory: RedisDirectory, monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """The next take's script runs in Redis and its answer never comes back: the take
    waits on the returned event, then fails as a timeout would."""
    hung, real = asyncio.Event(), directory._eval

    async def lost(script: str, keys: Any, args: Any) -> Any:
        monkeypatch.undo()
        await real(script, keys, args)
        await hung.wait()
        raise RedisError("Redis took over 1.00s")

    monkeypatch.setattr(directory, "_eval", lost)
    return hung


async def lost_take(directory: RedisDirectory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Take c1 with its answer lost (a timeout): the lease reads "<node> 1", unsure."""
    answer_lost(directory, monkeypatch).set()
    with pytest.raises(RedisError):
        await directory.acquire("c1")


@pytest.mark.parametrize("ending", ["timeout", "cancelled"])
async def test_a_take_whose_answer_was_lost_is_let_go(
    client: redis.Redis, monkeypatch: pytest.MonkeyPatch, ending: str
) -> None:
    """Kept, a lease naming this live node would cover nothing: every other node's
    acquire, flusher start and adoption leaves the conversation to it."""
    async with node(client, "a:1") as (_, a), node(client, "b:2") as (_, b):
        hung = answer_lost(a, monkeypatch)
        taking = asyncio.ensure_future(a.acquire("c1"))
        await eventually(lambda: client.exists(redis_keys.lease("c1")))  # the script ran
        if ending == "timeout":
            hung.set()
            with pytest.raises(RedisError):
                await taking
        else:
            taking.cancel()
            with pytest.raises(asyncio.CancelledError):
                await taking
        assert not a.is_held("c1") and a.stats()["unsure_takes"] == 1
        assert await client.get(redis_keys.lease("c1")) == b"a:1 1"
        with pytest.raises(LeaseHeld):
            await b.acquire("c1")
        await a.send_releases()
        assert await client.get(redis_keys.lease("c1")) is None
        assert a.stats()["unsure_takes"] == 0
        assert await b.acquire("c1") == 2


async def test_a_lost_take_taken_again_stays_held(
    client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with node(client, "a:1") as (_, a):
        await lost_take(a, monkeypatch)
        assert await a.acquire("c1") == 2  # asked again: its own key, taken anew
        await a.send_releases()
        assert a.is_held("c1") and await client.get(redis_keys.lease("c1")) == b"a:1 2"
        assert a.stats()["unsure_takes"] == 0


async def test_a_lost_take_another_node_took_since_is_left_to_it(
    client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with node(client, "a:1") as (_, a), node(client, "b:2") as (_, b):
        await lost_take(a, monkeypatch)
        await client.set(redis_keys.lease("c1"), "b:2 7")  # as if b had taken it since
        await a.send_releases()
        assert await client.get(redis_keys.lease("c1")) == b"b:2 7"
        assert a.stats()["unsure_takes"] == 0 and not b.is_held("c1")


async def test_a_take_while_a_lost_take_is_read_back_is_not_overwritten(
    client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read back found the lost take's value; a take and release meanwhile queued a
    newer one. Sending the older instead deleted nothing: the newer lease stayed, naming
    this live node with nothing hot (found by review)."""
    async with node(client, "a:1") as (_, a):
        await lost_take(a, monkeypatch)  # the lease reads "a:1 1"
        read_back = a._call

        async def a_take_meanwhile(call: Any) -> Any:
            monkeypatch.undo()  # once
            values = await read_back(call)  # "a:1 1"
            assert await a.acquire("c1") == 2
            a.release("c1")  # e.g. its activation failed
            return values

        monkeypatch.setattr(a, "_call", a_take_meanwhile)
        await a.send_releases()
        assert await client.get(redis_keys.lease("c1")) is None


async def test_a_failed_read_back_does_not_hold_up_the_releases(
    client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with node(client, "a:1") as (_, a):
        await lost_take(a, monkeypatch)
        await a.acquire("c2")
        a.release("c2")

        async def down(call: Any) -> Any:
            call.close()
            raise RedisError("Redis took over 1.00s")

        monkeypatch.setattr(a, "_call", down)
        await a.send_releases()
        assert await client.get(redis_keys.lease("c2")) is None  # released all the same
        assert a.stats()["unsure_takes"] == 1  # read back next round
        monkeypatch.undo()
        await a.send_releases()
        assert await client.get(redis_keys.lease("c1")) is None
        assert a.stats()["unsure_takes"] == 0


@pytest.mark.parametrize("cluster", [False, True], ids=["redis", "redis-cluster"])
async def test_taking_the_lease_fences_the_last_owners_journal(cluster: bool) -> None:
    """One epoch: the script that takes the lease increments the journal's epoch, so the
    previous holder's appends are refused with no journal acquire of its own, and the
    refusal tells it that it lost the conversation."""
    settings = redis_settings(cluster=cluster)
    cid = f"fence-{uuid.uuid4()}"
    a_id, b_id = f"a-{uuid.uuid4()}", f"b-{uuid.uuid4()}"  # the cluster is shared
    async with contextlib.AsyncExitStack() as stack:
        pool = await stack.enter_async_context(RedisPool(settings))
        old = await stack.enter_async_context(RedisJournal(pool))
        new = await stack.enter_async_context(RedisJournal(pool))
        alive, first = await stack.enter_async_context(node(pool.client, a_id, old))
        _, second = await stack.enter_async_context(node(pool.client, b_id, new))
        lost: list[str] = []
        first.on_lost(lost.append)
        assert await first.acquire(cid) == 1
        await old.append(cid, 1, b"first")
        await pause(alive)  # a heartbeat would tell it too: only the FENCED append does

        async def dead() -> bool:
            return await pool.client.get(redis_keys.member(a_id)) is None

        await eventually(dead)
        assert await second.acquire(cid) == 2
        assert await pool.client.get(redis_keys.epoch(cid)) == b"2"  # one counter
        with pytest.raises(Fenced):
            await old.append(cid, 2, b"stale")
        assert lost == [cid] and not first.is_held(cid)  # the refusal marked it lost
        await new.append(cid, 2, b"second")
        assert [e.payload for e in await new.tail(cid, 0)] == [b"first", b"second"]
