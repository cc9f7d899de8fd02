"""A lean Redis connection for the journal's script calls: one pipelined connection,
replies parsed by hiredis, no per-command machinery.

redis-py spends ~70 µs of CPU on one EVALSHA (connection pool, retry wrapper, command
packing, response callbacks); this spends ~25 (docs/decisions.md). Its reads (XRANGE,
HMGET) and SCRIPT LOAD stay with redis-py. Commands written in one
call go out in one write; replies come back in order, each resolving its future. A
reply later than `timeout` fails every pending command and drops the connection (a
late reply can then never answer the wrong command); the next call connects again.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, cast
from urllib.parse import unquote, urlparse

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeout

Arg = str | int | bytes


def encode(command: Sequence[Arg]) -> bytes:
    """One command as a RESP array of bulk strings: hiredis' packer, in C (a journal
    append's EVALSHA in 1.4-1.75 µs against 4.0-4.4 in Python, docs/decisions.md)."""
    args = command if isinstance(command, tuple) else tuple(command)
    packed: bytes = hiredis.pack_command(args)  # type: ignore[arg-type]  # its stub: 1-tuple
    return packed


LARGE = 16 * 1024  # bytes: an argument this long is written as it is, not copied


def encode_parts(command: Sequence[Arg]) -> list[bytes]:
    """The command as `encode` gives it, in pieces that leave each large bytes argument
    as it is: a fork's 350 KB record was copied twice (packed, then joined) before
    the socket's own copy, ~1.4 ms of a lone fork's CPU (docs/decisions.md)."""
    if not any(type(arg) is bytes and len(arg) > LARGE for arg in command):
        return [encode(command)]
    parts = [b"*%d\r\n" % len(command)]
    for arg in command:
        if type(arg) is bytes and len(arg) > LARGE:
            parts += (b"$%d\r\n" % len(arg), arg, b"\r\n")
        else:
            parts.append(encode((arg,))[4:])  # its bulk string, without the "*1\r\n"
    return parts


def checked(replies: list[Any]) -> list[Any]:
    """`execute`'s replies, or the first error reply among them raised: for a caller to
    whom any command's error fails the whole call."""
    error = next((reply for reply in replies if isinstance(reply, Exception)), None)
    if error is not None:
        raise error
    return replies


def pairs(flat: list[bytes]) -> dict[bytes, bytes]:
    """A hash, or a stream entry's fields, as RESP gives them: name, value, name, value..."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _error(reply: ResponseError) -> ResponseError:
    message = str(reply)
    return NoScriptError(message) if message.startswith("NOSCRIPT") else reply


LAST_LOOK = 0.01  # seconds: past the deadline, one more poll of the socket before giving up


class _Protocol(asyncio.Protocol):
    def __init__(self, timeout: float, on_send: Callable[[], None] | None = None) -> None:
        self._timeout = timeout
        self._on_send = on_send  # told of every write: a reply is due (gateway/busy_poll.py)
        self._reader = hiredis.Reader(replyError=ResponseError)
        self._waiting: deque[tuple[asyncio.Future[Any], float]] = deque()  # future, sent at
        self._heard = 0.0  # loop time of the last bytes received
        self._looked_again = False  # past the deadline, the socket was given one more poll
        self._timer: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def send(self, commands: Sequence[Sequence[Arg]]) -> list[asyncio.Future[Any]]:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        now = loop.time()
        futures = [loop.create_future() for _ in commands]
        self._waiting.extend((future, now) for future in futures)
        parts: list[bytes] = []
        for command in commands:
            parts += encode_parts(command)
        self.transport.writelines(parts)  # uvloop writes the pieces with one writev
        if self._on_send is not None:
            self._on_send()
        if self._timer is None:
            self._timer = loop.call_at(now + self._timeout, self._check_deadline)
        return futures

    def data_received(self, data: bytes) -> None:
        self._heard = asyncio.get_running_loop().time()
        self._looked_again = False
        self._reader.feed(data)
        while (reply := self._reader.gets()) is not False:
            future, _ = self._waiting.popleft()
            if not future.done():
                future.set_result(_error(reply) if isinstance(reply, ResponseError) else reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._give_up(RedisConnectionError(f"redis connection lost: {exc or 'closed'}"))

    def _check_deadline(self) -> None:
        self._timer = None
        if not self._waiting:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        _, sent_at = self._waiting[0]
        deadline = max(sent_at, self._heard) + self._timeout
        if deadline > now:
            self._timer = loop.call_at(deadline, self._check_deadline)
            return
        if not self._looked_again:  # a future time: the loop polls the socket first
            self._looked_again = True
            self._timer = loop.call_at(now + LAST_LOOK, self._check_deadline)
            return
        self._give_up(RedisTimeout(f"no redis reply within {self._timeout:.1f}s"))
        if self.transport is not None:
            self.transport.abort()

    def _give_up(self, error: Exception) -> None:
        self.lost = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiting:
            future, _ = self._waiting.popleft()
            if not future.done():
                future.set_exception(error)
                future.exception()  # heard by its awaiter if any; none left unretrieved


class LeanRedis:
    """One pipelined connection to the Redis of a `redis://` URL (see module docstring)."""

    def __init__(
        self, url: str, *, timeout: float = 1.0, on_send: Callable[[], None] | None = None
    ) -> None:
        parsed = urlparse(url)
        if parsed.scheme != "redis":
            raise ValueError(f"lean redis connection needs a redis:// URL, not {parsed.scheme}://")
        self._host = parsed.hostname or "127.0.0.1"
        self._port = parsed.port or 6379
        self._db = int(parsed.path.strip("/") or 0)
        self._username = unquote(parsed.username) if parsed.username else None
        self._password = unquote(parsed.password) if parsed.password else None
        self._timeout = timeout
        self._on_send = on_send  # called after each write (the serving loop's busy poll)
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Lock = asyncio.Lock()

    async def execute(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """Send the commands in one write: each one's reply, or its error reply as a
        ResponseError in its place. RedisConnectionError / RedisTimeout if Redis is unreachable
        or late (then none of the replies is known: the commands may have run)."""
        protocol = self._protocol
        if protocol is None or protocol.lost:
            protocol = await self._connect()
        futures = protocol.send(commands)
        return [await future for future in futures]

    def send_now(self, commands: Sequence[Sequence[Arg]]) -> list[asyncio.Future[Any]] | None:
        """`execute` without awaiting: the replies' futures, or None if not connected."""
        protocol = self._protocol
        if protocol is None or protocol.lost:
            return None
        return protocol.send(commands)

    async def _connect(self) -> _Protocol:
        async with self._connecting:
            if self._protocol is not None and not self._protocol.lost:
                return self._protocol
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(self._timeout):
                    _, protocol = await loop.create_connection(
                        lambda: _Protocol(self._timeout, self._on_send), self._host, self._port
                    )
                    setup: list[list[Arg]] = []
                    if self._password is not None:
                        auth: list[Arg] = ["AUTH", self._password]
                        if self._username is not None:
                            auth.insert(1, self._username)
                        setup.append(auth)
                    if self._db:
                        setup.append(["SELECT", self._db])
                    if setup:
                        for reply in [await f for f in protocol.send(setup)]:
                            if isinstance(reply, ResponseError):
                                protocol.transport.close()  # type: ignore[union-attr]
                                raise RedisConnectionError(f"redis refused the connection: {reply}")
            except (TimeoutError, OSError) as exc:
                raise RedisConnectionError(f"cannot connect to redis: {exc!r}") from exc
            self._protocol = protocol
            return protocol

    def close(self) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        self._protocol = None
