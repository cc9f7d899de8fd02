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
import http.client
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.node import free_port
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


class Node:
    def __init__(self, data_dir: Path, extra: list[str]) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--data-dir", str(data_dir),
             "--port", str(self.port), *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:  # an external process: poll its health, bounded
            try:
                self.connection().request("GET", "/health")
                break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("the node did not start") from None
                time.sleep(0.05)

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


def first_page(connection: http.client.HTTPConnection) -> float:
    began = time.perf_counter()
    connection.request("GET", "/api/v1/conversations", headers={"X-Canopy-User": USER})
    response = connection.getresponse()
    body = response.read()
    elapsed = (time.perf_counter() - began) * 1000
    assert response.status == 200 and body.count(b'"conversation_id"') == 30, body[:200]
    return elapsed


def call(connection: http.client.HTTPConnection, path: str, body: object) -> dict[str, object]:
    connection.request(
        "POST", path, body=json.dumps(body),
        headers={"X-Canopy-User": USER, "Content-Type": "application/json"},
    )  # fmt: skip
    response = connection.getresponse()
    answer = response.read()
    assert response.status in (200, 201), answer[:200]
    decoded: dict[str, object] = json.loads(answer)
    return decoded


def root(connection: http.client.HTTPConnection, cid: str) -> str:
    connection.request("GET", f"/api/v1/conversations/{cid}/tree", headers={"X-Canopy-User": USER})
    tree = json.loads(connection.getresponse().read())
    return str(tree["messages"][0]["message_id"])


def append(connection: http.client.HTTPConnection, cid: str, parent: str, n: int) -> None:
    text = {"type": "text", "text": f"dirty message {n} " + "words " * 30}
    body = {"role": "human", "content": text, "parent_message_id": parent}
    call(connection, f"/api/v1/conversations/{cid}/messages", body)


def hot_pages(
    connection: http.client.HTTPConnection, dirty: int, requests: int, every: int
) -> list[float]:
    """First pages while `dirty` conversations made through the API are hot and moving."""
    made = [
        str(call(connection, "/api/v1/conversations", {"title": f"dirty {n}"})["conversation_id"])
        for n in range(dirty)
    ]
    roots = {cid: root(connection, cid) for cid in made}
    for n, cid in enumerate(made):
        append(connection, cid, roots[cid], n)
    times: list[float] = []
    for n in range(requests):
        if every and n % every == every - 1:
            cid = made[n % dirty]
            append(connection, cid, roots[cid], n)
        times.append(first_page(connection))
    return times


def measure(data_dir: Path, extra: list[str], args: argparse.Namespace) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {"cold": [], "kept": [], "store path": []}
    for mode, flags in (("kept", []), ("store path", ["--sidebar-cache-seconds", "0"])):
        for _ in range(args.restarts):
            node = Node(data_dir, [*extra, *flags])
            try:
                connection = node.connection()
                connection.request("GET", "/health")
                connection.getresponse().read()  # the connection is open: time the page only
                found["cold"].append(first_page(connection))
                found[mode] += hot_pages(connection, args.dirty, args.requests, args.append_every)
            finally:
                node.stop()
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
