"""gateway/json_answer.py over a real aiohttp server on loopback: the head it builds
answers as aiohttp's own would (signals, Connection rules, HEAD, Date), in one piece."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.json_answer import JSONAnswer, drop_server_header
from tests.gateway.raw_http import RawResponse, read_response

BODY = b'{"message_id": "m", "lineage": ["r", "m"]}'


@pytest.fixture
async def port() -> AsyncIterator[int]:
    async def answer(request: web.Request) -> web.StreamResponse:
        response = JSONAnswer(BODY, int(request.query.get("status", "200")))
        if "bad" in request.query:
            response.headers["X-Bad"] = "one\r\nInjected: two"
        return response

    async def named(request: web.Request, response: web.StreamResponse) -> None:
        response.headers["X-Canopy-Node"] = "n1"  # as node_header does

    app = web.Application()
    app.router.add_get("/answer", answer)  # HEAD too, as aiohttp adds it
    app.on_response_prepare.append(drop_server_header)
    app.on_response_prepare.append(named)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    assert server.port is not None
    yield server.port
    await server.close()


async def exchange(port: int, *requests: bytes) -> tuple[list[RawResponse], bytes]:
    """Send each request in turn on one connection; the answers, and what came after."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        answers = []
        for data in requests:
            writer.write(data)
            await writer.drain()
            answers.append(await read_response(reader))
        async with asyncio.timeout(10):
            rest = await reader.read() if b"close" in requests[-1].lower() else b""
        return answers, rest
    finally:
        writer.close()


def get(path: str = "/answer", version: str = "1.1", *lines: str, method: str = "GET") -> bytes:
    return "\r\n".join([f"{method} {path} HTTP/{version}", "Host: x", *lines, "", ""]).encode()


async def test_an_answer_has_its_length_type_date_and_signal_headers_and_keeps_the_connection(
    port: int,
) -> None:
    (first, second), _ = await exchange(port, get(), get())
    for answer in (first, second):
        assert answer.status == 200 and answer.body == BODY
        assert answer.headers["content-type"] == "application/json"
        assert answer.headers["content-length"] == str(len(BODY))
        assert answer.headers["x-canopy-node"] == "n1"  # the app's signals ran
        assert "date" in answer.headers and "server" not in answer.headers
        assert "connection" not in answer.headers


async def test_a_head_answer_is_the_head_alone_with_the_bodys_length(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(get(method="HEAD") + get())  # pipelined: the GET's answer follows
        async with asyncio.timeout(10):
            head = await reader.readuntil(b"\r\n\r\n")
            after = await read_response(reader)  # parses only if no body followed the head
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert f"Content-Length: {len(BODY)}\r\n".encode() in head
    assert after.status == 200 and after.body == BODY


async def test_a_client_that_closes_is_told_so_and_the_connection_ends(port: int) -> None:
    (answer,), rest = await exchange(port, get("/answer", "1.1", "Connection: close"))
    assert answer.headers["connection"] == "close" and answer.body == BODY
    assert rest == b""  # closed by the server after the answer


async def test_an_http_1_0_keep_alive_client_is_answered_keep_alive(port: int) -> None:
    keep = get("/answer", "1.0", "Connection: keep-alive")
    (first, second), _ = await exchange(port, keep, keep)
    assert first.headers["connection"] == "keep-alive"
    assert second.status == 200 and second.body == BODY


async def test_an_error_status_keeps_its_reason_and_body(port: int) -> None:
    (answer,), _ = await exchange(port, get("/answer?status=404"))
    assert answer.status == 404 and answer.body == BODY


async def test_a_header_value_with_a_line_break_is_refused_and_nothing_is_sent(
    port: int,
) -> None:
    """As aiohttp refuses one: the connection ends, no header is injected."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(get("/answer?bad=1"))
        async with asyncio.timeout(10):
            assert await reader.read() == b""
    finally:
        writer.close()


async def test_a_plain_answer_gets_its_status_line_from_the_cache_with_its_own_reason() -> None:
    """With no header but its type (no signal added one), the status line and type come
    from a cache by status and reason: a custom reason is not another answer's."""

    async def answer(request: web.Request) -> web.StreamResponse:
        response = JSONAnswer(BODY, int(request.query.get("status", "200")))
        if "reason" in request.query:
            response.set_status(response.status, request.query["reason"])
        return response

    app = web.Application()
    app.router.add_get("/answer", answer)
    app.on_response_prepare.append(drop_server_header)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    assert server.port is not None
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            raw = []
            for path in ("/answer?status=404", "/answer?status=404&reason=Gone%20Away",
                         "/answer?status=404", "/answer"):  # fmt: skip
                writer.write(get(path))
                async with asyncio.timeout(10):
                    raw.append(await reader.readuntil(b"\r\n\r\n"))
                    await reader.readexactly(len(BODY))
        finally:
            writer.close()
    finally:
        await server.close()
    lines = [head.split(b"\r\n") for head in raw]
    assert [line[0] for line in lines] == [
        b"HTTP/1.1 404 Not Found", b"HTTP/1.1 404 Gone Away", b"HTTP/1.1 404 Not Found",
        b"HTTP/1.1 200 OK",
    ]  # fmt: skip
    for head in lines:
        assert head[1] == b"Content-Type: application/json"
        assert head[2].startswith(b"Date: ") and head[3] == f"Content-Length: {len(BODY)}".encode()
