"""Large message lists: seed 000's bodies byte for byte, sliced so the loop keeps turning,
capped (413), budgeted node-wide (503) and cut when the client stops reading."""

from __future__ import annotations

import asyncio
import gc
import json
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import msgspec
from gateway_helpers import chain, conv_path, new_conversation
from seeded_conversations import Seeded, deep_conversation, seed

from engine.access import ANONYMOUS
from gateway.config import Settings
from gateway.keys import CONVERSATIONS, SENDER
from gateway.schemas import TreeOut, message_out, path_out
from tests.test_crash import NodeProcess

if TYPE_CHECKING:
    from conftest import Node, NodeFactory

# A loop held this long is far past the ~2 ms a slice takes, and far below what one
# unsliced list held it before (1.3 s for 10,000 children of a deep message).
LAG_BOUND = 0.2


class LagProbe:
    """A task that wakes every millisecond and records the most work the loop did between
    two of its wakeups: the loop thread's CPU time, which other processes on a busy
    machine do not inflate as they do wall time."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            before = time.thread_time()
            await asyncio.sleep(0.001)
            self.longest = max(self.longest, time.thread_time() - before)


@asynccontextmanager
async def lag_probe() -> AsyncIterator[LagProbe]:
    """Probe the loop with the cyclic GC paused: late in a long test session a full
    collection alone took 0.2 s of the loop's CPU, which says nothing of the code here."""
    probe = LagProbe()
    task = asyncio.ensure_future(probe._run())
    await asyncio.sleep(0)  # let it start
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield probe
    finally:
        if collecting:
            gc.enable()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def fetch(node: Node, path: str) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and the raw body (decoding is left to the caller, outside a probe)."""
    async with node.session.get(node.base + path) as response:
        return response.status, dict(response.headers), await response.read()


async def start_seeded(
    start_node: NodeFactory, backend: dict[str, Any], tmp_path: Path, seeded: Seeded,
    **overrides: Any,
) -> Node:  # fmt: skip
    await seed(Settings(data_dir=tmp_path / "data", **backend), seeded)
    node = await start_node(**overrides)
    status, _, _ = await fetch(node, conv_path(seeded.conversation_id))  # activates it
    assert status == 200
    return node


async def test_deep_lineage_and_tree_are_the_seed_bodies_without_blocking_the_loop(
    start_node: NodeFactory, backend: dict[str, Any], tmp_path: Path
) -> None:
    seeded = deep_conversation(1000)
    node = await start_seeded(start_node, backend, tmp_path, seeded)
    cid, leaf = seeded.conversation_id, seeded.chain[-1].message_id
    async with lag_probe() as probe:
        status, _, lineage = await fetch(node, conv_path(cid, f"/messages/{leaf}/lineage"))
        tree_status, _, tree = await fetch(node, conv_path(cid, "/tree"))
    assert status == tree_status == 200
    assert probe.longest < LAG_BOUND, probe.longest

    path = await node.app[CONVERSATIONS].lineage(ANONYMOUS, cid, leaf)
    assert lineage == msgspec.json.encode(path_out(cid, path))  # one unsliced encode
    assert len(lineage) > 19_000_000  # seed 000's shape: every message's whole lineage
    ids = [n.message_id for n in path]
    whole = TreeOut(cid, [message_out(cid, n, ids[: i + 1]) for i, n in enumerate(path)], 1000)
    assert tree == msgspec.json.encode(whole)


async def test_compact_lists_leave_out_lineages(
    start_node: NodeFactory, backend: dict[str, Any], tmp_path: Path
) -> None:
    seeded = deep_conversation(1000, children=3)
    node = await start_seeded(start_node, backend, tmp_path, seeded)
    cid, deepest = seeded.conversation_id, seeded.chain[-1].message_id
    routes = {
        "lineage": conv_path(cid, f"/messages/{deepest}/lineage"),
        "children": conv_path(cid, f"/messages/{deepest}/children"),
    }
    for name, path in routes.items():
        status, _, raw = await fetch(node, path + "?compact=true")
        assert status == 200, raw
        messages = json.loads(raw)
        assert messages and all("lineage" not in m for m in messages), name
        full = [dict(m) for m in json.loads((await fetch(node, path))[2])]
        for m in full:
            assert len(m.pop("lineage")) == m["depth"]
        assert messages == full, name  # the same messages, less their lineages
    status, _, raw = await fetch(node, conv_path(cid, "/tree?compact=true"))
    tree = json.loads(raw)
    assert status == 200 and tree["total_messages"] == 1003
    assert all("lineage" not in m for m in tree["messages"])
    assert "next_cursor" not in tree  # not paged: the seed's object, less lineages


async def test_ten_thousand_children_answer_413_with_a_hint_and_page_without_blocking(
    start_node: NodeFactory, backend: dict[str, Any], tmp_path: Path
) -> None:
    """The list would be 160 MB in seed 000's shape; pages of it are 16 MB."""
    seeded = deep_conversation(400, children=10_000)
    node = await start_seeded(start_node, backend, tmp_path, seeded)
    cid, parent = seeded.conversation_id, seeded.chain[-1].message_id
    children = conv_path(cid, f"/messages/{parent}/children")
    async with lag_probe() as probe:
        status, _, raw = await fetch(node, children)
    assert probe.longest < LAG_BOUND, probe.longest
    assert status == 413, raw[:200]
    error = json.loads(raw)["error"]
    assert error["code"] == "response_too_large"
    assert all(hint in error["message"] for hint in ("limit", "cursor", "compact"))

    appended = []
    seen: list[str] = []
    cursor: str | None = ""
    while cursor is not None:
        query = "?limit=1000" + (f"&cursor={cursor}" if cursor else "")
        async with lag_probe() as probe:
            status, headers, raw = await fetch(node, children + query)
        assert status == 200 and probe.longest < LAG_BOUND, (status, probe.longest)
        page = json.loads(raw)
        assert all(len(m["lineage"]) == 401 for m in page)
        seen += [m["message_id"] for m in page]
        cursor = headers.get("X-Next-Cursor")
        assert (cursor is None) == ("Link" not in headers)
        if len(appended) < 2:  # appends between pages land after every page's cursor
            body = {"parent_message_id": parent, "role": "human",
                    "content": {"type": "text", "text": "late"}, "created_by": "owner"}  # fmt: skip
            status, message = await node.request("POST", conv_path(cid, "/messages"), json=body)
            assert status == 200, message
            appended.append(message["message_id"])
    assert seen == [m.message_id for m in seeded.children] + appended  # each once, in order


