"""gateway/relay.py: a request relayed as it came over a Unix socket, its answer streamed back."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.migration import request_bytes
from gateway.peer_http import PeerPool
from gateway.relay import pass_through, relay, send, whole_body

HOP = "X-Test-Hop"
Front = Callable[..., Awaitable[TestClient[Any, Any]]]  # (upstream app, built=None)


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[Path, list[web.Request], list[bytes]]]:
    seen: list[web.Request] = []
    bodies: list[bytes] = []

    async def echo(request: web.Request) -> web.StreamResponse:
        seen.append(request)
        bodies.append(await request.read())
        response = web.StreamResponse(status=201, headers={"X-Upstream": "yes"})
        await response.prepare(request)
        for i in range(3):
            await response.write(b"chunk%d;" % i)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "up.sock"
        await web.UnixSite(runner, str(path)).start()
        yield path, seen, bodies
        await runner.cleanup()


async def test_a_relayed_request_arrives_unchanged_but_for_hop_headers_and_streams_back(
    upstream: tuple[Path, list[web.Request], list[bytes]],
) -> None:
    path, seen, bodies = upstream
    pool = PeerPool.unix(str(path))

    async def front(request: web.Request) -> web.StreamResponse:
        return await relay(request, pool, hop_header=HOP)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", front)
    async with TestClient(TestServer(app)) as client:
        response = await client.post(
            "/api/v1/x%2Fy/messages?a=1&b=two",
            data=b'{"k": "v"}' * 1000,
            headers={"Content-Type": "application/json", "Authorization": "Bearer t",
                     "Keep-Alive": "timeout=5", "Host": "canopy.example:8080"},
        )  # fmt: skip
        assert response.status == 201
        assert response.headers["X-Upstream"] == "yes"
        assert await response.read() == b"chunk0;chunk1;chunk2;"
    pool.close()
    (request,) = seen
    assert request.method == "POST"
    assert request.rel_url.raw_path_qs == "/api/v1/x%2Fy/messages?a=1&b=two"
    assert bodies == [b'{"k": "v"}' * 1000]
    assert request.headers["Authorization"] == "Bearer t"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Host"] == "canopy.example:8080"  # the client's, for its checks
    assert request.headers[HOP] == "1"
    assert "Keep-Alive" not in request.headers


@pytest.fixture
async def front() -> AsyncIterator[Front]:
    """A relaying server in front of an upstream app served on a Unix socket."""
    clients: list[TestClient[Any, Any]] = []
    runners: list[web.AppRunner] = []
    with tempfile.TemporaryDirectory() as directory:

        async def start(
            upstream_app: web.Application, built: list[str] | None = None
        ) -> TestClient[Any, Any]:
            runner = web.AppRunner(upstream_app)
            await runner.setup()
            runners.append(runner)
            path = str(Path(directory) / f"up{len(runners)}.sock")
            await web.UnixSite(runner, path).start()
            pool = PeerPool.unix(path)

            async def relaying(request: web.Request) -> web.StreamResponse:
                return await relay(request, pool, hop_header=HOP)

            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", relaying)
            app.on_cleanup.append(lambda _: _close(pool))
            if built is not None:  # the path of each answer this front builds itself

                async def note(request: web.Request, response: web.StreamResponse) -> None:
                    built.append(request.path)

                app.on_response_prepare.append(note)
            client = TestClient(TestServer(app))
            await client.start_server()
            clients.append(client)
            return client

        yield start
        for client in clients:
            await client.close()
        for runner in runners:
            await runner.cleanup()


async def _close(pool: PeerPool) -> None:
    pool.close()


async def test_a_body_of_unknown_length_and_a_large_answer_stream_through(
    front: Front,
) -> None:
    big = bytes(range(256)) * 2048  # 512 KiB: streamed, not gathered

    async def echo(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        response = web.StreamResponse(headers={"X-Length": str(len(body))})
        await response.prepare(request)
        for start in range(0, len(big), 65_536):
            await response.write(big[start : start + 65_536])
        await response.write_eof()
        return response

    upstream_app = web.Application()
    upstream_app.router.add_route("*", "/{tail:.*}", echo)
    client = await front(upstream_app)

    async def pieces() -> AsyncIterator[bytes]:
        for k in range(10):
            yield b"piece%d;" % k

    response = await client.post("/x", data=pieces())  # chunked: no Content-Length
    assert response.status == 200
    assert response.headers["X-Length"] == str(len(b"".join(b"piece%d;" % k for k in range(10))))
    assert await response.read() == big
    assert "Content-Length" not in response.headers  # passed through chunked, unbuffered


async def test_an_answer_cut_short_by_the_upstream_cuts_the_client_connection(
    front: Front,
) -> None:
    async def cut(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 1_000_000
        await response.prepare(request)
        await response.write(b"x" * 100_000)
        assert request.transport is not None
        request.transport.abort()  # the owner dies mid-answer
        return response

    upstream_app = web.Application()
    upstream_app.router.add_route("*", "/{tail:.*}", cut)
    client = await front(upstream_app)
    response = await client.get("/x")
    assert response.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()  # not a short body passed off as whole


async def _exchange(port: int, requests: list[bytes], *, then_closed: bool) -> list[bytes]:
    """Each raw request sent on one connection, each answer read whole (by its
    Content-Length); with `then_closed`, the server must close the connection after."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answers = []
    try:
        async with asyncio.timeout(10):
            for raw in requests:
                writer.write(raw)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ", 1)[1].split(b"\r\n")[0])
                body = b"" if raw.startswith(b"HEAD ") else await reader.readexactly(length)
                answers.append(head + body)
            if then_closed:
                assert await reader.read(1) == b"", "the connection stayed open"
    finally:
        writer.close()
    return answers


