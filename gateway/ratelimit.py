"""Per-caller rate limiting: a token bucket per principal (`--rate-limit 50/s,burst=100`).

Each caller has a bucket of `burst` tokens refilled at `rate` per second; a request
takes one, and a request that finds none gets 429 with `Retry-After` (whole seconds
until a token is back). The caller is its user (a user, or a service acting for one),
`service` for a service acting for nobody, and the client address for an anonymous
caller, whose `X-Canopy-User` is unchecked and could be changed at every request.

Buckets live in memory (bounded: idle buckets are dropped), or in Redis when the node
journals to Redis, so that every node of a cluster takes from one budget: one Lua
script per request refills and takes atomically, on a key that expires once the bucket
would be full again; the takes of one event-loop tick share one pipeline (3x less client
CPU than one call each). If Redis fails, the node does not fail with it: it limits from
its own memory buckets meanwhile (a per-node budget, not an open door) and logs a
throttled warning.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from engine.access import Principal
from engine.errors import RateLimited
from gateway.buckets import Clock, MemoryBuckets, RateLimit
from gateway.keys import PRINCIPAL
from persistence import redis_keys
from persistence.background import Throttled

if TYPE_CHECKING:
    from persistence.redis_pool import RedisPool  # redis is an optional extra

log = logging.getLogger(__name__)
throttled = Throttled(log)

UNLIMITED_PATHS = frozenset({"/health"})  # a liveness probe refused would get the node killed
_PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_SPEC = re.compile(r"\s*(\d+(?:\.\d+)?)\s*/\s*([smh])\s*(?:,\s*burst\s*=\s*(\d+)\s*)?")


def parse_rate_limit(spec: str) -> RateLimit | None:
    """`50/s`, `600/m,burst=100`, `1000/h`; the burst defaults to one period's count.
    None for "" or "off"; ValueError for anything else."""
    if spec.strip().lower() in ("", "off"):
        return None
    match = _SPEC.fullmatch(spec)
    if match is None:
        raise ValueError(
            f"rate_limit: expected N/s, N/m or N/h with an optional ,burst=M; got {spec!r}"
        )
    count, period, burst = float(match[1]), _PERIODS[match[2]], match[3]
    limit = RateLimit(count / period, int(burst) if burst else max(1, math.ceil(count)))
    if limit.rate <= 0 or limit.burst < 1:
        raise ValueError(f"rate_limit: the rate and the burst must be positive; got {spec!r}")
    return limit


def bucket_key(principal: Principal | None, request: web.Request) -> str:
    """Whose budget a request spends (see module docstring)."""
    if principal is not None and principal.kind != "anonymous":
        return f"u:{principal.user_id}" if principal.user_id is not None else "service"
    return f"ip:{request.remote}"


class Limiter(Protocol):
    """Buckets somewhere; an async context manager (the Redis one holds a client)."""

    async def take(self, key: str) -> float:
        """Take one token from `key`'s bucket: 0 if there was one, else the seconds
        until there is."""
        ...

    def stats(self) -> dict[str, Any]: ...

    async def __aenter__(self) -> Limiter: ...

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


LIMITER: web.AppKey[Limiter] = web.AppKey("rate_limiter")


def open_limiter(spec: str, pool: RedisPool | None) -> Limiter | None:
    """The limiter `--rate-limit` asks for: in Redis when the node uses Redis (its
    shared pool), else in memory; None when rate limiting is off."""
    limit = parse_rate_limit(spec)
    if limit is None:
        return None
    return MemoryBuckets(limit) if pool is None else RedisBuckets(limit, pool)


# KEYS[1] the bucket; ARGV rate, burst, ttl ms, now (seconds; empty: Redis's clock, one
# clock for every node). Returns {1, "0"} when a token was taken, else {0, wait seconds}.
_TAKE = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local now = tonumber(ARGV[4])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local state = redis.call('HMGET', KEYS[1], 't', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local taken, wait = 0, (1 - tokens) / rate
if tokens >= 1 then
  tokens, taken, wait = tokens - 1, 1, 0
end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {taken, tostring(wait)}
"""


class LimiterClosed(Exception):
    """A take queued when the limiter closed: it is taken from memory instead."""


