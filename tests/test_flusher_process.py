"""`canopy serve --flusher-process` with real processes: the flusher or the serving node
killed under load loses nothing acknowledged, a second flusher refuses, a stopped flusher
gives backpressure. Cassandra + Redis, as in production."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp

from persistence.journal_redis import own_pool_journal
from persistence.records import Snapshot
from persistence.redis_pool import RedisSettings
from persistence.scylla import ScyllaStore
from tests.backends import scylla
from tests.processes import NodeProcess
from tests.processes import post_json as _post
from tests.services import REDIS_URL
from tests.test_crash import server_backends

WRITERS = 8
READY = re.compile(rb"flusher for node \S+ ready \(pid (\d+)\)")


async def _eventually(
    condition: Callable[[], object],
    seconds: float = 60.0,
    node: NodeProcess | None = None,
    why: Callable[[], str] | None = None,
) -> None:
    """Poll what another process does, within a deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        last = b"".join(node.output[-30:]).decode(errors="replace") if node else ""
        state = why() if why else ""
        assert loop.time() < deadline, f"never got there ({state}); its output:\n{last}"
        await asyncio.sleep(0.05)


async def _flusher_ready(node: NodeProcess, nth: int) -> int:
    """The pid of the `nth` flusher process the node started, once it is ready."""

    def ready() -> list[int]:
        return [int(m.group(1)) for line in node.output if (m := READY.search(line))]

    await _eventually(lambda: len(ready()) >= nth)
    return ready()[nth - 1]


