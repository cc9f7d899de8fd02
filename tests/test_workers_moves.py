"""`canopy serve --workers 2`: a keep-alive connection whose requests keep going to the
other worker's conversation moves to that worker (gateway/migration.py), and goes on
answering on the same socket; one whose requests alternate, or whose bodies cannot
move whole, stays and is relayed. Real processes on loopback, one raw client socket."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from gateway.migration import MOVE_AFTER
from tests.gateway.raw_http import read_response
from tests.processes import NodeProcess
from tests.test_workers import kill_all

pytestmark = pytest.mark.asyncio(loop_scope="module")

ADMIN = "workers-moves-admin-token"
USER = "X-Canopy-User: wanda"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def node(tmp_path_factory: pytest.TempPathFactory, unused_tcp_port_factory: Any
               ) -> AsyncIterator[NodeProcess]:  # fmt: skip
    data_dir: Path = tmp_path_factory.mktemp("moves") / "data"
    process = NodeProcess(
        data_dir, unused_tcp_port_factory(), "--workers", "2", "--admin-token", ADMIN
    )
    await process.start()
    yield process
    await kill_all(process)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def two(node: NodeProcess) -> dict[str, tuple[str, str]]:
    """A conversation on each worker: worker's node name -> (conversation, its root)."""
    found: dict[str, tuple[str, str]] = {}
    for _ in range(64):  # each over a fresh connection: any worker may take it
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session,
            session.post(f"{node.base}/api/v1/conversations", headers={"X-Canopy-User": "wanda"},
                         json={"title": "moves", "created_by": "wanda"}) as response,
        ):  # fmt: skip
            assert response.status == 200, await response.text()
            owner, cid = (
                response.headers["X-Canopy-Node"],
                (await response.json())["conversation_id"],
            )
        if owner in found:
            continue
        async with Client(node) as client:
            tree = await client.call("GET", f"/api/v1/conversations/{cid}/tree")
        found[owner] = (cid, tree["messages"][0]["message_id"])
        if len(found) == 2:
            return found
    raise AssertionError(f"every conversation was made on one worker: {found}")


async def workers_stats(node: NodeProcess) -> dict[str, int]:
    """The two workers' handover and move counters, summed."""
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {ADMIN}"}) as session,
        session.get(f"{node.base}/admin/nodes") as response,
    ):
        assert response.status == 200, await response.text()
        nodes = (await response.json())["nodes"]
    assert len(nodes) == 2
    totals: dict[str, int] = {}
    for one in nodes:
        for key in ("handed_over", "connections_moved", "connections_adopted"):
            totals[key] = totals.get(key, 0) + one["stats"]["workers"][key]
    return totals


class Client:
    """One keep-alive TCP connection, one request at a time."""

    def __init__(self, node: NodeProcess) -> None:
        self.port = node.port
        self.reader: asyncio.StreamReader
        self.writer: asyncio.StreamWriter

    async def __aenter__(self) -> Client:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.writer.close()

    async def call(self, method: str, path: str, body: Any = None, chunked: bool = False) -> Any:
        lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{self.port}", USER]
        data = b""
        if body is not None:
            raw = json.dumps(body).encode()
            lines.append("Content-Type: application/json")
            if chunked:
                lines.append("Transfer-Encoding: chunked")
                data = b"%x\r\n%s\r\n0\r\n\r\n" % (len(raw), raw)
            else:
                lines.append(f"Content-Length: {len(raw)}")
                data = raw
        self.writer.write("\r\n".join([*lines, "", ""]).encode() + data)
        await self.writer.drain()
        response = await read_response(self.reader)
        assert response.status == 200, response.body
        assert response.headers.get("connection", "").lower() != "close"
        return response.json()

    async def append(self, cid: str, parent: str, text: str, chunked: bool = False) -> str:
        body = {"parent_message_id": parent, "role": "user", "created_by": "wanda",
                "content": {"type": "text", "text": text}}  # fmt: skip
        answer = await self.call("POST", f"/api/v1/conversations/{cid}/messages", body, chunked)
        return str(answer["message_id"])

    async def texts(self, cid: str) -> list[str]:
        tree = await self.call("GET", f"/api/v1/conversations/{cid}/tree")
        return [m["content"]["text"] for m in tree["messages"] if m["role"] == "user"]