class RedisBuckets:
    """Token buckets in Redis, shared by every node that uses the same Redis.

    `clock` is for tests; by default the script reads Redis's own clock, so nodes whose
    clocks disagree still refill one bucket at one pace. A take waits `timeout` at most
    for Redis (the pool's client may wait longer), then limits from memory. The client
    is the pool's: closing the buckets ends their sends, the pool closes it after.
    """

    backend = "redis"

    def __init__(
        self,
        limit: RateLimit,
        pool: RedisPool,
        *,
        clock: Clock | None = None,
        timeout: float = 0.25,
        retry_seconds: float = 1.0,
    ) -> None:
        from redis.exceptions import RedisError  # an optional extra, needed only with Redis

        self.limit = limit
        self._client: Any = pool.client
        self._timeout = timeout
        self._closed = False
        self._clock = clock
        self._retry_seconds = retry_seconds
        self._down_until = 0.0  # while Redis failed lately, do not wait on it at every request
        self._fallback = MemoryBuckets(limit, clock=clock or time.monotonic)
        self._sha: str | None = None
        self._batch: list[tuple[str, asyncio.Future[float]]] = []  # this tick's takes
        self._sends: set[asyncio.Task[None]] = set()  # owned: cancelled on close
        self._ttl_ms = str(math.ceil(limit.refill_seconds * 1000) + 1000)
        self.allowed = 0
        self.limited = 0
        self.errors = 0
        self._failures = (RedisError, OSError)

    async def take(self, key: str) -> float:
        if self._closed or time.monotonic() < self._down_until:
            return self._fallback.take_now(key)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[float] = loop.create_future()
        if not self._batch:  # the takes of one tick go out in one pipeline
            loop.call_soon(self._send_batch)
        self._batch.append((redis_keys.rate_bucket(key), future))
        try:
            wait = await future
        except LimiterClosed:  # closing with the node: no Redis failure, no warning
            return self._fallback.take_now(key)
        except self._failures as exc:  # Redis down or slow: limit locally meanwhile
            self.errors += 1
            self._down_until = time.monotonic() + self._retry_seconds
            throttled.warning("redis", "rate limiter: Redis failed (%r); limiting per node", exc)
            return self._fallback.take_now(key)
        if wait:
            self.limited += 1
        else:
            self.allowed += 1
        return wait

    def _send_batch(self) -> None:
        batch, self._batch = self._batch, []
        if self._closed:  # closed since these takes were queued: no send starts now
            _settle(batch, LimiterClosed())
            return
        task = asyncio.create_task(self._send(batch), name="rate-limit-send")
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    async def _send(self, batch: list[tuple[str, asyncio.Future[float]]]) -> None:
        try:
            waits = await self._take([bucket for bucket, _ in batch])
        except Exception as exc:  # every taker hears it
            _settle(batch, exc)
            return
        except BaseException:  # cancelled: the takers limit from memory
            _settle(batch, LimiterClosed())
            raise
        for (_, future), wait in zip(batch, waits, strict=True):
            if not future.done():
                future.set_result(wait)

    async def _take(self, buckets: list[str]) -> list[float]:
        from redis.exceptions import NoScriptError

        limit = self.limit
        now = "" if self._clock is None else repr(self._clock())
        args = (limit.rate, limit.burst, self._ttl_ms, now)
        if self._sha is None:
            self._sha = await self._client.script_load(_TAKE)
        for attempt in range(2):
            try:
                async with asyncio.timeout(self._timeout):  # the script load may take longer
                    results = await self._run(buckets, args)
                break
            except NoScriptError:  # Redis restarted or flushed its scripts
                if attempt:
                    raise
                self._sha = await self._client.script_load(_TAKE)
        return [0.0 if taken else max(float(wait), 1e-6) for taken, wait in results]

    async def _run(self, buckets: list[str], args: tuple[object, ...]) -> list[Any]:
        if len(buckets) == 1:  # a lone take: a plain call, no pipeline to build
            return [await self._client.evalsha(self._sha, 1, buckets[0], *args)]
        pipeline = self._client.pipeline(transaction=False)
        for bucket in buckets:
            pipeline.execute_command("EVALSHA", self._sha, 1, bucket, *args)  # cluster-safe
        return list(await pipeline.execute())

    def stats(self) -> dict[str, Any]:
        fallback = self._fallback.stats()
        return {
            "backend": self.backend,
            "allowed": self.allowed + fallback["allowed"],
            "limited": self.limited + fallback["limited"],
            "errors": self.errors,
            "fallback": fallback,
        }

    async def __aenter__(self) -> RedisBuckets:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Start no send from now on; let the sends in flight finish (each is bounded by
        `timeout`) before the pool may close the client."""
        self._closed = True
        if self._sends:
            await asyncio.gather(*self._sends, return_exceptions=True)


def _settle(batch: list[tuple[str, asyncio.Future[float]]], failure: Exception) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(failure)


def rate_limit_middleware(limiter: Limiter) -> Middleware:
    """Placed after authentication: each request spends from its caller's bucket."""

    @web.middleware
    async def limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in UNLIMITED_PATHS:
            wait = await limiter.take(bucket_key(request.get(PRINCIPAL), request))
            if wait:
                seconds = max(1, math.ceil(wait))
                raise RateLimited(f"too many requests; retry in {seconds} s", wait)
        return await handler(request)

    return limit
