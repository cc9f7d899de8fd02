"""gateway/peer_http.py: a peer's pooled keep-alive connections and the answer parser."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from gateway.peer_http import PeerPool, PeerUnavailable
from tests.waiting import until

GET = b"GET /x HTTP/1.1\r\nHost: peer\r\n\r\n"
POST = b"POST /x HTTP/1.1\r\nHost: peer\r\nContent-Length: 2\r\n\r\n"
BIG = bytes(range(256)) * 4096  # 1 MiB


@pytest.fixture
async def aiohttp_peer() -> AsyncIterator[tuple[PeerPool, asyncio.Event]]:
    """An aiohttp server: /x echoes the method, /chunked and /sized send 1 MiB, /held
    waits for the event."""
    release = asyncio.Event()

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.path == "/chunked":
            response = web.StreamResponse()
            await response.prepare(request)
            for start in range(0, len(BIG), 100_000):
                await response.write(BIG[start : start + 100_000])
            await response.write_eof()
            return response
        if request.path == "/sized":
            return web.Response(body=BIG)
        if request.path == "/held":
            await release.wait()
        return web.Response(text=request.method + ":" + (await request.text()))

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    async with PeerPool.tcp(f"http://127.0.0.1:{port}") as pool:
        yield pool, release
    await runner.cleanup()


Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


@pytest.fixture
async def raw_peer() -> AsyncIterator[Callable[[Script], Awaitable[PeerPool]]]:
    """A peer that does what a test scripts, per connection (numbered from 0)."""
    servers: list[asyncio.Server] = []
    pools: list[PeerPool] = []
    writers: list[asyncio.StreamWriter] = []

    async def start(script: Script) -> PeerPool:
        count = 0

        async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal count
            count += 1
            writers.append(writer)
            await script(reader, writer, count - 1)

        server = await asyncio.start_server(connected, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        pools.append(PeerPool.tcp(f"http://127.0.0.1:{port}"))
        return pools[-1]

    yield start
    for pool in pools:
        pool.close()
    for writer in writers:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    for server in servers:
        server.close()
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return head + await reader.readexactly(int(line.split(b":")[1]))
    return head


async def test_sequential_requests_reuse_one_connection(
    aiohttp_peer: tuple[PeerPool, asyncio.Event],
) -> None:
    pool, _ = aiohttp_peer
    for _ in range(3):
        answer = await pool.request(GET, None, method="GET")
        assert (answer.status, await answer.read()) == (200, b"GET:")
        answer = await pool.request(POST, b"hi", method="POST")
        assert (answer.status, await answer.read()) == (200, b"POST:hi")
    assert pool.stats() == {"idle": 1, "busy": 0, "opened": 1}


@pytest.mark.parametrize("path", ["/chunked", "/sized"])
async def test_a_large_body_arrives_in_pieces_and_whole(
    aiohttp_peer: tuple[PeerPool, asyncio.Event], path: str
) -> None:
    pool, _ = aiohttp_peer
    head = b"GET %s HTTP/1.1\r\nHost: peer\r\n\r\n" % path.encode()
    answer = await pool.request(head, None, method="GET")
    assert answer.length == (None if path == "/chunked" else len(BIG))
    pieces = [piece async for piece in answer.chunks()]
    assert b"".join(pieces) == BIG
    assert len(pieces) > 1  # streamed, not gathered
    again = await pool.request(GET, None, method="GET")  # the connection came back whole
    assert await again.read() == b"GET:"
    assert pool.stats()["opened"] == 1


async def test_concurrent_exchanges_each_get_their_own_connection(
    aiohttp_peer: tuple[PeerPool, asyncio.Event],
) -> None:
    pool, release = aiohttp_peer
    held = b"POST /held HTTP/1.1\r\nHost: peer\r\nContent-Length: %d\r\n\r\n"

    async def one(k: int) -> bytes:
        body = str(k).encode()
        answer = await pool.request(held % len(body), body, method="POST")
        return await answer.read()

    calls = [asyncio.ensure_future(one(k)) for k in range(20)]
    await until(lambda: pool.stats()["opened"] == 20, ticks=100_000)  # each has its own
    release.set()
    assert await asyncio.gather(*calls) == [b"POST:%d" % k for k in range(20)]
    assert pool.stats() == {"idle": 20, "busy": 0, "opened": 20}


async def test_a_peer_closing_mid_answer_ends_the_body_with_an_error(
    raw_peer: Callable[[Script], Awaitable[PeerPool]],
) -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        await writer.drain()
        writer.close()

    pool = await raw_peer(cut)
    answer = await pool.request(GET, None, method="GET")
    assert answer.status == 200
    with pytest.raises(ConnectionResetError):
        await answer.read()
    assert pool.stats() == {"idle": 0, "busy": 0, "opened": 1}


async def test_a_peer_closing_before_answering_is_unavailable(
    raw_peer: Callable[[Script], Awaitable[PeerPool]],
) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await read_request(reader)
        writer.close()

    pool = await raw_peer(hang_up)
    with pytest.raises(PeerUnavailable):
        await pool.request(POST, b"hi", method="POST")
    assert pool.stats() == {"idle": 0, "busy": 0, "opened": 1}


def keep_alive_race(seen: list[bytes], reset: bool = False) -> Script:
    """Connection 0 answers once, then closes when the next request has arrived (as a
    peer whose keep-alive timeout or shutdown fired as the request was on its way):
    with a FIN, or with `reset` an RST, as a peer's kernel does when the peer closes
    with that request unread. Later connections answer every request."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            try:
                request = await read_request(reader)
            except asyncio.IncompleteReadError:
                writer.close()
                return
            seen.append(request)
            if n == 0 and len(seen) > 1:
                if reset:
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                else:
                    writer.close()
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    return script


