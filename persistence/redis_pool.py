"""The node's one Redis: its settings and the client pool every Redis user shares.

The journal, the rate limiter, the flusher's lease and queue (and membership and
leases) all reach Redis through one `RedisPool`: one redis-py client (`redis.Redis`,
or `RedisCluster` for a Redis Cluster) with its connection pool, plus `lean`: the
pipelined connection the journal's script calls take (persistence/resp.py). The pool
is opened before its users and closed after them (gateway/app.py), so none of them
closes a client another still sends on.

Over a Redis Cluster `lean` is a lean connection per master, routed by the cluster
client's slot map (persistence/resp_cluster.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlparse

import redis.asyncio as redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from persistence.resp import Arg, LeanRedis
from persistence.resp_cluster import SlotLean, credentials

log = logging.getLogger(__name__)

Client = redis.Redis | RedisCluster


@dataclass(frozen=True)
class RedisSettings:
    """Where Redis is and how to talk to it. `url` is one `redis://` URL, or for a
    cluster one or more seed nodes, comma separated (`redis://h1:7001,redis://h2:7002`)."""

    url: str = "redis://127.0.0.1:6379/0"
    cluster: bool = False
    timeout: float = 1.0  # seconds to connect and for each reply
    max_connections: int = 64  # per Redis server

    def urls(self) -> list[str]:
        return [u.strip() for u in self.url.split(",") if u.strip()]

    def check(self) -> None:
        """ValueError for settings no client could use."""
        urls = self.urls()
        if not urls:
            raise ValueError("redis_url: no Redis URL given")
        if len(urls) > 1 and not self.cluster:
            raise ValueError("redis_url: several URLs name the seeds of a Redis Cluster: "
                             "add --redis-cluster")  # fmt: skip
        for url in urls:
            parsed = urlparse(url)
            if parsed.scheme != "redis" or not parsed.hostname:
                raise ValueError(f"redis_url: expected redis://host:port[/db], got {url!r}")
            if self.cluster and parsed.path.strip("/") not in ("", "0"):
                raise ValueError("redis_url: a Redis Cluster has only database 0")
        if self.timeout <= 0 or self.max_connections < 1:
            raise ValueError("redis_timeout and redis_max_connections must be positive")


class Lean(Protocol):
    """Keyed commands sent in one batch (the journal's EVALSHAs): each command's reply, or
    its error reply (a ResponseError) in its place."""

    async def execute(self, commands: Sequence[Sequence[Arg]]) -> list[Any]: ...

    def send_now(self, commands: Sequence[Sequence[Arg]]) -> list[asyncio.Future[Any]] | None:
        """Write the commands at once if a connection is up: their replies' futures (in
        order), else None (then `execute` them)."""

    def close(self) -> None: ...


def _client(settings: RedisSettings) -> Client:
    options: dict[str, Any] = {
        "socket_timeout": settings.timeout,
        "socket_connect_timeout": settings.timeout,
        "max_connections": settings.max_connections,
    }
    urls = settings.urls()
    if not settings.cluster:
        return redis.Redis.from_url(urls[0], **options)
    seeds = [urlparse(url) for url in urls]
    first = seeds[0]
    return RedisCluster(
        startup_nodes=[ClusterNode(s.hostname or "127.0.0.1", s.port or 6379) for s in seeds],
        username=first.username,
        password=first.password,
        **options,
    )


class RedisPool:
    """The shared client (`client`) and batch channel (`lean`); an async context
    manager that closes both on exit. Both connect on first use: a user that needs Redis
    at start (the journal) finds out there, a user that can do without (the rate
    limiter) is not held up."""

    def __init__(self, settings: RedisSettings, on_send: Callable[[], None] | None = None) -> None:
        """`on_send`: called after each write of the lean channel (a reply is due)."""
        settings.check()
        self.settings = settings
        self.client: Client = _client(settings)
        self.lean: Lean
        if isinstance(self.client, RedisCluster):
            seed = urlparse(settings.urls()[0])
            login = credentials(seed.username, seed.password)
            self.lean = SlotLean(
                self.client, timeout=settings.timeout, credentials=login, on_send=on_send
            )
        else:
            self.lean = LeanRedis(settings.urls()[0], timeout=settings.timeout, on_send=on_send)

    @property
    def cluster(self) -> bool:
        return self.settings.cluster

    async def __aenter__(self) -> RedisPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Close the lean channel and the client: after every user closed (their sends
        are over), so nothing is sent on a closed client."""
        self.lean.close()
        budget = self.settings.timeout * 3
        try:
            async with asyncio.timeout(budget):
                await self.client.aclose()
        except TimeoutError:
            log.warning("redis: closing the client took over %.1fs", budget)
