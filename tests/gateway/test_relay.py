"""gateway/relay.py: a request relayed as it came over a Unix socket, its answer streamed back."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.peer_http import PeerPool
from gateway.relay import relay

HOP = "X-Test-Hop"


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
