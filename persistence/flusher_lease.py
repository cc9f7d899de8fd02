"""The lease that lets one flusher process run per node (SET NX PX, renewed by its holder).

Its value names the holder (`host:pid:random`), so the node that started a flusher can
break the lease of its own child once it has seen that child die: the next one then
starts at once rather than after the lease expires.
"""

from __future__ import annotations

import os
import secrets
import socket

from persistence import redis_keys
from persistence.redis_pool import Client

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

_BREAK = """
local holder = redis.call('GET', KEYS[1])
if holder and string.sub(holder, 1, string.len(ARGV[1])) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def _holder_prefix(pid: int) -> str:
    return f"{socket.gethostname()}:{pid}:"


class FlusherLease:
    """One flusher's hold on its node's lease."""

    def __init__(self, client: Client, node: str, seconds: float) -> None:
        self._client = client
        self._key = redis_keys.flusher_lease(node)
        self._ttl_ms = int(seconds * 1000)
        self.token = _holder_prefix(os.getpid()) + secrets.token_hex(8)

    async def take(self) -> bool:
        return bool(await self._client.set(self._key, self.token, nx=True, px=self._ttl_ms))

    async def holder(self) -> str | None:
        raw = await self._client.get(self._key)
        return raw.decode() if isinstance(raw, bytes) else raw

    async def renew(self) -> bool:
        """False if the lease is no longer this flusher's."""
        return bool(await self._client.eval(_RENEW, 1, self._key, self.token, self._ttl_ms))

    async def release(self) -> None:
        await self._client.eval(_RELEASE, 1, self._key, self.token)


async def break_dead(client: Client, node: str, pid: int) -> bool:
    """Drop the node's lease if the process `pid` of this host (known dead) holds it."""
    key = redis_keys.flusher_lease(node)
    return bool(await client.eval(_BREAK, 1, key, _holder_prefix(pid)))
