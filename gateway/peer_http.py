"""Persistent HTTP/1.1 connections to one peer (another node, or another worker over its
Unix socket): a small pool of raw asyncio connections, one exchange at a time each.

A relayed request is written as bytes the relay built (gateway/relay.py) and its answer
is read with a minimal response parser: the status line, the headers, then a body framed
by Content-Length, chunked transfer coding, or the connection's close. aiohttp's client
does the same with far more around it (tracing, cookies, URL and header objects, timers
per request); this is what a relay needs and no more (docs/decisions.md).

Errors: nothing of the answer arrived → `PeerUnavailable` (the caller answers 503). A
reused connection the peer had closed (the keep-alive race) is retried once on a fresh
one only when replaying is safe, for a request whose bytes are all in hand: one with a
safe method; or any one the peer cannot have served, because it was never written
(the connection was closed when it was to go) or the peer reset the connection
unanswered. A peer's kernel resets a socket closed with bytes unread; one that read
our whole request and then closed, served or not, ends it with a FIN. A request written
that ended in a FIN without an answer, a POST, is not sent twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

from yarl import URL

SAFE = frozenset({"GET", "HEAD", "OPTIONS"})  # replayed after a keep-alive race
MAX_HEAD = 64 * 1024  # an answer's status line and headers
HIGH_WATER = 256 * 1024  # buffered answer bytes before the socket's reading pauses
IDLE_SECONDS = 30.0  # an idle connection older than this is closed, not reused
_NO_BODY = frozenset({204, 304})

Connect = Callable[[Callable[[], asyncio.Protocol]], Awaitable[tuple[Any, Any]]]


class PeerUnavailable(ConnectionError):
    """The peer gave no answer (no byte of one): nothing was sent to the client yet."""


class PeerUnreachable(PeerUnavailable):
    """No connection to the peer could be made: not a byte of the request reached it."""


class _NotWritten(ConnectionResetError):
    """The connection was closed when the request was to be written: nothing went."""


class BadAnswer(ConnectionError):
    """The peer's answer is not HTTP/1.1 this parser reads."""