class Writers:
    """Appenders to their own conversations, each remembering what was acknowledged."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session, self.base = session, base
        self.acked: dict[str, dict[str, str]] = {}  # conversation -> message id -> text
        self.waiting_for = ""  # what the last look at the store and journal found missing
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    def __len__(self) -> int:
        return sum(len(messages) for messages in self.acked.values())

    async def start(self, count: int) -> None:
        for writer in range(count):
            created = await _post(self.session, f"{self.base}/api/v1/conversations",
                                  {"title": f"w{writer}", "created_by": "fp"})  # fmt: skip
            cid = created["conversation_id"]
            async with self.session.get(f"{self.base}/api/v1/conversations/{cid}/tree") as got:
                root = (await got.json())["messages"][0]["message_id"]
            self.acked[cid] = {}
            self.tasks.append(asyncio.create_task(self._write(cid, root)))

    async def _write(self, cid: str, parent: str) -> None:
        url = f"{self.base}/api/v1/conversations/{cid}/messages"
        while not self.stop.is_set():
            text = f"{cid} {len(self.acked[cid])}"
            body = {"parent_message_id": parent, "role": "human", "created_by": "fp",
                    "content": {"type": "text", "text": text}}  # fmt: skip
            try:
                parent = (await _post(self.session, url, body))["message_id"]
            except (aiohttp.ClientError, AssertionError):
                return  # the node died mid-request: never acknowledged
            self.acked[cid][parent] = text

    async def until(self, acks: int) -> None:
        await _eventually(lambda: len(self) >= acks or all(t.done() for t in self.tasks))
        assert len(self) >= acks

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks)


async def _stored(store: ScyllaStore, writers: Writers) -> dict[str, Snapshot]:
    snapshots = {}
    for cid in writers.acked:
        snapshot = await store.load(cid)
        assert snapshot is not None
        snapshots[cid] = snapshot
    return snapshots


async def _all_stored_and_trimmed(store: ScyllaStore, writers: Writers) -> bool:
    async with own_pool_journal(RedisSettings(REDIS_URL, timeout=10.0)) as journal:  # a probe
        journaled = await journal.journaled()
        if journaled:
            writers.waiting_for = f"still journaled: {journaled}"
            return False
    for cid, snapshot in (await _stored(store, writers)).items():
        missing = writers.acked[cid].keys() - {m.message_id for m in snapshot.messages}
        if missing:
            writers.waiting_for = f"{cid}: {len(missing)} acknowledged messages not stored"
            return False
    return True


async def test_flusher_killed_under_load_is_restarted_and_stores_every_acked_append(
    node_process: Callable[..., NodeProcess],
) -> None:
    node = node_process("--flusher-process", *server_backends())
    await node.start()
    first = await _flusher_ready(node, 1)
    async with aiohttp.ClientSession() as session:
        writers = Writers(session, node.base)
        await writers.start(WRITERS)
        await writers.until(300)
        os.kill(first, signal.SIGKILL)
        await writers.until(len(writers) + 300)  # acknowledged while it was dead or new
        assert await _flusher_ready(node, 2) != first
        await writers.finish()
        async with ScyllaStore(scylla()) as store:
            await _eventually(lambda: _all_stored_and_trimmed(store, writers), node=node,
                              why=lambda: writers.waiting_for)  # fmt: skip
            for cid, snapshot in (await _stored(store, writers)).items():
                assert snapshot.conversation.message_count == len(snapshot.messages), cid
    assert await node.stop(signal.SIGTERM) == 0
    assert any(b"flusher process %d exited with -9" % first in line for line in node.output)


async def test_a_flusher_stopped_by_someone_else_is_started_again_with_a_warning(
    node_process: Callable[..., NodeProcess],
) -> None:
    """SIGTERM to the whole process group (a service manager's stop) can reach the child
    first: it drains and exits 0. Not an error, and the node (if it goes on) starts
    another one."""
    node = node_process("--flusher-process", *server_backends())
    await node.start()
    first = await _flusher_ready(node, 1)
    os.kill(first, signal.SIGTERM)
    assert await _flusher_ready(node, 2) != first
    assert await node.stop(signal.SIGTERM) == 0
    [line] = [line for line in node.output if b"flusher process %d exited with 0" % first in line]
    assert b" WARNING " in line and b" ERROR " not in line


async def test_serving_node_killed_under_load_loses_nothing_and_stores_it_once(
    node_process: Callable[..., NodeProcess],
) -> None:
    options = ("--flusher-process", *server_backends())
    first = node_process(*options)
    await first.start()
    flusher = await _flusher_ready(first, 1)
    async with aiohttp.ClientSession() as session:
        writers = Writers(session, first.base)
        await writers.start(WRITERS)
        await writers.until(600)
        assert first.process is not None
        first.process.send_signal(signal.SIGKILL)
        await writers.finish()
        # Its lifeline closed, the flusher drains and exits (until then it holds the
        # node's output pipe open: the node's wait() would wait for it).
        await _eventually(lambda: not _alive(flusher), node=first)
        async with asyncio.timeout(60):
            assert await first.process.wait() == -signal.SIGKILL

        second = node_process(*options)
        await second.start()
        served: dict[str, set[str]] = {}
        for cid, messages in writers.acked.items():
            async with session.get(f"{second.base}/api/v1/conversations/{cid}/tree") as got:
                assert got.status == 200
                tree = {m["message_id"]: m["content"] for m in (await got.json())["messages"]}
            for mid, text in messages.items():
                assert tree.get(mid) == {"type": "text", "text": text}, (cid, mid)
            served[cid] = set(tree)
        async with ScyllaStore(scylla()) as store:
            await _eventually(lambda: _all_stored_and_trimmed(store, writers), node=second,
                              why=lambda: writers.waiting_for)  # fmt: skip
            for cid, snapshot in (await _stored(store, writers)).items():
                ids = [m.message_id for m in snapshot.messages]
                assert len(ids) == len(set(ids)) == snapshot.conversation.message_count, cid
                assert set(ids) == served[cid], cid  # what was served, each message once
    assert await second.stop(signal.SIGTERM) == 0


async def test_a_second_flusher_for_the_node_refuses(
    node_process: Callable[..., NodeProcess],
) -> None:
    options = server_backends()
    node = node_process("--flusher-process", *options)
    await node.start()
    await _flusher_ready(node, 1)
    second = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "flusher", "--port", str(node.port), *options,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(60):
        _, err = await second.communicate()
    assert second.returncode == 2
    assert b"another flusher runs for node" in err
    assert await node.stop(signal.SIGTERM) == 0


async def test_a_stopped_flusher_gives_backpressure_then_writes_resume(
    node_process: Callable[..., NodeProcess],
) -> None:
    node = node_process("--flusher-process", "--max-unflushed-bytes", "1", *server_backends())
    await node.start()
    flusher = await _flusher_ready(node, 1)
    async with aiohttp.ClientSession() as session:
        conversation = await _post(session, f"{node.base}/api/v1/conversations",
                                   {"title": "bp", "created_by": "fp"})  # fmt: skip
        url = f"{node.base}/api/v1/conversations/{conversation['conversation_id']}"
        async with session.get(f"{url}/tree") as got:
            root = (await got.json())["messages"][0]["message_id"]
        body = {"parent_message_id": root, "role": "human", "created_by": "fp",
                "content": {"type": "text", "text": "hello"}}  # fmt: skip

        async def status() -> int:
            async with session.post(f"{url}/messages", json=body) as response:
                if response.status == 503:
                    error = (await response.json())["error"]
                    assert error["code"] == "unavailable" and response.headers["Retry-After"]
                return response.status

        await _eventually(lambda: _accepted(status()))  # the creation is stored
        os.kill(flusher, signal.SIGSTOP)
        try:
            # Nothing can be stored now: after at most one more acknowledged append the
            # unflushed bytes stay over the limit.
            assert 503 in [await status(), await status()]
            assert await status() == 503
        finally:
            os.kill(flusher, signal.SIGCONT)
        await _eventually(lambda: _accepted(status()))
    assert await node.stop(signal.SIGTERM) == 0


async def _accepted(status: Coroutine[Any, Any, int]) -> bool:
    return await status == 200


def _alive(pid: int) -> bool:
    """Running (a zombie nobody reaped yet is not: it was reparented, its parent died)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _nice(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[16])  # field 19: nice


async def test_on_cassandra_and_redis_the_default_writes_behind_from_a_niced_child(
    node_process: Callable[..., NodeProcess],
) -> None:
    node = node_process(*server_backends())  # no --flusher-process: auto
    await node.start()
    flusher = await _flusher_ready(node, 1)
    assert node.process is not None
    # Every thread of it, the driver's started after the nice included.
    assert _nice(flusher) == min(19, _nice(node.process.pid) + 10)
    for task in os.listdir(f"/proc/{flusher}/task"):
        assert _nice(int(task)) == _nice(flusher), task
    async with aiohttp.ClientSession() as session:
        created = await _post(session, f"{node.base}/api/v1/conversations",
                              {"title": "default", "created_by": "fp"})  # fmt: skip
    cid = created["conversation_id"]
    async with ScyllaStore(scylla()) as store:
        await _eventually(lambda: _stored_one(store, cid), node=node)
    assert await node.stop(signal.SIGTERM) == 0


async def _stored_one(store: ScyllaStore, cid: str) -> bool:
    return await store.load(cid) is not None
