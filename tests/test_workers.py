"""`canopy serve --workers 2` as real processes on loopback: one supervisor, started
once for the module, two workers sharing its port."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from persistence.data_dir import DataDirLock
from tests.processes import NodeProcess

pytestmark = pytest.mark.asyncio(loop_scope="module")

USER = {"X-Canopy-User": "wanda"}
CONVERSATIONS = 24


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("workers") / "data"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def node(data_dir: Path, unused_tcp_port_factory: Any) -> AsyncIterator[NodeProcess]:
    process = NodeProcess(data_dir, unused_tcp_port_factory(), "--workers", "2")
    await process.start()
    yield process
    await kill_all(process)


async def kill_all(process: NodeProcess) -> None:
    """SIGKILL the supervisor and every worker it started (a test's teardown)."""
    if process.process is not None and process.process.returncode is None:
        process.process.kill()
        await process.process.wait()
    for pid in worker_pids(process).values():
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def worker_pids(node: NodeProcess) -> dict[int, int]:
    """Each worker's latest pid, from the supervisor's "worker-K serving (pid P)" lines."""
    pids: dict[int, int] = {}
    for line in node.output:
        found = re.search(rb"worker-(\d+) serving \(pid (\d+)\)", line)
        if found:
            pids[int(found[1])] = int(found[2])
    return pids


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def call(method: str, url: str, body: dict[str, Any] | None = None) -> Any:
    """One request over a connection of its own: the kernel picks the worker."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector, headers=USER) as session,
        session.request(method, url, json=body) as response,
    ):
        assert response.status == 200, f"{method} {url}: {await response.text()}"
        return await response.json()


async def append(base: str, cid: str, parent: str, text: str) -> dict[str, Any]:
    body = {"parent_message_id": parent, "role": "human",
            "content": {"type": "text", "text": text}, "created_by": "wanda"}  # fmt: skip
    result: dict[str, Any] = await call("POST", f"{base}/api/v1/conversations/{cid}/messages", body)
    return result


def stored_in(shard: Path) -> set[str]:
    database = shard / "canopy.db"
    if not database.exists():
        return set()
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        return {row[0] for row in db.execute("SELECT conversation_id FROM conversations")}


class Written:
    """What the module's first test wrote: conversation id -> its messages' ids in order."""

    chains: dict[str, list[str]] = {}


async def test_conversations_written_through_the_shared_port_answer_from_any_connection(
    node: NodeProcess, data_dir: Path
) -> None:
    base = node.base
    created = [
        await call(
            "POST", f"{base}/api/v1/conversations", {"title": f"t{i}", "created_by": "wanda"}
        )
        for i in range(CONVERSATIONS)
    ]
    for conversation in created:
        cid = conversation["conversation_id"]
        tree = await call("GET", f"{base}/api/v1/conversations/{cid}/tree")
        chain = [tree["messages"][0]["message_id"]]
        for i in range(3):
            chain.append((await append(base, cid, chain[-1], f"{cid} {i}"))["message_id"])
        Written.chains[cid] = chain
    for cid, chain in Written.chains.items():
        tree = await call("GET", f"{base}/api/v1/conversations/{cid}/tree")
        assert [m["message_id"] for m in tree["messages"]] == chain
        lineage = await call(
            "GET", f"{base}/api/v1/conversations/{cid}/messages/{chain[-1]}/lineage"
        )
        assert [m["message_id"] for m in lineage] == chain

    shards = [data_dir / "worker-0", data_dir / "worker-1"]
    await eventually(lambda: set(Written.chains) <= stored_in(shards[0]) | stored_in(shards[1]))
    first, second = stored_in(shards[0]), stored_in(shards[1])
    assert not first & second, "a conversation is stored in both shards"
    assert first and second, "placement put every conversation on one worker"


async def test_a_client_sending_the_hop_header_cannot_pick_the_worker(node: NodeProcess) -> None:
    """The hop header marks a request a sibling relayed over its Unix socket; sent by a
    client to the shared port it must not make the worker that got the connection
    serve another's conversation (its shard does not have it: a 404, or with a shared
    store a second actor). Over fresh connections about half land on the non-owner."""
    assert Written.chains, "the module's first test writes the conversations"
    hop = {**USER, "X-Canopy-Hop": "1"}
    for cid, chain in list(Written.chains.items())[:12]:
        for _ in range(3):
            connector = aiohttp.TCPConnector(force_close=True)
            async with (
                aiohttp.ClientSession(connector=connector, headers=hop) as session,
                session.get(f"{node.base}/api/v1/conversations/{cid}/tree") as response,
            ):
                assert response.status == 200, await response.text()
                tree = await response.json()
            assert [m["message_id"] for m in tree["messages"]] == chain


async def test_the_sidebar_lists_every_shard_in_order_right_after_writing(
    node: NodeProcess,
) -> None:
    base = node.base
    assert Written.chains, "runs after the first test"
    # touch them in a known order: the last one touched is the newest
    order = list(Written.chains)[::-1]
    for cid in order[::-1]:
        Written.chains[cid].append(
            (await append(base, cid, Written.chains[cid][-1], "again"))["message_id"]
        )
    listed: list[str] = []
    cursor: str | None = None
    while True:
        query = "?limit=5" + (f"&cursor={cursor}" if cursor else "")
        page = await call("GET", f"{base}/api/v1/conversations{query}")
        listed += [item["conversation_id"] for item in page["conversations"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert listed == order
    ids = await call("GET", f"{base}/api/v1/users/wanda/conversations?limit=100")
    assert ids == order


async def test_a_killed_worker_is_restarted_and_loses_nothing_acknowledged(
    node: NodeProcess, data_dir: Path
) -> None:
    base = node.base
    victim = 1
    pid = worker_pids(node)[victim]
    mine = [cid for cid in Written.chains if cid in stored_in(data_dir / "worker-1")]
    assert mine
    for cid in mine:  # acknowledged, then the owner dies before it could flush
        Written.chains[cid].append(
            (await append(base, cid, Written.chains[cid][-1], "last"))["message_id"]
        )
    os.kill(pid, signal.SIGKILL)
    await eventually(lambda: worker_pids(node)[victim] != pid)

    async def served() -> bool:
        try:
            await call("GET", f"{base}/api/v1/conversations/{mine[0]}")
        except AssertionError:
            return False  # 503 while the worker restarts
        return True

    await until_async(served)
    for cid in mine:
        tree = await call("GET", f"{base}/api/v1/conversations/{cid}/tree")
        assert [m["message_id"] for m in tree["messages"]] == Written.chains[cid]
    assert b"exited with -9: starting it again" in b"".join(node.output)


async def until_async(condition: Any, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not await condition():
            await asyncio.sleep(0.05)  # polling external processes, bounded


async def eventually(condition: Any, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.05)  # polling external processes, bounded


async def test_a_second_supervisor_or_a_single_node_cannot_take_the_data_dir(
    node: NodeProcess, data_dir: Path, unused_tcp_port_factory: Any
) -> None:
    for workers in ("2", "1"):
        other = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", "serve", "--workers", workers,
            "--data-dir", str(data_dir), "--port", str(unused_tcp_port_factory()),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await other.communicate()
        assert other.returncode == 2, output
        assert b"in use by another canopy process" in output or b"worker shards" in output


async def test_sigterm_stops_the_supervisor_and_every_worker_cleanly(node: NodeProcess) -> None:
    pids = worker_pids(node)
    assert await node.stop(signal.SIGTERM) == 0
    assert not [pid for pid in pids.values() if alive(pid)]


async def test_the_supervisor_exits_non_zero_when_a_worker_cannot_start(
    tmp_path: Path, unused_tcp_port_factory: Any
) -> None:
    data = tmp_path / "data"
    with DataDirLock(data / "worker-1"):  # worker 1 finds its shard in use
        supervisor = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", "serve", "--workers", "2",
            "--data-dir", str(data), "--port", str(unused_tcp_port_factory()),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await supervisor.communicate()
    assert supervisor.returncode == 1, output
    assert b"worker-1 exited with 2 before serving" in output
    assert b"Running on" not in output
