"""Outages of the real servers while clients write: nothing acknowledged is lost."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.keys import FLUSHER
from persistence.scylla import ScyllaStore
from tests.backends import reset_admin_session, scylla
from tests.conftest import Node, NodeFactory

# Writes go on through the outage for at least this long (the flusher's writes fail,
# back off and fail again) and until this many were acknowledged, within a cap.
OUTAGE_SECONDS, OUTAGE_WRITES, OUTAGE_CAP_SECONDS = 10, 150, 30
SERVICES = Path(__file__).resolve().parents[1] / "scripts" / "services.sh"


async def services(*args: str) -> None:
    process = await asyncio.create_subprocess_exec(str(SERVICES), *args)
    assert await process.wait() == 0, f"services.sh {' '.join(args)} failed"
    if args[0] == "start":
        reset_admin_session()  # its connections died with the old process


async def text_message(node: Node, cid: str, parent: str, text: str) -> tuple[int, Any]:
    body = {
        "parent_message_id": parent,
        "role": "human",
        "content": {"type": "text", "text": text},
        "created_by": "outage",
    }
    return await node.request("POST", f"/api/v1/conversations/{cid}/messages", json=body)


async def new_conversation(node: Node) -> tuple[str, str]:
    status, conversation = await node.request(
        "POST", "/api/v1/conversations", json={"title": "o", "created_by": "outage"}
    )
    assert status == 200
    cid = conversation["conversation_id"]
    _, tree = await node.request("GET", f"/api/v1/conversations/{cid}/tree")
    return cid, tree["messages"][0]["message_id"]


@pytest.fixture
async def cassandra_outage() -> AsyncIterator[Callable[[], Any]]:
    """Stops Cassandra when called; it is always running again after the test."""
    stopped = False

    async def stop() -> None:
        nonlocal stopped
        stopped = True
        await services("stop", "cassandra")

    yield stop
    if stopped:
        await services("start", "cassandra")


@pytest.mark.parametrize("backend", ["cassandra+redis"], indirect=True)
async def test_cassandra_outage_loses_no_acknowledged_write(
    start_node: NodeFactory, cassandra_outage: Callable[[], Any]
) -> None:
    node = await start_node(flush_interval=0.05)
    chats = [await new_conversation(node) for _ in range(4)]
    acked: dict[str, dict[str, str]] = {cid: {} for cid, _ in chats}
    leaves = dict(chats)

    await cassandra_outage()
    started = time.monotonic()
    for i in range(100_000):  # bounded in count and in time
        elapsed = time.monotonic() - started
        if elapsed >= OUTAGE_CAP_SECONDS or (elapsed >= OUTAGE_SECONDS and i >= OUTAGE_WRITES):
            break
        cid = chats[i % len(chats)][0]
        status, message = await text_message(node, cid, leaves[cid], f"during outage {i}")
        assert status == 200, message  # acknowledged from the journal
        acked[cid][message["message_id"]] = f"during outage {i}"
        leaves[cid] = message["message_id"]
        status, lineage = await node.request(
            "GET", f"/api/v1/conversations/{cid}/messages/{leaves[cid]}/lineage"
        )
        assert status == 200 and lineage[-1]["message_id"] == leaves[cid]  # hot reads work
        await asyncio.sleep(0.05)  # pacing the writers, not synchronizing
    assert sum(map(len, acked.values())) > 100
    assert node.app[FLUSHER].unflushed_bytes > 0  # the store really was unreachable

    await services("start", "cassandra")
    assert await node.app[FLUSHER].flush_all(retries=40)

    async with ScyllaStore(scylla()) as store:
        for cid, messages in acked.items():
            snapshot = await store.load(cid)
            assert snapshot is not None
            stored = {m.message_id: m.content for m in snapshot.messages}
            for mid, text in messages.items():
                assert stored[mid] == b'{"type":"text","text":"%s"}' % text.encode()


@pytest.fixture
async def private_redis(
    tmp_path: Path, unused_tcp_port_factory: Callable[[], int]
) -> AsyncIterator[tuple[str, asyncio.subprocess.Process]]:
    """A throwaway Redis server the test may kill: (url, process)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed; run `make services`", pytrace=False)
    port = unused_tcp_port_factory()
    process = await asyncio.create_subprocess_exec(
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--dir",
        str(tmp_path),
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    async with asyncio.timeout(30):
        while b"Ready to accept connections" not in await process.stdout.readline():
            pass
    yield f"redis://127.0.0.1:{port}/0", process
    if process.returncode is None:
        process.kill()
        await process.wait()


@pytest.mark.parametrize("backend", ["cassandra+redis"], indirect=True)
async def test_redis_outage_fails_writes_fast_and_changes_nothing(
    start_node: NodeFactory, private_redis: tuple[str, asyncio.subprocess.Process]
) -> None:
    url, redis_process = private_redis
    node = await start_node(redis_url=url)
    assert (node.settings.journal, node.settings.redis_url) == ("redis", url)
    cid, root = await new_conversation(node)
    status, first = await text_message(node, cid, root, "before")
    assert status == 200
    _, before = await node.request("GET", f"/api/v1/conversations/{cid}/tree")

    redis_process.kill()
    await redis_process.wait()
    async with node.session.post(
        f"{node.base}/api/v1/conversations/{cid}/messages",
        json={
            "parent_message_id": first["message_id"],
            "role": "human",
            "content": {"type": "text", "text": "after"},
            "created_by": "outage",
        },
    ) as response:
        assert response.status == 503
        assert "Retry-After" in response.headers
        assert (await response.json())["error"]["code"] == "unavailable"
    _, after = await node.request("GET", f"/api/v1/conversations/{cid}/tree")
    assert after == before
