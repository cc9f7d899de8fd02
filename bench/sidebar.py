"""Sidebar first page for a user with 10,000 conversations: hot, and from a cold node.

    python -m bench.sidebar [--conversations N] [--stores sqlite,cassandra]

The store is seeded directly (`Store.write`, as a flush writes it) with N conversations
of one user, each with a 200-character last message. A real node (`canopy serve`) is
started on loopback on that data; the first `GET /api/v1/conversations` after each
start is a cold page (nothing hot, the index in the store: `--restarts` starts), then
`--requests` more on one keep-alive connection give the hot p50 (after listing once).
Cassandra runs when 127.0.0.1:9042 answers, in a keyspace of its own dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


def measure(data_dir: Path, extra: list[str], restarts: int, requests: int) -> dict[str, float]:
    cold: list[float] = []
    hot: list[float] = []
    for _ in range(restarts):
        node = Node(data_dir, extra)
        try:
            connection = node.connection()
            connection.request("GET", "/health")
            connection.getresponse().read()  # the connection is open: time the page only
            cold.append(first_page(connection))
            hot += [first_page(connection) for _ in range(requests)]
        finally:
            node.stop()
    return {
        "cold_p50_ms": statistics.median(cold),
        "cold_max_ms": max(cold),
        "hot_p50_ms": statistics.median(hot),
        "hot_p99_ms": statistics.quantiles(hot, n=100)[98],
    }


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
                figures = measure(data_dir, extra, args.restarts, args.requests)
            finally:
                if kind == "cassandra":
                    drop_keyspace()
            shown = ", ".join(f"{name} {value:.2f}" for name, value in figures.items())
            seeding = f"{args.conversations} conversations, seeded in {seeded_s:.1f} s"
            print(f"{kind} ({seeding}): {shown}")


def drop_keyspace() -> None:
    from persistence.scylla import ScyllaConfig, _cluster

    cluster = _cluster(ScyllaConfig(keyspace=KEYSPACE))
    try:
        cluster.connect().execute(f"DROP KEYSPACE IF EXISTS {KEYSPACE}")
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main()