async def test_responses_over_the_limit_answer_413_and_pages_fit(start_node: NodeFactory) -> None:
    node = await start_node(max_response_bytes=100_000)
    cid, _ = await new_conversation(node)
    leaf = (await chain(node, cid, 99))[-1]["message_id"]  # lineage 100: about 250 KB
    for path in (f"/messages/{leaf}/lineage", "/tree"):
        status, body = await node.request("GET", conv_path(cid, path))
        assert status == 413 and body["error"]["code"] == "response_too_large", body
        status, body = await node.request("GET", conv_path(cid, path + "?compact=true"))
        assert status == 200, body
        status, body = await node.request("GET", conv_path(cid, path + "?limit=10"))
        assert status == 200, body


async def _stall(port: int, path: str) -> socket.socket:
    """A client that sends one request and then reads nothing."""
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.setblocking(False)
    await asyncio.get_running_loop().sock_connect(stalled, ("127.0.0.1", port))
    stalled.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    return stalled


async def _read_response(connection: socket.socket) -> bytes:
    """One raw response: until its body is complete, or the server hangs up."""
    loop = asyncio.get_running_loop()
    received = bytearray()
    async with asyncio.timeout(30):
        while chunk := await loop.sock_recv(connection, 1 << 20):
            received += chunk
            head, found, body = received.partition(b"\r\n\r\n")
            if found and len(body) >= _content_length(head):
                break
    connection.close()
    return bytes(received)


def _content_length(head: bytes) -> int:
    return int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])


def _parse(response: bytes) -> tuple[int, int, int]:
    """(status, Content-Length, body bytes received) of one raw response."""
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head[9:12]), _content_length(head), len(body)