async def test_a_connection_writing_to_the_other_workers_conversation_moves_there(
    node: NodeProcess, two: dict[str, tuple[str, str]]
) -> None:
    (first, first_root), (second, second_root) = two.values()
    before = await workers_stats(node)
    runs = 3 * MOVE_AFTER
    async with Client(node) as client:
        # Whichever worker took the connection, one of the two runs is the other's:
        # relayed MOVE_AFTER - 1 times, then the connection moves and the rest is direct.
        for _ in range(runs):
            await client.call("GET", f"/api/v1/conversations/{first}/messages/{first_root}")
        parent = second_root
        for k in range(runs):  # appends: the request that moves carries its body
            parent = await client.append(second, parent, f"moved {k}")
        assert await client.texts(second) == [f"moved {k}" for k in range(runs)]
    after = await workers_stats(node)
    moves = after["connections_moved"] - before["connections_moved"]
    assert moves in (1, 2), after
    assert after["connections_adopted"] - before["connections_adopted"] == moves
    assert after["handed_over"] - before["handed_over"] == moves * (MOVE_AFTER - 1)


async def test_a_connection_alternating_between_the_workers_stays_and_is_relayed(
    node: NodeProcess, two: dict[str, tuple[str, str]]
) -> None:
    (first, first_root), (second, second_root) = two.values()
    before = await workers_stats(node)
    async with Client(node) as client:
        for _ in range(2 * MOVE_AFTER):
            await client.call("GET", f"/api/v1/conversations/{first}/messages/{first_root}")
            await client.call("GET", f"/api/v1/conversations/{second}/messages/{second_root}")
    after = await workers_stats(node)
    assert after["connections_moved"] == before["connections_moved"]
    assert after["handed_over"] - before["handed_over"] == 2 * MOVE_AFTER


async def test_a_chunked_body_is_relayed_rather_than_moved(
    node: NodeProcess, two: dict[str, tuple[str, str]]
) -> None:
    """Its bytes reach the handler de-chunked: they could not be replayed as they came."""
    before = await workers_stats(node)
    runs = 2 * MOVE_AFTER
    async with Client(node) as client:
        for cid, root in two.values():
            parent = root
            for k in range(runs):
                parent = await client.append(cid, parent, f"chunked {k}", chunked=True)
        for cid, _ in two.values():
            assert (await client.texts(cid))[-runs:] == [f"chunked {k}" for k in range(runs)]
    after = await workers_stats(node)
    assert after["connections_moved"] == before["connections_moved"]
    assert after["handed_over"] - before["handed_over"] >= runs


async def test_a_connection_pipelining_part_of_its_next_request_stays_and_loses_nothing(
    node: NodeProcess, two: dict[str, tuple[str, str]]
) -> None:
    """Each write carries the rest of one request and the start of the next: that start
    is in the receiving worker's parser, so the connection cannot move with it. Before
    the check, it moved after MOVE_AFTER requests, and the owner read the rest of the
    next request as a request of its own (a 400)."""
    before = await workers_stats(node)
    requests = []
    for cid, root in two.values():  # whichever worker took it, one run is the other's
        path = f"/api/v1/conversations/{cid}/messages/{root}"
        line = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{node.port}\r\n{USER}\r\n\r\n"
        requests += [line.encode()] * (2 * MOVE_AFTER)
    requests.append(requests[0])  # the last goes alone, so it must not be the other's 8th
    cut = 20  # the part of a request sent with the one before it
    async with Client(node) as client:
        for k, request in enumerate(requests):
            ahead = requests[k + 1][:cut] if k + 1 < len(requests) else b""
            client.writer.write((request if k == 0 else request[cut:]) + ahead)
            await client.writer.drain()
            response = await read_response(client.reader)
            assert response.status == 200, (k, response.body)
    after = await workers_stats(node)
    assert after["connections_moved"] == before["connections_moved"]
    assert after["handed_over"] - before["handed_over"] in (2 * MOVE_AFTER, 2 * MOVE_AFTER + 1)
