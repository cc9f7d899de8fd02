"""The lean Redis channel over a Redis Cluster: our own pipelined connection per master
(persistence/resp.py), each batch split by the slot of its commands' keys.

redis-py's `RedisCluster` pipeline spends about 2.7x the CPU of a `LeanRedis` per
journal append (docs/decisions.md). So the slot map is borrowed from the cluster client,
which keeps it and refreshes it, and the commands go out on lean connections. Each
command's first key decides its master; all keys of one command share a slot
(persistence/redis_keys.py tags them). A reply that says the slot moved (MOVED, or ASK
during a migration) makes the map refresh, and those commands go again through the
cluster client's own pipeline, which follows redirections. They are the journal's
scripts, which never ran when Redis answered MOVED.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote

from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import ResponseError

from persistence.resp import Arg, LeanRedis

_FIRST_KEY = {b"EVALSHA": 3, b"EVAL": 3}  # else the key follows the command name


def first_key(command: Sequence[Arg]) -> bytes | None:
    """The key that places the command (None for a command without keys: any master)."""
    name = command[0]
    at = _FIRST_KEY.get(name.upper() if isinstance(name, bytes) else str(name).upper().encode(), 1)
    if len(command) <= at:
        return None
    key = command[at]
    return key if isinstance(key, bytes) else str(key).encode()


def _redirected(reply: object) -> bool:
    return isinstance(reply, ResponseError) and str(reply).startswith(("MOVED", "ASK"))


class SlotLean:
    """`Lean` over the masters of `client`'s cluster (see module docstring)."""

    def __init__(
        self,
        client: RedisCluster,
        *,
        timeout: float,
        credentials: str = "",
        on_send: Callable[[], None] | None = None,
    ) -> None:
        self._client = client
        self._timeout = timeout
        self._on_send = on_send  # each master's connection calls it after a write
        self._credentials = credentials  # "user:password@" of the seeds, if any
        self._masters: dict[str, LeanRedis] = {}  # by "host:port"
        self.redirected = 0  # commands sent again after MOVED or ASK

    async def execute(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        if not self._client.nodes_manager.slots_cache:
            await self._client.initialize()
        groups: dict[str, list[int]] = {}
        manager = self._client.nodes_manager
        for index, command in enumerate(commands):
            key = first_key(command)
            node = manager.get_node_from_slot(key_slot(key) if key is not None else 0)
            groups.setdefault(node.name, []).append(index)
        if len(groups) == 1:  # one master (one conversation's append): no task to gather
            [name] = groups
            replies = await self._lean(name).execute(commands)
        else:
            replies = [None] * len(commands)
            answers = await asyncio.gather(
                *(self._lean(name).execute([commands[i] for i in indices])
                  for name, indices in groups.items())
            )  # fmt: skip
            for indices, answer in zip(groups.values(), answers, strict=True):
                for index, reply in zip(indices, answer, strict=True):
                    replies[index] = reply
        moved = [i for i, reply in enumerate(replies) if _redirected(reply)]
        if moved:
            await self._follow(commands, moved, replies)
        return replies

    async def _follow(
        self, commands: Sequence[Sequence[Arg]], moved: list[int], replies: list[Any]
    ) -> None:
        """The slot map changed: refresh it, and send the moved commands through the
        cluster client, which follows each redirection."""
        self.redirected += len(moved)
        await self._client.nodes_manager.initialize()
        pipeline = self._client.pipeline()
        for index in moved:
            pipeline.execute_command(*commands[index])
        for index, reply in zip(moved, await pipeline.execute(raise_on_error=False), strict=True):
            replies[index] = reply

    def _lean(self, name: str) -> LeanRedis:
        lean = self._masters.get(name)
        if lean is None:
            lean = self._masters[name] = LeanRedis(
                f"redis://{self._credentials}{name}", timeout=self._timeout, on_send=self._on_send
            )
        return lean

    def send_now(self, commands: Sequence[Sequence[Arg]]) -> list[asyncio.Future[Any]] | None:
        """Never at once: a batch may span masters, and a redirect needs `execute`."""
        return None

    def close(self) -> None:
        """Our connections; the cluster client is the pool's to close."""
        for lean in self._masters.values():
            lean.close()
        self._masters.clear()


def credentials(username: str | None, password: str | None) -> str:
    """The "user:password@" part of a URL for these credentials ("" for none)."""
    if password is None:
        return ""
    user = quote(username, safe="") if username else ""
    return f"{user}:{quote(password, safe='')}@"
