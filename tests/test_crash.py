"""Fault tests with a real node process: SIGKILL under load, then restart."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable

import aiohttp
import pytest

from persistence.journal_file import SEGMENT_MAGIC
from tests.backends import keyspace, wipe_cassandra, wipe_redis
from tests.processes import NodeProcess
from tests.processes import post_json as _post
from tests.services import CASSANDRA_NODES, REDIS_URL, require

WRITERS = 16
KILL_AFTER_ACKS = 600


async def _write_until_killed(
    session: aiohttp.ClientSession,
    base: str,
    acked: dict[tuple[str, str], str],
    enough: asyncio.Event,
    writer: int,
) -> None:
    conversation = await _post(
        session, f"{base}/api/v1/conversations", {"title": f"w{writer}", "created_by": "crash"}
    )
    cid = conversation["conversation_id"]
    acked[(cid, "")] = ""
    async with session.get(f"{base}/api/v1/conversations/{cid}/tree") as response:
        parent = (await response.json())["messages"][0]["message_id"]
    for i in range(10_000):
        text = f"writer {writer} message {i} " + "x" * (i % 50)
        body = {
            "parent_message_id": parent,
            "role": "human",
            "content": {"type": "text", "text": text},
            "created_by": "crash",
        }
        try:
            message = await _post(session, f"{base}/api/v1/conversations/{cid}/messages", body)
        except (aiohttp.ClientError, AssertionError):
            return  # the node died mid-request: this write was never acknowledged
        acked[(cid, message["message_id"])] = text
        parent = message["message_id"]
        if len(acked) >= KILL_AFTER_ACKS:
            enough.set()


def server_backends() -> tuple[str, ...]:
    """Command-line options for Cassandra + Redis, both emptied for this test."""
    require("cassandra")
    require("redis")
    wipe_cassandra()
    wipe_redis()
    return (
        "--store", "scylla", "--journal", "redis", "--scylla-nodes", CASSANDRA_NODES,
        "--scylla-keyspace", keyspace(), "--redis-url", REDIS_URL,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("durability", "backends"),
    [("journal", "embedded"), ("store", "embedded"), ("journal", "cassandra+redis")],
)
async def test_sigkill_under_16_writers_loses_no_acknowledged_message(
    node_process: Callable[..., NodeProcess], durability: str, backends: str
) -> None:
    options = server_backends() if backends == "cassandra+redis" else ()
    first = node_process("--durability", durability, *options)
    await first.start()
    acked: dict[tuple[str, str], str] = {}
    enough = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        writers = [
            asyncio.create_task(_write_until_killed(session, first.base, acked, enough, w))
            for w in range(WRITERS)
        ]
        async with asyncio.timeout(120):
            await enough.wait()
        assert await first.stop(signal.SIGKILL) == -signal.SIGKILL
        await asyncio.gather(*writers)

        second = node_process(*options)
        await second.start()
        conversations = {cid for cid, _ in acked}
        assert len(conversations) == WRITERS
        for cid in conversations:
            async with session.get(f"{second.base}/api/v1/conversations/{cid}/tree") as response:
                assert response.status == 200
                tree = await response.json()
            stored = {m["message_id"]: m["content"] for m in tree["messages"]}
            for (acked_cid, mid), text in acked.items():
                if acked_cid == cid and mid:
                    assert stored.get(mid) == {"type": "text", "text": text}, (cid, mid)
        assert await second.stop(signal.SIGTERM) == 0


async def test_sigterm_flushes_everything_and_trims_the_journal(
    node_process: Callable[..., NodeProcess],
) -> None:
    node = node_process()
    await node.start()
    async with aiohttp.ClientSession() as session:
        conversation = await _post(
            session, f"{node.base}/api/v1/conversations", {"title": "t", "created_by": "u"}
        )
    assert await node.stop(signal.SIGTERM) == 0
    journal = node.data_dir / "journal"
    assert all(os.path.getsize(p) == len(SEGMENT_MAGIC) for p in journal.iterdir())

    import sqlite3

    db = sqlite3.connect(node.data_dir / "canopy.db")
    rows = db.execute(
        "SELECT count(*) FROM conversations WHERE conversation_id = ?",
        (conversation["conversation_id"],),
    ).fetchone()
    db.close()
    assert rows == (1,)


class Acked:
    """What one conversation's writer was told succeeded: messages, branches, shares."""

    def __init__(self, cid: str) -> None:
        self.cid = cid
        self.messages: dict[str, str] = {}
        self.branches: dict[str, str] = {}  # branch id -> leaf
        self.shares: set[str] = set()


