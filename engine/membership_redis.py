"""Membership over Redis: each node keeps a heartbeat key (its advertised URL and
stats, PX = the heartbeat deadline) renewed every interval, and its id in a sorted set
scored by that key's expiry, so live nodes are listed by score without a SCAN (which
would walk every key, on every master of a Redis Cluster). The key decides: a member
listed whose key has expired is dead. Closing deletes both: a clean leave.

A heartbeat that finds its own key gone (it expired: this node was late, may have been
declared dead and its conversations taken) tells the `on_expelled` callbacks before this
node acknowledges anything again (engine/directory_redis.py drops its leases).

Timing: the key expires no earlier than `deadline` after the heartbeat was sent, and
this node stops acknowledging writes `deadline` after sending its last successful
heartbeat, so it has stopped before anyone can see it dead; its leases are valid exactly
while that key exists (engine/directory_redis.py), so no lease of a node that still
acknowledges can be taken.

Joining and leaving (engine/rebalance.py): with `announce_at_start=False` the node reads
the members but is not one until `announce()` (called once it listens: others place
conversations on it only then). `leave()` marks its heartbeat `leaving`: every node,
this one too, places nothing on it any more, but it stays live, its leases valid and
its URL known, while it hands its conversations over; closing then deletes it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec
from redis.exceptions import RedisError

from engine.membership import Member, Watcher
from persistence import redis_keys
from persistence.background import Throttled, stop
from persistence.redis_pool import Client

log = logging.getLogger(__name__)
throttled = Throttled(log)


class RedisMembership:
    """This node's heartbeat in Redis, and the live members it last read."""

    def __init__(
        self,
        client: Client,
        node_id: str,
        url: str,
        report: Callable[[], dict[str, Any]],
        *,
        interval: float,
        deadline: float,
        timeout: float | None = None,
        announce_at_start: bool = True,
    ) -> None:
        if deadline <= interval:
            raise ValueError("the heartbeat deadline must be longer than its interval")
        self._client = client
        # A stuck heartbeat must not outlast its interval (the pool's socket timeout may
        # be longer): each beat is bounded by this.
        self._timeout = min(timeout or interval, interval)
        self.node_id, self.url = node_id, url
        self._report = report
        self._interval, self._deadline = interval, deadline
        self._sent_at = float("-inf")  # monotonic send time of the last heartbeat that landed
        self._live: list[Member] = []
        self._watchers: list[Watcher] = []
        self._expelled: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._announced = announce_at_start  # a member: its heartbeat is written
        self._leaving = False
        self._left_at_ms = 0  # when the leaving mark was sent
        self._beaten_ms: dict[str, int] = {}  # each member's last heartbeat, as read
        self.heartbeats = 0
        self.heartbeat_failures = 0
        self.expulsions = 0  # heartbeats that found this node's key expired

    async def __aenter__(self) -> RedisMembership:
        await self._beat()  # a node that cannot reach Redis does not start
        self._task = asyncio.create_task(self._run(), name="heartbeat")
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Leave: stop beating, delete the heartbeat and the member entry."""
        await stop(self._task)
        self._sent_at = float("-inf")
        try:
            async with asyncio.timeout(self._timeout * 3):
                async with self._client.pipeline(transaction=False) as pipe:
                    pipe.delete(redis_keys.member(self.node_id))
                    pipe.zrem(redis_keys.MEMBERS, self.node_id)
                    await pipe.execute()
        except (RedisError, TimeoutError) as exc:
            log.warning("leaving the cluster: %s (the heartbeat expires by itself)", exc)
        log.info("membership closed: %d heartbeats, %d failed", self.heartbeats,
                 self.heartbeat_failures)  # fmt: skip

    async def announce(self) -> None:
        """Become a member now (it listens): the first heartbeat (if it fails, the
        next one of the heartbeat loop)."""
        self._announced = True
        await self._beat()

    async def leave(self) -> None:
        """Mark this node leaving at once: nothing is placed on it any more."""
        self._leaving = True
        self._left_at_ms = int(time.time() * 1000)
        await self._beat()

    async def until_seen(self) -> None:
        """Until every other live node has beaten since the leaving mark: each read the
        members with its beat, so none places on this node any more."""
        while any(
            self._beaten_ms.get(member.node_id, 0) <= self._left_at_ms
            for member in self._live
            if member.node_id != self.node_id
        ):
            await asyncio.sleep(self._interval / 2)
            await self._beat()

    def live(self) -> list[Member]:
        return list(self._live)

    async def url_of(self, node_id: str) -> str | None:
        for member in self._live:
            if member.node_id == node_id:
                return member.url
        async with asyncio.timeout(self._timeout):
            raw = await self._client.get(redis_keys.member(node_id))
        return None if raw is None else str(msgspec.json.decode(raw)["url"])

    def placed(self) -> frozenset[str]:
        """The live nodes conversations are placed on: those not leaving."""
        return frozenset(member.node_id for member in self._live if not member.leaving)

    def watch(self, watcher: Watcher) -> None:
        self._watchers.append(watcher)

    def on_expelled(self, callback: Callable[[], None]) -> None:
        """Call `callback()` when a heartbeat finds this node's key had expired."""
        self._expelled.append(callback)

    def can_acknowledge(self) -> bool:
        return time.monotonic() < self._sent_at + self._deadline

    def heartbeat_age(self) -> float:
        return time.monotonic() - self._sent_at

    def stats(self) -> dict[str, Any]:
        return {
            "kind": "redis",
            "node_id": self.node_id,
            "live_nodes": len(self._live),
            "heartbeat_age": round(self.heartbeat_age(), 3),
            "heartbeats": self.heartbeats,
            "heartbeat_failures": self.heartbeat_failures,
            "expulsions": self.expulsions,
            "can_acknowledge": self.can_acknowledge(),
        }

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._beat()
            except Exception as exc:  # noqa: BLE001 - Redis or a bad record: beat again
                self.heartbeat_failures += 1
                throttled.warning("heartbeat", "heartbeat failed: %s", exc)

    async def _beat(self) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await self._beat_once()
        except TimeoutError as exc:
            raise RedisError(f"heartbeat took over {self._timeout:.2f}s") from exc

    async def _beat_once(self) -> None:
        """Renew the heartbeat and read the members, in one round trip; then their records."""
        sent_at, now_ms = time.monotonic(), int(time.time() * 1000)
        deadline_ms = int(self._deadline * 1000)
        fields: dict[str, Any] = {"url": self.url, "at": now_ms, "stats": self._report()}
        if self._leaving:
            fields["leaving"] = True
        async with self._client.pipeline(transaction=False) as pipe:
            if self._announced:
                record = msgspec.json.encode(fields)
                pipe.set(redis_keys.member(self.node_id), record, px=deadline_ms, get=True)
                pipe.zadd(redis_keys.MEMBERS, {self.node_id: now_ms + deadline_ms})
                pipe.zremrangebyscore(redis_keys.MEMBERS, "-inf", now_ms)
            pipe.zrangebyscore(redis_keys.MEMBERS, now_ms, "+inf")
            results = await pipe.execute()
        listed = results[-1]
        if self._announced:
            if results[0] is None and self.heartbeats:
                self.expulsions += 1
                log.warning("this node's heartbeat had expired: it may have been declared dead")
                for callback in self._expelled:
                    callback()  # before this node may acknowledge again
            self._sent_at = sent_at
            self.heartbeats += 1
        await self._read_members([node.decode() for node in listed], now_ms)

    async def _read_members(self, listed: list[str], now_ms: int) -> None:
        async with self._client.pipeline(transaction=False) as pipe:
            for node_id in listed:
                pipe.get(redis_keys.member(node_id))
            records = await pipe.execute()
        live = []
        for node_id, raw in zip(listed, records, strict=True):
            if raw is None:
                continue  # listed, but its heartbeat expired: dead
            record = msgspec.json.decode(raw)
            age = max(0.0, (now_ms - int(record["at"])) / 1000)
            leaving = bool(record.get("leaving", False))
            self._beaten_ms[node_id] = int(record["at"])
            live.append(Member(node_id, str(record["url"]), record["stats"], age, leaving))
        before, were = self.placed(), {member.node_id for member in self._live}
        self._live = live
        now = self.placed()
        # Watchers are told of a leaving node's departure too, though nothing placed
        # changed: the forwarder drops its URL and pooled connections then.
        if now != before or were != {member.node_id for member in live}:
            if now != before:
                log.info("live nodes: %s", " ".join(sorted(now)))
            for watcher in self._watchers:
                watcher(now)
