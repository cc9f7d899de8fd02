"""Connections: parser errors as JSON, no `Server` header, the connection cap under a low
descriptor limit, shutdown with stalled clients, and aborted uploads through a real node."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import pytest
from gateway_helpers import API, assert_error, unchanged
from raw_http import RawResponse, exchange, head, read_response

from gateway import connections
from persistence.background import Throttled
from tests.processes import NodeProcess
from tests.waiting import until

if TYPE_CHECKING:
    from conftest import Node, NodeFactory


CREATE = b'{"title": "smuggled", "created_by": "alice"}'
# Request framings the parser must refuse (request smuggling and plain junk).
MALFORMED: dict[str, bytes] = {
    "bad_request_line": b"GARBAGE\r\n\r\n",
    "bad_header": b"GET /health HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
    "length_and_chunked": b"POST /api/v1/conversations HTTP/1.1\r\nHost: x\r\n"
    b"Content-Type: application/json\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n"
    + CREATE,
    "two_lengths": b"POST /api/v1/conversations HTTP/1.1\r\nHost: x\r\n"
    b"Content-Type: application/json\r\nContent-Length: 44\r\nContent-Length: 4\r\n\r\n" + CREATE,
    "chunked_not_last": b"POST /api/v1/conversations HTTP/1.1\r\nHost: x\r\n"
    b"Content-Type: application/json\r\nTransfer-Encoding: chunked, identity\r\n\r\n"
    b"2c\r\n" + CREATE + b"\r\n0\r\n\r\n",
    "space_before_colon": b"POST /api/v1/conversations HTTP/1.1\r\nHost: x\r\n"
    b"Content-Type: application/json\r\nContent-Length : 44\r\n\r\n" + CREATE,
    "bad_chunk_size": b"POST /api/v1/conversations HTTP/1.1\r\nHost: x\r\n"
    b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0x2c\r\n" + CREATE + b"\r\n0\r\n\r\n",
}


def assert_bare_error(answer: RawResponse, status: int, code: str) -> None:
    assert answer.headers["content-type"].startswith("application/json"), answer
    assert_error(answer.status, answer.json(), status, code)
    assert "server" not in answer.headers, answer.headers


async def test_parser_errors_answer_json_with_one_warning_line(
    node: Node, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(connections, "throttled", Throttled(connections.log, every=3600))
    port = node.settings.port
    with caplog.at_level(logging.DEBUG):
        async with unchanged(node):
            for raw in MALFORMED.values():
                assert_bare_error(await exchange(port, raw), 400, "bad_request")
    lines = [r for r in caplog.records if r.name.startswith(("gateway", "aiohttp"))]
    assert [r for r in lines if r.exc_info or r.levelno >= logging.ERROR] == []
    warnings = [r for r in lines if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    status, _ = await node.request("GET", "/health")
    assert status == 200


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/health", 200),
        ("HEAD", "/health", 200),
        ("GET", "/nothing", 404),
        ("PATCH", "/health", 405),
        ("GET", f"{API}/conversations/nope", 422),
    ],
)
async def test_no_server_header(node: Node, method: str, path: str, status: int) -> None:
    async with node.session.request(method, node.base + path) as response:
        assert response.status == status
        assert "Server" not in response.headers, response.headers


# -- through a real node -------------------------------------------------------------------


def _descriptors(limit: int) -> Callable[[], None]:
    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return lower


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@asynccontextmanager
async def open_sockets(port: int, n: int, first: bytes = b"") -> AsyncIterator[list[object]]:
    """`n` connections that send `first` (maybe nothing) and then stall."""
    opened = []
    try:
        for _ in range(n):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            if first:
                writer.write(first)
            opened.append((reader, writer))
        yield opened  # type: ignore[misc]
    finally:
        for _, writer in opened:
            writer.close()


async def _post(session: aiohttp.ClientSession, url: str, body: dict[str, str]) -> str:
    async with session.post(url, json=body) as response:
        assert response.status == 200, await response.text()
        return str((await response.json())["conversation_id"])


def _stored_conversations(data_dir: Path) -> set[str]:
    db = sqlite3.connect(f"file:{data_dir / 'canopy.db'}?mode=ro", uri=True)
    try:
        return {row[0] for row in db.execute("SELECT conversation_id FROM conversations")}
    finally:
        db.close()


async def _until_stored(data_dir: Path, cid: str) -> None:
    """Poll the node's SQLite store (an external process) with a bounded deadline."""
    async with asyncio.timeout(30):
        while cid not in _stored_conversations(data_dir):
            await asyncio.sleep(0.05)


def _failures(node: NodeProcess) -> list[bytes]:
    marks = (b"Too many open files", b"EMFILE", b"Traceback", b" ERROR ")
    return [line for line in node.output if any(m in line for m in marks)]