async def _mixed_writes(
    session: aiohttp.ClientSession, base: str, acked: Acked, parent: str, enough: asyncio.Event
) -> None:
    """Appends, with a branch every 3rd and a share every 5th, until the node dies."""
    url = f"{base}/api/v1/conversations/{acked.cid}"
    for i in range(10_000):
        text = f"{acked.cid} {len(acked.messages)} {i}"
        body = {"parent_message_id": parent, "role": "human", "created_by": "crash",
                "content": {"type": "text", "text": text}}  # fmt: skip
        try:
            parent = (await _post(session, f"{url}/messages", body))["message_id"]
            acked.messages[parent] = text
            if i % 3 == 0:
                branch = {"branch_name": f"b{i}", "leaf_message_id": parent, "created_by": "c"}
                acked.branches[(await _post(session, f"{url}/branches", branch))["branch_id"]] = (
                    parent
                )
            if i % 5 == 0:
                user = f"user-{len(acked.shares)}-{i}"
                share = {"shared_with": user, "permission": "read", "shared_by": "crash"}
                await _post(session, f"{url}/share", share)
                acked.shares.add(user)
        except (aiohttp.ClientError, AssertionError):
            return  # the node died mid-request: that write was never acknowledged
        if i >= 20:
            enough.set()


async def _check(session: aiohttp.ClientSession, base: str, acked: Acked) -> str:
    """Everything acknowledged is served; the newest acknowledged message id."""
    url = f"{base}/api/v1/conversations/{acked.cid}"
    async with session.get(f"{url}/tree") as response:
        assert response.status == 200
        stored = {m["message_id"]: m["content"] for m in (await response.json())["messages"]}
    for mid, text in acked.messages.items():
        assert stored.get(mid) == {"type": "text", "text": text}, mid
    async with session.get(f"{url}/branches") as response:
        branches = {b["branch_id"]: b["leaf_message_id"] for b in await response.json()}
    assert acked.branches.items() <= branches.items()
    async with session.get(f"{url}/shares") as response:
        assert acked.shares <= {s["shared_with"] for s in await response.json()}
    return list(acked.messages)[-1]


async def test_three_sigkills_under_mixed_writes_lose_nothing_acknowledged(
    node_process: Callable[..., NodeProcess],
) -> None:
    async with aiohttp.ClientSession() as session:
        node = node_process()
        await node.start()
        chats = []
        for w in range(6):
            created = await _post(session, f"{node.base}/api/v1/conversations",
                                  {"title": f"m{w}", "created_by": "crash"})  # fmt: skip
            async with session.get(f"{node.base}/api/v1/conversations/"
                                   f"{created['conversation_id']}/tree") as response:  # fmt: skip
                root = (await response.json())["messages"][0]["message_id"]
            chats.append((Acked(created["conversation_id"]), root))
        for _ in range(3):
            enough = [asyncio.Event() for _ in chats]
            writers = [
                asyncio.create_task(_mixed_writes(session, node.base, acked, leaf, done))
                for (acked, leaf), done in zip(chats, enough, strict=True)
            ]
            async with asyncio.timeout(120):
                await asyncio.gather(*(done.wait() for done in enough))
            assert await node.stop(signal.SIGKILL) == -signal.SIGKILL
            await asyncio.gather(*writers)
            node = node_process()
            await node.start()
            chats = [(acked, await _check(session, node.base, acked)) for acked, _ in chats]
        assert await node.stop(signal.SIGTERM) == 0
