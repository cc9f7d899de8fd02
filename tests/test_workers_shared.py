"""`canopy serve --workers 2 --store scylla --journal redis` as real processes: the store
and the journal are shared, each conversation still belongs to one worker by placement.
One supervisor, started once for the module; a long flush interval keeps what is written
in the journal, so a restarted worker's recovery has something to replay (and, if it
replayed its sibling's conversations too, would take them from it)."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from engine.membership_workers import worker_id
from engine.placement import Rendezvous
from tests.backends import keyspace, wipe_redis
from tests.processes import NodeProcess
from tests.services import CASSANDRA_NODES, REDIS_URL, require
from tests.test_workers import alive, eventually, kill_all, until_async, worker_pids

pytestmark = pytest.mark.asyncio(loop_scope="module")

USER = f"shared-{uuid.uuid4().hex[:8]}"  # the keyspace is the run's: a user of our own
CONVERSATIONS = 12
ADMIN = "workers-shared-admin-token"
PLACEMENT = Rendezvous([worker_id(0), worker_id(1)])


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def node(
    tmp_path_factory: pytest.TempPathFactory, unused_tcp_port_factory: Any
) -> AsyncIterator[NodeProcess]:
    require("redis")
    require("cassandra")
    wipe_redis()
    process = NodeProcess(
        tmp_path_factory.mktemp("workers-shared") / "data", unused_tcp_port_factory(),
        "--workers", "2", "--store", "scylla", "--journal", "redis",
        "--scylla-nodes", CASSANDRA_NODES, "--scylla-keyspace", keyspace(),
        "--redis-url", REDIS_URL, "--flush-interval", "60", "--admin-token", ADMIN,
    )  # fmt: skip
    await process.start()
    yield process
    await kill_all(process)


async def call(method: str, url: str, body: dict[str, Any] | None = None) -> tuple[Any, str]:
    """One request over a connection of its own (the kernel picks the worker): its JSON
    answer and the node that answered it."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector, headers={"X-Canopy-User": USER}) as session,
        session.request(method, url, json=body) as response,
    ):
        assert response.status == 200, f"{method} {url}: {await response.text()}"
        return await response.json(), response.headers.get("X-Canopy-Node", "")


def placed(conversation_id: str) -> str:
    return PLACEMENT.owner_of(conversation_id)


async def append(base: str, cid: str, parent: str, text: str) -> str:
    body = {"parent_message_id": parent, "role": "human",
            "content": {"type": "text", "text": text}, "created_by": USER}  # fmt: skip
    answer, answered = await call("POST", f"{base}/api/v1/conversations/{cid}/messages", body)
    assert answered.endswith("/" + placed(cid)), (cid, answered)
    message_id: str = answer["message_id"]
    return message_id


class Written:
    chains: dict[str, list[str]] = {}  # conversation id -> its messages' ids in order


async def test_writes_land_on_their_placement_worker_and_list_once(node: NodeProcess) -> None:
    base = node.base
    for i in range(CONVERSATIONS):
        body = {"title": f"t{i}", "created_by": USER}
        created, answered = await call("POST", f"{base}/api/v1/conversations", body)
        cid = created["conversation_id"]
        assert answered.endswith("/" + placed(cid)), (cid, answered)
        tree, _ = await call("GET", f"{base}/api/v1/conversations/{cid}/tree")
        Written.chains[cid] = [tree["messages"][0]["message_id"]]
    for cid, chain in Written.chains.items():
        for i in range(2):
            chain.append(await append(base, cid, chain[-1], f"{cid} {i}"))
    assert {placed(cid) for cid in Written.chains} == {worker_id(0), worker_id(1)}
    for cid, chain in Written.chains.items():  # through whichever worker the kernel picks
        for _ in range(2):
            tree, answered = await call("GET", f"{base}/api/v1/conversations/{cid}/tree")
            assert [m["message_id"] for m in tree["messages"]] == chain
            assert answered.endswith("/" + placed(cid))
    newest_first = list(Written.chains)[::-1]
    for _ in range(2):  # each worker's own listing: the store's rows + the sibling's hot
        page, _ = await call("GET", f"{base}/api/v1/conversations?limit=100")
        assert [c["conversation_id"] for c in page["conversations"]] == newest_first
        ids, _ = await call("GET", f"{base}/api/v1/users/{USER}/conversations?limit=100")
        assert ids == newest_first


async def test_a_killed_worker_restarts_with_its_own_journal_and_leaves_its_siblings(
    node: NodeProcess,
) -> None:
    base = node.base
    assert Written.chains, "runs after the first test"
    victim = 1
    pid = worker_pids(node)[victim]
    for cid, chain in Written.chains.items():  # acknowledged, journaled, not flushed
        chain.append(await append(base, cid, chain[-1], "before the kill"))
    os.kill(pid, signal.SIGKILL)
    await eventually(lambda: worker_pids(node)[victim] != pid)
    mine = [cid for cid in Written.chains if placed(cid) == worker_id(victim)]

    async def served() -> bool:
        try:
            await call("GET", f"{base}/api/v1/conversations/{mine[0]}")
        except AssertionError:
            return False  # 503 while the worker restarts
        return True

    await until_async(served)
    for cid, chain in Written.chains.items():
        tree, _ = await call("GET", f"{base}/api/v1/conversations/{cid}/tree")
        assert [m["message_id"] for m in tree["messages"]] == chain
    # The survivor still owns its conversations: the restarted worker's recovery did
    # not take them (acquiring one would fence the survivor's next append).
    for cid, chain in Written.chains.items():
        chain.append(await append(base, cid, chain[-1], "after the restart"))
    page, _ = await call("GET", f"{base}/api/v1/conversations?limit=100")
    assert len(page["conversations"]) == len(Written.chains)


async def test_admin_actors_lists_every_workers_actors(node: NodeProcess) -> None:
    assert Written.chains, "runs after the first test"
    headers = {"Authorization": f"Bearer {ADMIN}"}
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True), headers=headers
    ) as session:
        for _ in range(2):  # whichever worker answers
            async with session.get(f"{node.base}/admin/actors?limit=100") as response:
                assert response.status == 200, await response.text()
                actors = (await response.json())["actors"]
            owners = {a["conversation_id"]: a["owner_node"] for a in actors}
            assert set(Written.chains) <= owners.keys()
            for cid in Written.chains:
                assert owners[cid].endswith("/" + placed(cid))
            async with session.get(f"{node.base}/admin/nodes") as response:
                assert response.status == 200, await response.text()
                nodes = [n["node_id"] for n in (await response.json())["nodes"]]
            assert [n.rsplit("/", 1)[-1] for n in nodes] == [worker_id(0), worker_id(1)]
        for cid in Written.chains:  # one actor, from the worker holding it
            async with session.get(f"{node.base}/admin/actors/{cid}") as response:
                assert response.status == 200, await response.text()
                assert (await response.json())["owner_node"].endswith("/" + placed(cid))


async def test_sigterm_stops_the_node_cleanly(node: NodeProcess) -> None:
    pids = worker_pids(node)
    assert await node.stop(signal.SIGTERM) == 0
    assert not [pid for pid in pids.values() if alive(pid)]