async def test_connection_cap_keeps_the_node_under_its_descriptor_limit(
    node_process: Callable[..., NodeProcess],
) -> None:
    """Under `ulimit -n 128`, 200 idle sockets: the node answers past its cap with 503
    instead of running out of descriptors, and write-behind goes on."""
    node = node_process(preexec_fn=_descriptors(128))
    await node.start()
    url = f"{node.base}{API}/conversations"
    async with aiohttp.ClientSession() as session:
        before = await _post(session, url, {"title": "before", "created_by": "alice"})
        async with open_sockets(node.port, 200):
            answer = await exchange(node.port, head("GET", "/health", node.port))
            assert answer.status in (200, 503), answer
            if answer.status == 503:
                assert_bare_error(answer, 503, "unavailable")
                assert answer.headers["retry-after"] == "1"
            await _until_stored(node.data_dir, before)  # the flusher still works
        after = await _post(session, url, {"title": "after", "created_by": "alice"})
        await _until_stored(node.data_dir, after)
    assert _failures(node) == []
    assert any(b"answering 503" in line for line in node.output)
    assert await node.stop(signal.SIGTERM) == 0


SHUTDOWN_TIMEOUT = 10.0  # Settings.shutdown_timeout
MARGIN = 6.0  # start-up of the interpreter aside, a busy machine's slack


async def test_sigterm_with_stalled_clients_finishes_within_the_shutdown_timeout(
    node_process: Callable[..., NodeProcess],
) -> None:
    """Idle keep-alive, half-sent heads and stalled uploads (300 of them) neither stop a
    normal request from being answered nor hold SIGTERM past its budget; what was
    acknowledged is in the store after a restart."""
    node = node_process()
    await node.start()
    port = node.port
    url = f"{node.base}{API}/conversations"
    upload = head(
        "POST", f"{API}/conversations", port, "Content-Type: application/json",
        "Content-Length: 1000",
    ) + b'{"title": '  # fmt: skip
    async with aiohttp.ClientSession() as session:
        acked = [
            await _post(session, url, {"title": f"t{i}", "created_by": "alice"}) for i in range(20)
        ]
        async with (
            open_sockets(port, 100) as idle,
            open_sockets(port, 100, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: ") as heads,
            open_sockets(port, 100, upload) as uploads,
            open_sockets(port, 1, head("GET", "/health", port)) as [(keep_alive, _)],
        ):
            assert await read_response(keep_alive)  # type: ignore[has-type]
            assert len(idle) + len(heads) + len(uploads) == 300
            acked.append(await _post(session, url, {"title": "among", "created_by": "alice"}))
            assert node.process is not None
            started = time.monotonic()
            assert await node.stop(signal.SIGTERM) == 0
            elapsed = time.monotonic() - started
    assert elapsed < SHUTDOWN_TIMEOUT + MARGIN, elapsed
    assert _failures(node) == []

    again = node_process()
    await again.start()
    async with aiohttp.ClientSession() as session:
        for cid in acked:
            async with session.get(f"{again.base}{API}/conversations/{cid}") as response:
                assert response.status == 200, cid
    assert await again.stop(signal.SIGTERM) == 0


ABORTED = 300
RSS_MARGIN = 60 * 1024 * 1024  # 300 aborted uploads leaked ~360 MB before the fix


async def _abort_uploads(port: int, n: int, batch: int = 30) -> None:
    """`n` uploads declaring 1 MB that hang up after 900 KB, `batch` at a time."""
    data = head(
        "POST", f"{API}/conversations", port, "Content-Type: application/json",
        f"Content-Length: {1024 * 1024}",
    ) + b'{"title": "' + b"x" * 900 * 1024  # fmt: skip

    async def one() -> None:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(data)
        await writer.drain()
        writer.close()

    for _ in range(n // batch):
        await asyncio.gather(*(one() for _ in range(batch)))


async def test_aborted_uploads_do_not_grow_rss(node_process: Callable[..., NodeProcess]) -> None:
    node = node_process()
    await node.start()
    assert node.process is not None
    await _abort_uploads(node.port, 60)  # warm the allocator
    answer = await exchange(node.port, head("GET", "/health", node.port))
    assert answer.status == 200
    baseline = _rss_bytes(node.process.pid)
    await _abort_uploads(node.port, ABORTED)
    answer = await exchange(node.port, head("GET", "/health", node.port))
    assert answer.status == 200
    # the node may still be finishing the last handlers: poll, with a deadline
    grown = _rss_bytes(node.process.pid) - baseline
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(10):
            while grown >= RSS_MARGIN:
                await asyncio.sleep(0.1)
                grown = _rss_bytes(node.process.pid) - baseline
    assert grown < RSS_MARGIN, f"RSS grew {grown / 2**20:.0f} MB"
    assert _failures(node) == []
    assert await node.stop(signal.SIGTERM) == 0


async def test_the_server_counts_its_connections_and_refusals(start_node: NodeFactory) -> None:
    node = await start_node(max_connections=3)
    server = node.runner.server
    assert isinstance(server, connections.EdgeServer)
    async with open_sockets(node.settings.port, 3):
        await until(lambda: server.stats()["connections"] == 3)
        answer = await exchange(node.settings.port, head("GET", "/health", node.settings.port))
        assert answer.status == 503
        assert server.stats()["refused"] == 1
    assert server.stats()["max_connections"] == 3