async def test_a_safe_request_meeting_a_keep_alive_race_is_replayed_once(
    raw_peer: Callable[[Script], Awaitable[PeerPool]],
) -> None:
    seen: list[bytes] = []
    pool = await raw_peer(keep_alive_race(seen))
    assert await (await pool.request(GET, None, method="GET")).read() == b"ok"
    assert await (await pool.request(GET, None, method="GET")).read() == b"ok"
    assert pool.retried == 1
    assert seen == [GET, GET, GET]  # the lost one, then its replay on a fresh connection


async def test_a_post_meeting_a_keep_alive_race_is_not_sent_twice(
    raw_peer: Callable[[Script], Awaitable[PeerPool]],
) -> None:
    seen: list[bytes] = []
    pool = await raw_peer(keep_alive_race(seen))
    assert await (await pool.request(POST, b"hi", method="POST")).read() == b"ok"
    with pytest.raises(PeerUnavailable):
        await pool.request(POST, b"hi", method="POST")
    assert pool.retried == 0
    assert seen == [POST + b"hi", POST + b"hi"]  # the second arrived once, never again


async def test_a_post_the_peer_reset_unanswered_is_sent_again_on_a_fresh_connection(
    raw_peer: Callable[[Script], Awaitable[PeerPool]],
) -> None:
    """A graceful leave's closing peer: the forwarded append was answered 503 "did not
    answer" (tests/cluster/test_workers.py, under load)."""
    seen: list[bytes] = []
    pool = await raw_peer(keep_alive_race(seen, reset=True))
    assert await (await pool.request(POST, b"hi", method="POST")).read() == b"ok"
    assert await (await pool.request(POST, b"hi", method="POST")).read() == b"ok"
    assert pool.retried == 1
    assert seen == [POST + b"hi"] * 3  # the one reset unread, then on a fresh connection
    assert pool.stats()["opened"] == 2


async def test_a_request_on_a_connection_closed_when_it_was_to_go_is_sent_on_another(
    raw_peer: Callable[[Script], Awaitable[PeerPool]],
) -> None:
    """Closed between the pool's check and the write (the peer's FIN came in between):
    nothing was written, so a POST goes again."""
    seen: list[bytes] = []

    async def answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while True:
            try:
                seen.append(await read_request(reader))
            except asyncio.IncompleteReadError:
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    pool = await raw_peer(answers)
    assert await (await pool.request(POST, b"hi", method="POST")).read() == b"ok"
    idle = pool._idle[0]
    original = pool._acquire

    async def acquire_then_close() -> tuple[Any, bool]:
        connection, reused = await original()
        if connection is idle:
            connection.closed = True  # as eof_received would mark it
        return connection, reused

    pool._acquire = acquire_then_close  # type: ignore[method-assign]
    assert await (await pool.request(POST, b"hi", method="POST")).read() == b"ok"
    assert pool.retried == 1
    assert seen == [POST + b"hi"] * 2  # the one not written never reached the peer


async def test_a_connection_the_peer_closed_while_idle_is_not_used(
    raw_peer: Callable[[Script], Awaitable[PeerPool]],
) -> None:
    closed = asyncio.Event()

    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        if n == 0:
            writer.close()  # idle timeout: closed before the next request
            await writer.wait_closed()
            closed.set()

    pool = await raw_peer(once)
    assert await (await pool.request(POST, b"hi", method="POST")).read() == b"ok"
    await closed.wait()
    await until(lambda: not pool._idle[0].usable, ticks=100_000)  # the peer's EOF came
    answer = await pool.request(POST, b"hi", method="POST")  # a POST, on a new connection
    assert await answer.read() == b"ok"
    assert pool.stats()["opened"] == 2


async def test_a_refused_connection_is_unavailable() -> None:
    server_gone = PeerPool.tcp("http://127.0.0.1:9")  # the discard port: nobody listens
    with pytest.raises(PeerUnavailable):
        await server_gone.request(GET, None, method="GET")
