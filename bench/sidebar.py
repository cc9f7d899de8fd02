"""Sidebar first page for a user with 10,000 conversations: hot, and from a cold node.

    python -m bench.sidebar [--conversations N] [--stores sqlite,cassandra]

The store is seeded directly (`Store.write`, as a flush writes it) with N conversations
of one user, each with a 200-character last message. A real node (`canopy serve`) is
started on loopback on that data, `--restarts` times for each way of serving a first page:

- cold: the first `GET /api/v1/conversations` after a start (nothing in memory, the
  index in the store);
- then `--dirty` conversations of the user are created and appended to through the API,
  so the hot listing overlays the store's rows (they are the newest: the page mixes
  them with stored ones), and `--requests` first pages follow on one keep-alive
  connection, with an append to one of them every `--append-every` pages (the page
  changes between requests; appends are not timed):
  - kept: the node as configured by default: the first page's store rows stay in memory
    while the hot listing covers every change since (engine/first_reads.py);
  - store path: `--sidebar-cache-seconds 0`, every first page reads the store (what a
    node pays without the kept rows: SQLite, or a Cassandra round trip).
Cassandra runs when 127.0.0.1:9042 answers, in a keyspace of its own dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import tempfile
import time
import uuid
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import uvloop

from bench.client import Connection, build_request, call
from bench.node import canopy, free_port, node
from persistence.records import Conversation
from persistence.sqlite import SQLiteStore
from persistence.store import Changes, Store

USER = "bench-user"
KEYSPACE = "canopy_bench_sidebar"
_START = datetime(2026, 1, 1, tzinfo=UTC)


def conversation(n: int) -> Conversation:
    at = _START + timedelta(seconds=n)
    return Conversation(
        conversation_id=str(uuid.uuid4()), root_id=str(uuid.uuid4()), title=f"Conversation {n}",
        description=None, created_at=at, created_by=USER, updated_at=at, is_public=False,
        fork_from_conversation_id=None, fork_from_message_id=None, message_count=2, version=2,
        last_message=("words " * 40)[:200], tags=("bench",),
    )  # fmt: skip


async def seed(store: Store, count: int) -> None:
    metas = [conversation(n) for n in range(count)]
    for start in range(0, count, 200):
        chunk = metas[start : start + 200]
        await asyncio.gather(
            *(store.write(m.conversation_id, Changes(conversation=m, version=2)) for m in chunk)
        )


API = "/api/v1/conversations"
HEADERS = {"X-Canopy-User": USER}


async def first_page(connection: Connection) -> float:
    """One first page on an open keep-alive connection, in ms."""
    request = build_request("GET", API, port=connection.port, headers=HEADERS)
    began = time.perf_counter()
    status, body = await connection.fetch(request)
    elapsed = (time.perf_counter() - began) * 1000
    assert status == 200 and body.count(b'"conversation_id"') == 30, body[:200]
    return elapsed


async def root(connection: Connection, cid: str) -> str:
    tree = await call(connection, "GET", f"{API}/{cid}/tree", None, HEADERS)
    return str(tree["messages"][0]["message_id"])


async def append(connection: Connection, cid: str, parent: str, n: int) -> None:
    text = {"type": "text", "text": f"dirty message {n} " + "words " * 30}
    body = {"role": "human", "content": text, "parent_message_id": parent}
    await call(connection, "POST", f"{API}/{cid}/messages", body, HEADERS)


async def create(connection: Connection, n: int) -> str:
    made = await call(connection, "POST", API, {"title": f"dirty {n}"}, HEADERS)
    return str(made["conversation_id"])


async def hot_pages(connection: Connection, dirty: int, requests: int, every: int) -> list[float]:
    """First pages while `dirty` conversations made through the API are hot and moving."""
    made = [await create(connection, n) for n in range(dirty)]
    roots = {cid: await root(connection, cid) for cid in made}
    for n, cid in enumerate(made):
        await append(connection, cid, roots[cid], n)
    times: list[float] = []
    for n in range(requests):
        if every and n % every == every - 1:
            cid = made[n % dirty]
            await append(connection, cid, roots[cid], n)
        times.append(await first_page(connection))
    return times


async def pages(port: int, args: argparse.Namespace) -> tuple[float, list[float]]:
    """The cold first page of a node just started, then the hot ones."""
    connection = await Connection.open(port)
    try:
        await call(connection, "GET", "/health")  # the connection is open: time the page only
        cold = await first_page(connection)
        return cold, await hot_pages(connection, args.dirty, args.requests, args.append_every)
    finally:
        connection.close()


def measure(data_dir: Path, extra: list[str], args: argparse.Namespace) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {"cold": [], "kept": [], "store path": []}
    for mode, flags in (("kept", []), ("store path", ["--sidebar-cache-seconds", "0"])):
        for _ in range(args.restarts):
            port = free_port()
            command = canopy(port, data_dir, *extra, *flags)
            with node(command, port, data_dir.parent / "node.log"):
                cold, hot = uvloop.run(pages(port, args))
            found["cold"].append(cold)
            found[mode] += hot
    return found


def summary(times: list[float]) -> str:
    p99 = statistics.quantiles(times, n=100)[98] if len(times) > 1 else times[0]
    return f"p50 {statistics.median(times):.2f} ms, p99 {p99:.2f} ms (n={len(times)})"


def cassandra_up() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 9042), timeout=1).close()
        return True
    except OSError:
        return False


async def seeded(store: AbstractAsyncContextManager[Store], count: int) -> None:
    async with store as opened:
        await seed(opened, count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=10_000)
    parser.add_argument("--restarts", type=int, default=5)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--dirty", type=int, default=20)
    parser.add_argument("--append-every", type=int, default=10)
    parser.add_argument("--stores", default="sqlite,cassandra")
    args = parser.parse_args()
    for kind in args.stores.split(","):
        with tempfile.TemporaryDirectory(prefix="canopy-sidebar-") as scratch:
            data_dir = Path(scratch) / "data"
            if kind == "sqlite":
                store: AbstractAsyncContextManager[Store] = SQLiteStore(data_dir / "canopy.db")
                extra: list[str] = []
            elif cassandra_up():
                from persistence.scylla import ScyllaConfig, ScyllaStore

                store = ScyllaStore(ScyllaConfig(keyspace=KEYSPACE))
                extra = ["--store", "scylla", "--scylla-keyspace", KEYSPACE]
            else:
                print(f"{kind}: not reachable, skipped")
                continue
            began = time.perf_counter()
            asyncio.run(seeded(store, args.conversations))
            seeded_s = time.perf_counter() - began
            try:
                figures = measure(data_dir, extra, args)
            finally:
                if kind == "cassandra":
                    drop_keyspace()
            print(f"{kind} ({args.conversations} conversations, seeded in {seeded_s:.1f} s):")
            for name, times in figures.items():
                print(f"  {name}: {summary(times)}")


def drop_keyspace() -> None:
    from persistence.scylla import ScyllaConfig, _cluster

    cluster = _cluster(ScyllaConfig(keyspace=KEYSPACE))
    try:
        cluster.connect().execute(f"DROP KEYSPACE IF EXISTS {KEYSPACE}")
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main()
