"""A load generator that is not the bottleneck: HTTP/1.1 keep-alive on asyncio Protocols.

Requests are pre-built bytes. Responses are read into one preallocated buffer per
connection (a BufferedProtocol) and parsed only as far as the status line and
`Content-Length`; bodies are counted off, not copied (no header dict, no JSON). On the
timed path no coroutine or future runs per request: a connection's `buffer_updated`
records the finished request and writes the next one. Only seeding keeps and decodes
bodies (`call`, with msgspec).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import msgspec

HOST = "127.0.0.1"

OnResponse = Callable[["Connection", int, bytes], None]


class ProtocolError(Exception):
    """The server answered something this client does not parse, or hung up mid-request."""


def build_request(
    method: str,
    path: str,
    body: object = None,
    *,
    port: int,
    headers: Mapping[str, str] = {},
    host: str = HOST,
) -> bytes:
    """The bytes of one keep-alive request; `body` is encoded as JSON."""
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    if body is None:
        return (head + "\r\n").encode()
    data = msgspec.json.encode(body)
    head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    return head.encode() + data


class Connection(asyncio.BufferedProtocol):
    """One keep-alive connection, one request in flight; `on_response` gets each answer.

    The socket is read straight into one preallocated buffer. A body is only counted
    off as it arrives, not kept, unless `keep_bodies` is set or the status is not 200.
    A status of 0 means the connection failed; the body then says why.
    """

    BUFFER = 256 * 1024

    def __init__(self) -> None:
        self.on_response: OnResponse | None = None
        self.keep_bodies = False
        self.sent_ns = 0
        self.port = 0
        self.host = HOST
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray(self.BUFFER)
        self._view = memoryview(self._buffer)
        self._filled = 0  # bytes of an unfinished head at the start of the buffer
        self._status = 0
        self._remaining = -1  # body bytes still to come; -1 while reading a head
        self._keep = False
        self._body = bytearray()
        self._busy = False
        self.head = b""  # the last response head, lower-cased, while keep_bodies is set

    @classmethod
    async def open(cls, port: int, host: str = HOST) -> Connection:
        _, protocol = await asyncio.get_running_loop().create_connection(cls, host, port)
        protocol.port, protocol.host = port, host
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def send(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            self._fail("connection is closed")
            return
        self._busy = True
        self.sent_ns = time.perf_counter_ns()
        self._transport.write(data)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    async def fetch(self, data: bytes) -> tuple[int, bytes]:
        """Send one request and wait for its status and body (for seeding, not timing)."""
        future: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()

        def done(_: Connection, status: int, body: bytes) -> None:
            if not future.done():
                future.set_result((status, body))

        self.keep_bodies = True
        self.on_response = done
        self.send(data)
        return await future

    def header(self, name: bytes) -> bytes:
        """A header of the last response `fetch` got (lower-case name); b"" if absent."""
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key == name:
                return value.strip()
        return b""

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._filled == len(self._buffer):
            self._fail("response head larger than the buffer")
        return self._view[self._filled :]

    def buffer_updated(self, nbytes: int) -> None:
        start, end = 0, self._filled + nbytes
        while True:
            if self._remaining < 0:
                head_end = self._buffer.find(b"\r\n\r\n", start, end)
                if head_end < 0:
                    break
                if not self._parse_head(start, head_end):
                    return
                start = head_end + 4
            take = min(self._remaining, end - start)
            if take and self._keep:
                self._body += self._view[start : start + take]
            start += take
            self._remaining -= take
            if self._remaining:
                break  # the rest of the body is still to come
            self._finish()
            if start == end:
                break
        leftover = end - start  # the beginning of a head: keep it at the buffer's start
        if leftover and start:
            self._view[:leftover] = bytes(self._view[start:end])
        self._filled = leftover

    def _parse_head(self, start: int, head_end: int) -> bool:
        head = bytes(self._view[start:head_end]).lower()
        at = head.find(b"\r\ncontent-length:")
        if not head.startswith(b"http/1.1 ") or at < 0:
            self._fail(f"cannot parse response head {head[:200]!r}")
            return False
        line_end = head.find(b"\r\n", at + 2)
        self._remaining = int(head[at + 17 : line_end if line_end > 0 else len(head)])
        self._status = int(head[9:12])
        self._keep = self.keep_bodies or self._status != 200
        if self.keep_bodies:
            self.head = head
        return True

    def _finish(self) -> None:
        body = bytes(self._body) if self._keep else b""
        self._body.clear()
        self._remaining, self._busy = -1, False
        if self.on_response is not None:
            self.on_response(self, self._status, body)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._busy:
            self._fail(f"connection lost: {exc or 'closed by the server'}")

    def _fail(self, reason: str) -> None:
        self._busy = False
        self._filled, self._remaining = 0, -1
        self._body.clear()
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        if self.on_response is not None:
            self.on_response(self, 0, reason.encode())


async def call(
    connection: Connection,
    method: str,
    path: str,
    body: object = None,
    headers: Mapping[str, str] = {},
) -> Any:
    """One request with a decoded JSON answer; anything but 200 raises."""
    request = build_request(
        method, path, body, port=connection.port, headers=headers, host=connection.host
    )
    status, payload = await connection.fetch(request)
    if status != 200:
        raise ProtocolError(f"{method} {path} -> {status}: {payload[:300]!r}")
    return msgspec.json.decode(payload)


@dataclass
class Result:
    """What one bounded run measured."""

    latencies_ns: list[int] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""
    elapsed: float = 0.0  # seconds, first send to last answer
    cpu: float = 0.0  # this process's CPU seconds over the run

    @property
    def count(self) -> int:
        return len(self.latencies_ns) + self.errors

    @property
    def rps(self) -> float:
        """Successful requests per second (a fast error must not look like throughput)."""
        return len(self.latencies_ns) / self.elapsed if self.elapsed > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        """Nearest-rank percentile of the successful requests' latencies, in ms."""
        if not self.latencies_ns:
            return math.nan
        ordered = sorted(self.latencies_ns)
        rank = max(1, math.ceil(q / 100 * len(ordered)))
        return ordered[rank - 1] / 1e6