async def test_a_client_that_never_reads_is_cut_after_the_write_timeout(
    start_node: NodeFactory, backend: dict[str, Any], tmp_path: Path
) -> None:
    seeded = deep_conversation(1000)
    node = await start_seeded(
        start_node, backend, tmp_path, seeded, write_timeout=0.5, response_cache_bytes=0
    )
    budget = node.app[SENDER].budget
    stalled = await _stall(node.settings.port, conv_path(seeded.conversation_id, "/tree"))
    async with asyncio.timeout(60):
        await budget.until(lambda: budget.in_flight > 0)  # the tree is held for it
        await budget.until(lambda: budget.cut == 1 and budget.in_flight == 0)  # and let go
    status, length, received = _parse(await _read_response(stalled))
    assert status == 200 and length > 19_000_000 and received < length  # cut short

    status, _, tree = await fetch(node, conv_path(seeded.conversation_id, "/tree"))
    assert status == 200 and len(tree) == length  # a client that reads gets it all


async def test_a_full_budget_answers_503_until_room_frees(start_node: NodeFactory) -> None:
    node = await start_node(write_timeout=0.2, response_budget_bytes=1_000_000)
    cid, _ = await new_conversation(node)
    leaf = (await chain(node, cid, 299))[-1]["message_id"]  # lineage 300: about 2 MB
    lineage = conv_path(cid, f"/messages/{leaf}/lineage")
    budget = node.app[SENDER].budget
    await budget.reserve(1)  # another large response in flight
    try:
        status, body = await node.request("GET", lineage)
        assert status == 503 and body["error"]["code"] == "unavailable", body
        assert budget.refused == 1
    finally:
        budget.release(1)
    status, _ = await node.request("GET", lineage)
    assert status == 200 and budget.in_flight == 0 and budget.streamed >= 1


class LoggingNode(NodeProcess):
    """A node process whose log lines are kept, to wait for what it reports."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.lines: list[bytes] = []
        self._logged = asyncio.Event()

    async def _drain(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        while line := await self.process.stdout.readline():
            self.lines.append(line)
            self._logged.set()

    async def until_logged(self, count: int, *needles: bytes) -> None:
        while sum(any(n in line for n in needles) for line in self.lines) < count:
            self._logged.clear()
            await self._logged.wait()

    def memory(self, field: str) -> int:
        """VmRSS (now) or VmHWM (peak) of the process, in bytes."""
        assert self.process is not None
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        line = next(row for row in status.splitlines() if row.startswith(field + ":"))
        return int(line.split()[1]) * 1024


BUDGET = 45_000_000  # two 20 MB trees at once
MARGIN = 64_000_000  # transport and kernel buffers, allocator slack, the warm-up's copy


async def test_clients_that_never_read_hold_no_more_than_the_node_budget(
    tmp_path: Path, unused_tcp_port_factory: Callable[[], int]
) -> None:
    """20 clients stop reading a 20 MB tree: before, the node grew by 383 MB."""
    seeded = deep_conversation(1000)
    await seed(Settings(data_dir=tmp_path / "data"), seeded)
    port = unused_tcp_port_factory()
    node = LoggingNode(
        tmp_path / "data", port, "--write-timeout", "1", "--response-cache-bytes", "0",
        "--response-budget-bytes", str(BUDGET),
    )  # fmt: skip
    await node.start()
    tree = conv_path(seeded.conversation_id, "/tree")
    try:
        async with aiohttp.ClientSession() as session, session.get(node.base + tree) as response:
            assert response.status == 200 and len(await response.read()) > 19_000_000
        baseline = node.memory("VmRSS")
        stalled = [await _stall(port, tree) for _ in range(20)]
        async with asyncio.timeout(60):  # each is cut, or refused while the budget is full
            await node.until_logged(20, b"cut a client", b"refused a response")
        grown = node.memory("VmHWM") - baseline
        answers = [_parse(await _read_response(connection)) for connection in stalled]
    finally:
        await node.stop(signal.SIGTERM)
    assert all(status == 503 or received < length for status, length, received in answers)
    assert sum(status == 200 for status, _, _ in answers) >= 1
    assert grown <= BUDGET + MARGIN, f"grew {grown / 1e6:.0f} MB"