class _Connection(asyncio.Protocol):
    """One socket to the peer: bytes in a buffer, a waiter woken as more arrive."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.closed = False
        self.received = False  # any byte of an answer arrived on this exchange
        self.reset = False  # the peer reset it (closed it with bytes unread), not a FIN
        self.idle_since = 0.0
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._reading_paused = False

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.received = True
        if len(self.buffer) > HIGH_WATER and not self._reading_paused and self.transport:
            self.transport.pause_reading()
            self._reading_paused = True
        self._wake(self._waiter)

    def eof_received(self) -> bool:
        self.closed = True
        self._wake(self._waiter)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._error = exc
        self.reset = isinstance(exc, ConnectionResetError)
        self._wake(self._waiter)
        self._wake(self._drain)

    def pause_writing(self) -> None:
        self._drain = self._loop.create_future()

    def resume_writing(self) -> None:
        self._wake(self._drain)
        self._drain = None

    @staticmethod
    def _wake(waiter: asyncio.Future[None] | None) -> None:
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- what an exchange does -----------------------------------------------------------

    @property
    def usable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    async def write(self, data: bytes) -> None:
        if not self.usable:
            raise _NotWritten("the peer closed the connection")
        assert self.transport is not None
        self.transport.write(data)
        if self._drain is not None:
            await self._drain

    async def more(self, timeout: float) -> None:
        """Wait until more bytes are buffered; ConnectionResetError if the peer closed."""
        if self.closed:
            raise ConnectionResetError(f"the peer closed the connection ({self._error})")
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        waiter = self._waiter = self._loop.create_future()
        expiry = self._loop.call_later(timeout, _expire, waiter)
        try:
            await waiter
        finally:
            expiry.cancel()
            self._waiter = None

    def take(self, size: int) -> bytes:
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("the peer did not answer in time"))


@dataclass(slots=True)
class Answer:
    """The peer's status and headers; the body is read with `read` or `chunks`, and the
    connection goes back to its pool once the body is read whole (else it is closed)."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    length: int | None  # None: chunked or up to the close
    head: bytes  # the status line and headers as they came, blank line included
    _connection: _Connection
    _pool: PeerPool
    _chunked: bool = False
    _keep: bool = True
    _done: bool = field(default=False)

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    @property
    def keeps_connection(self) -> bool:
        """Whether the peer keeps the connection open after this answer."""
        return self._keep and (self._chunked or self.length is not None)

    async def read(self) -> bytes:
        connection = self._connection
        if self.length is not None and len(connection.buffer) >= self.length:
            body = connection.take(self.length)  # the common case: all in one read
            self._finish()
            return body
        return b"".join([chunk async for chunk in self.chunks()])

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives, never buffered whole."""
        try:
            if self._chunked:
                async for chunk in self._chunked_body():
                    yield chunk
            elif self.length is not None:
                async for chunk in self._sized_body(self.length):
                    yield chunk
            else:
                async for chunk in self._body_to_close():
                    yield chunk
        except BaseException:
            self.release()
            raise
        self._finish()

    def release(self) -> None:
        """Give the connection back if the body was read whole; close it otherwise."""
        if not self._done:
            self._done = True
            self._pool.discard(self._connection)

    def _finish(self) -> None:
        self._done = True
        self._pool.give_back(self._connection, keep=self._keep)

    async def _sized_body(self, remaining: int) -> AsyncIterator[bytes]:
        connection, timeout = self._connection, self._pool.read_timeout
        while remaining > 0:
            if not connection.buffer:
                await connection.more(timeout)
                continue
            chunk = connection.take(remaining)
            remaining -= len(chunk)
            yield chunk

    async def _body_to_close(self) -> AsyncIterator[bytes]:
        connection, timeout = self._connection, self._pool.read_timeout
        self._keep = False
        while True:
            if connection.buffer:
                yield connection.take(len(connection.buffer))
            elif connection.closed:
                return
            else:
                try:
                    await connection.more(timeout)
                except ConnectionResetError:
                    return  # the close is the body's end

    async def _chunked_body(self) -> AsyncIterator[bytes]:
        connection, timeout = self._connection, self._pool.read_timeout
        while True:
            end = connection.buffer.find(b"\r\n")
            while end < 0:
                if len(connection.buffer) > MAX_HEAD:
                    raise BadAnswer("a chunk size line too long")
                await connection.more(timeout)
                end = connection.buffer.find(b"\r\n")
            line = connection.take(end + 2)[:-2].split(b";", 1)[0].strip()
            try:
                size = int(line, 16)
            except ValueError as exc:
                raise BadAnswer(f"a bad chunk size {line!r}") from exc
            if size == 0:
                await self._trailers()
                return
            async for chunk in self._sized_body(size):
                yield chunk
            while len(connection.buffer) < 2:
                await connection.more(timeout)
            if connection.take(2) != b"\r\n":
                raise BadAnswer("a chunk not followed by CRLF")

    async def _trailers(self) -> None:
        connection, timeout = self._connection, self._pool.read_timeout
        while True:  # trailer lines up to the empty one, dropped
            end = connection.buffer.find(b"\r\n")
            while end < 0:
                await connection.more(timeout)
                end = connection.buffer.find(b"\r\n")
            if not connection.take(end + 2)[:-2]:
                return


class PeerPool:
    """Keep-alive connections to one peer; an async context manager (closes them)."""

    def __init__(
        self,
        connect: Connect,
        *,
        connect_timeout: float = 1.0,
        read_timeout: float = 60.0,
        keep_idle: int = 64,
    ) -> None:
        self._connect = connect
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._keep_idle = keep_idle
        self._idle: list[_Connection] = []
        self._busy: set[_Connection] = set()
        self.opened = 0  # connections made, for the stats and the tests
        self.retried = 0  # keep-alive races replayed on a fresh connection

    @classmethod
    def tcp(cls, url: str, **options: Any) -> PeerPool:
        parsed = URL(url)
        host, port = parsed.host, parsed.port
        assert host is not None and port is not None, f"a peer URL names its host: {url}"
        loop = asyncio.get_running_loop()
        return cls(lambda factory: loop.create_connection(factory, host, port), **options)

    @classmethod
    def unix(cls, path: str, **options: Any) -> PeerPool:
        loop = asyncio.get_running_loop()
        return cls(lambda factory: loop.create_unix_connection(factory, path), **options)

    async def __aenter__(self) -> PeerPool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every connection; exchanges under way end with an error."""
        for connection in [*self._idle, *self._busy]:
            connection.abort()
        self._idle.clear()
        self._busy.clear()

    def stats(self) -> dict[str, int]:
        return {"idle": len(self._idle), "busy": len(self._busy), "opened": self.opened}

    async def request(
        self, head: bytes, body: bytes | AsyncIterable[bytes] | None, *, method: str
    ) -> Answer:
        """Send one request (its head ends with the blank line; an iterable body is sent
        as it is given, already framed) and read the answer's head."""
        in_hand = not isinstance(body, AsyncIterable)
        for attempt in (0, 1):
            connection, reused = await self._acquire()
            try:
                await self._send(connection, head, body)
                return await self._answer(connection, method)
            except OSError as exc:  # ConnectionError, TimeoutError, BadAnswer
                self.discard(connection)
                race = isinstance(exc, ConnectionError) and not isinstance(exc, BadAnswer)
                unserved = isinstance(exc, _NotWritten) or connection.reset
                safe = method in SAFE or unserved  # a replay cannot do it twice
                if race and reused and in_hand and safe and not connection.received and not attempt:
                    self.retried += 1
                    continue  # the peer had closed it idle: never served there
                raise PeerUnavailable(str(exc) or type(exc).__name__) from exc
            except BaseException:  # cancelled: the exchange is cut short
                self.discard(connection)
                raise
        raise AssertionError("unreachable")

    def give_back(self, connection: _Connection, *, keep: bool) -> None:
        self._busy.discard(connection)
        if (
            keep
            and connection.usable
            and not connection.buffer
            and len(self._idle) < self._keep_idle
        ):
            connection.idle_since = asyncio.get_running_loop().time()
            self._idle.append(connection)
            return
        connection.abort()

    def discard(self, connection: _Connection) -> None:
        self._busy.discard(connection)
        connection.abort()

    async def _acquire(self) -> tuple[_Connection, bool]:
        now = asyncio.get_running_loop().time()
        while self._idle:
            connection = self._idle.pop()
            fresh = now - connection.idle_since < IDLE_SECONDS
            if connection.usable and fresh and not connection.buffer:  # nothing unasked
                connection.received = False
                self._busy.add(connection)
                return connection, True
            connection.abort()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, protocol = await self._connect(lambda: _Connection(loop))
        except OSError as exc:  # refused, unreachable, timed out (TimeoutError)
            raise PeerUnreachable(f"cannot connect: {exc or type(exc).__name__}") from exc
        assert isinstance(protocol, _Connection)
        self.opened += 1
        self._busy.add(protocol)
        return protocol, False

    @staticmethod
    async def _send(
        connection: _Connection, head: bytes, body: bytes | AsyncIterable[bytes] | None
    ) -> None:
        if body is None or isinstance(body, bytes | bytearray):
            await connection.write(head + body if body else head)
            return
        await connection.write(head)
        async for piece in body:
            await connection.write(piece)

    async def _answer(self, connection: _Connection, method: str) -> Answer:
        while True:
            status, reason, headers, head = await _head(connection, self.read_timeout)
            if status >= 200 or status == 101:
                break  # an interim 1xx answer (100 Continue) is skipped
        answer = Answer(status, reason, headers, None, head, connection, self)
        chunked = False
        length: int | None = None
        for name, value in headers:
            lowered = name.lower()
            if lowered == "content-length":
                length = int(value)
            elif lowered == "transfer-encoding":
                chunked = "chunked" in value.lower()
            elif lowered == "connection" and "close" in value.lower():
                answer._keep = False
        if method == "HEAD" or status in _NO_BODY or status < 200:
            length, chunked = 0, False
        answer.length = None if chunked else length
        answer._chunked = chunked
        return answer


async def _head(
    connection: _Connection, timeout: float
) -> tuple[int, str, list[tuple[str, str]], bytes]:
    buffer = connection.buffer
    end = buffer.find(b"\r\n\r\n")
    while end < 0:
        if len(buffer) > MAX_HEAD:
            raise BadAnswer("an answer's head is too long")
        await connection.more(timeout)
        end = buffer.find(b"\r\n\r\n")
    raw = connection.take(end + 4)
    lines = raw[:-4].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise BadAnswer(f"not an HTTP/1.1 status line: {lines[0]!r}")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            raise BadAnswer(f"a malformed header line: {line!r}")
        headers.append((name.strip(), value.strip()))
    return int(parts[1]), parts[2] if len(parts) > 2 else "", headers, raw