class _Load:
    """Keeps `connections` busy until `count` requests are sent or `seconds` pass."""

    def __init__(
        self, requests: Sequence[bytes], count: int, seconds: float, sticky: bool = False
    ) -> None:
        self.requests = requests
        self.sticky = sticky  # connection k sends only requests[k % len]
        self.lanes: dict[int, int] = {}
        self.count = count
        self.seconds = seconds
        self.result = Result()
        self.sent = 0
        self.active = 0
        self.deadline = 0.0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def start(self, connections: Sequence[Connection]) -> None:
        self.deadline = time.perf_counter() + self.seconds
        self.active = len(connections)
        self.lanes = {id(connection): k for k, connection in enumerate(connections)}
        for connection in connections:
            connection.on_response = self.answered
            self.next(connection)

    def next(self, connection: Connection) -> None:
        if self.sent >= self.count or time.perf_counter() >= self.deadline:
            self.active -= 1
            if not self.active and not self.done.done():
                self.done.set_result(None)
            return
        k = self.lanes[id(connection)] if self.sticky else self.sent
        data = self.requests[k % len(self.requests)]
        self.sent += 1
        connection.send(data)

    def answered(self, connection: Connection, status: int, body: bytes) -> None:
        now = time.perf_counter_ns()
        result = self.result
        if status == 200:
            result.latencies_ns.append(now - connection.sent_ns)
        else:
            result.errors += 1
            if not result.first_error:
                result.first_error = f"{status}: {body[:300]!r}"
        if status:
            self.next(connection)
        else:  # a dead connection drops out of the run
            self.active -= 1
            if not self.active and not self.done.done():
                self.done.set_result(None)


async def run(
    port: int,
    requests: Sequence[bytes],
    *,
    connections: int = 1,
    count: int,
    seconds: float,
    host: str = HOST,
    sticky: bool = False,
) -> Result:
    """Send `requests` (cycled) over `connections` keep-alive connections, each with one
    request in flight, until `count` are sent or `seconds` pass; wait for the last answers.
    `sticky`: connection k sends only `requests[k % len(requests)]` (a chat client's
    connection, one conversation) instead of each the next in turn (a pooled backend's).
    """
    pool = [await Connection.open(port, host) for _ in range(connections)]
    try:
        load = _Load(requests, count, seconds, sticky)
        cpu, started = time.process_time(), time.perf_counter()
        load.start(pool)
        await load.done
        load.result.elapsed = time.perf_counter() - started
        load.result.cpu = time.process_time() - cpu
        return load.result
    finally:
        for connection in pool:
            connection.close()