@pytest.fixture
async def small_answers(front: Front) -> tuple[int, list[str]]:
    """A relaying front (noting each answer it builds itself) to a small-answer upstream."""

    async def small(request: web.Request) -> web.Response:
        return web.Response(text=f"{request.method} {request.path}", headers={"X-Up": "1"})

    upstream_app = web.Application()
    upstream_app.router.add_route("*", "/{tail:.*}", small)
    built: list[str] = []
    client = await front(upstream_app, built)
    assert client.port is not None
    return client.port, built


async def test_a_small_answer_on_keep_alive_passes_as_the_peer_sent_it(
    small_answers: tuple[int, list[str]],
) -> None:
    port, built = small_answers
    get, post, head = await _exchange(port, [
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi",
        b"HEAD /c HTTP/1.1\r\nHost: x\r\n\r\n",
    ], then_closed=False)  # fmt: skip
    assert get.startswith(b"HTTP/1.1 200 OK\r\n") and get.endswith(b"\r\n\r\nGET /a")
    assert b"X-Up: 1\r\n" in get and b"Content-Length: 6\r\n" in get
    assert post.endswith(b"\r\n\r\nPOST /b")  # the same connection, kept alive
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"Content-Length: 7\r\n" in head
    assert built == []  # nothing rebuilt: the peer's head went as it came


async def test_a_client_closing_or_speaking_http_1_0_gets_an_answer_built_here(
    small_answers: tuple[int, list[str]],
) -> None:
    port, built = small_answers
    (closing,) = await _exchange(
        port, [b"GET /close HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"], then_closed=True
    )
    assert closing.endswith(b"GET /close") and b"Connection: close" in closing
    (old,) = await _exchange(port, [b"GET /old HTTP/1.0\r\nHost: x\r\n\r\n"], then_closed=True)
    assert old.startswith(b"HTTP/1.0 200 OK\r\n") and old.endswith(b"GET /old")
    assert built == ["/close", "/old"]


@pytest.mark.parametrize(
    "body",
    [b'{"k": "v"}', b'{"k": "v"}' * 8000],  # one that would move, one too large to
    ids=["fits", "too-large"],
)
async def test_a_request_that_could_not_move_is_relayed_with_its_whole_body(
    upstream: tuple[Path, list[web.Request], list[bytes]], body: bytes
) -> None:
    """A move that did not happen (too large, or the owner's inbox full) must leave the
    body for the relay: taken for the move, it reached the owner empty under its
    Content-Length, and the owner waited for it until its timeout."""
    path, _, bodies = upstream
    pool = PeerPool.unix(str(path))

    async def front(request: web.Request) -> web.StreamResponse:
        request_bytes(request)  # the move's look at it; the move then fails
        return await relay(request, pool, hop_header=HOP)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", front)
    async with TestClient(TestServer(app)) as client:
        response = await client.post("/m", data=body, headers={"Content-Type": "application/json"})
        assert response.status == 201
    pool.close()
    assert bodies == [body]


async def test_a_chunked_body_read_whole_goes_on_chunked(
    upstream: tuple[Path, list[web.Request], list[bytes]],
) -> None:
    """A body given to `send` (forwarding reads it to send it again) under the chunked
    head a body of unknown length gets: framed as the head says, not sent raw."""
    path, _, bodies = upstream
    pool = PeerPool.unix(str(path))

    async def front(request: web.Request) -> web.StreamResponse:
        body = await whole_body(request)
        return await pass_through(request, await send(request, pool, hop_header=HOP, body=body))

    async def pieces() -> AsyncIterator[bytes]:
        yield b'{"k": '
        yield b'"v"}'

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", front)
    async with TestClient(TestServer(app)) as client:
        response = await client.post("/m", data=pieces())  # chunked on the wire
        assert response.status == 201
    pool.close()
    assert bodies == [b'{"k": "v"}']
