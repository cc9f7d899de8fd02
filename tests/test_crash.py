"""Fault tests with a real node process: SIGKILL under load, then restart."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.backends import wipe_cassandra, wipe_redis
from tests.services import CASSANDRA_NODES, KEYSPACE, REDIS_URL, require

WRITERS = 16
KILL_AFTER_ACKS = 600


class NodeProcess:
    """`canopy serve` in a subprocess; ready once it prints its address."""

    def __init__(
        self, data_dir: Path, port: int, *extra: str, preexec_fn: Callable[[], None] | None = None
    ) -> None:
        self.data_dir, self.port, self.extra = data_dir, port, extra
        self.base = f"http://127.0.0.1:{port}"
        self.process: asyncio.subprocess.Process | None = None
        self.preexec_fn = preexec_fn  # e.g. a lower RLIMIT_NOFILE
        self.output: list[bytes] = []  # every line it printed or logged

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            *self.extra,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            preexec_fn=self.preexec_fn,
        )
        assert self.process.stdout is not None
        seen = []
        async with asyncio.timeout(60):
            while True:
                line = await self.process.stdout.readline()
                assert line, f"node exited before serving: {b''.join(seen)!r}"
                seen.append(line)
                self.output.append(line)
                if b"Running on" in line:
                    break
        asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        while line := await self.process.stdout.readline():
            self.output.append(line)

    async def stop(self, sig: signal.Signals) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        async with asyncio.timeout(60):
            return await self.process.wait()


@pytest.fixture
async def node_process(
    tmp_path: Path, unused_tcp_port_factory: Callable[[], int]
) -> AsyncIterator[Callable[..., NodeProcess]]:
    made: list[NodeProcess] = []

    def make(*extra: str, preexec_fn: Callable[[], None] | None = None) -> NodeProcess:
        made.append(
            NodeProcess(tmp_path / "data", unused_tcp_port_factory(), *extra, preexec_fn=preexec_fn)
        )
        return made[-1]

    yield make
    for node in made:
        if node.process is not None and node.process.returncode is None:
            node.process.kill()
            await node.process.wait()


async def _post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> dict[str, Any]:
    async with session.post(url, json=body) as response:
        assert response.status == 200, await response.text()
        return await response.json()  # type: ignore[no-any-return]


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
        "--scylla-keyspace", KEYSPACE, "--redis-url", REDIS_URL,
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
    assert sum(os.path.getsize(p) for p in journal.iterdir()) == 0

    import sqlite3

    db = sqlite3.connect(node.data_dir / "canopy.db")
    rows = db.execute(
        "SELECT count(*) FROM conversations WHERE conversation_id = ?",
        (conversation["conversation_id"],),
    ).fetchone()
    db.close()
    assert rows == (1,)
