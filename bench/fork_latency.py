"""Fork-of-1,000 latency at concurrency 1 on Cassandra + Redis, code trees alternated.

    python -m bench.fork_latency [--rounds 10] [--per 10] [NAME=DIR ...]

Each NAME=DIR is a checkout of canopy (e.g. `git archive OLD | tar -x -C /tmp/old`); with
none, this tree runs alone. Every tree serves one node on Cassandra + Redis, pinned to the
first CPU as bench.compare pins its servers, seeded with bench.compare's workload. Then,
round by round, each node gets `--per` sequential forks of the 1,000-message conversation,
and a pause for its write-behind to finish inside the round, so a drift in the machine's
speed moves every tree alike. The report gives each tree's fork p50/p90/p99/max and its
node's CPU per fork, write-behind included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import sys
import tempfile
from pathlib import Path

import uvloop

from bench.client import run
from bench.compare import CASSANDRA, drop_keyspaces, requests, seed
from bench.cpu import tree_cpu_seconds
from bench.node import free_port, node, pin
from bench.target import Server

HERE = str(Path(__file__).resolve().parent.parent)


def command(tree: str, port: int, data_dir: Path, keyspace: str, redis_url: str) -> list[str]:
    """`canopy serve` from `tree`'s code, whatever the current directory holds."""
    boot = f"import runpy, sys; sys.path.insert(0, {tree!r}); runpy.run_module('gateway.cli', run_name='__main__')"  # noqa: E501
    return [
        sys.executable, "-c", boot, "serve", "--port", str(port), "--data-dir", str(data_dir),
        "--store", "scylla", "--scylla-nodes", f"{CASSANDRA[0]}:{CASSANDRA[1]}",
        "--scylla-keyspace", keyspace, "--journal", "redis", "--redis-url", redis_url,
    ]  # fmt: skip


def percentile(ordered: list[int], q: float) -> float:
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1] / 1e6


async def measure(trees: dict[str, str], rounds: int, per: int, redis_url: str) -> None:
    with tempfile.TemporaryDirectory() as scratch, contextlib.ExitStack() as stack:
        pin(os.getpid(), {1} if (os.cpu_count() or 1) > 1 else None)
        servers: dict[str, tuple[Server, list[bytes]]] = {}
        keyspaces: list[str] = []
        stack.callback(drop_keyspaces, keyspaces)  # last, once the nodes have stopped
        for name, tree in trees.items():
            port, data_dir = free_port(), Path(scratch) / name
            data_dir.mkdir()
            keyspace = f"canopy_fork_{name}_{os.getpid()}"
            keyspaces.append(keyspace)
            started = stack.enter_context(
                node(
                    command(tree, port, data_dir, keyspace, redis_url),
                    port,
                    Path(scratch) / f"{name}.log",
                    {0} if (os.cpu_count() or 1) > 1 else None,
                )
            )
            server = started.server()
            workload = await seed(server)
            servers[name] = (server, requests("fork_1000", workload, server))
        for server, batch in servers.values():  # warm-up
            await run(server.port, batch, connections=8, count=4, seconds=10)
        latencies: dict[str, list[int]] = {name: [] for name in servers}
        cpu = dict.fromkeys(servers, 0.0)
        for _ in range(rounds):
            for name, (server, batch) in servers.items():
                before = tree_cpu_seconds(server.pids)
                result = await run(server.port, batch, count=per, seconds=60)
                await asyncio.sleep(0.3)  # its write-behind lands within the round
                cpu[name] += tree_cpu_seconds(server.pids) - before
                if result.errors:
                    raise SystemExit(f"{name}: {result.errors} errors, {result.first_error}")
                latencies[name] += result.latencies_ns
        for name, found in latencies.items():
            ordered = sorted(found)
            print(
                f"{name}: {len(ordered)} forks, p50 {percentile(ordered, 50):.2f} ms,"
                f" p90 {percentile(ordered, 90):.2f}, p99 {percentile(ordered, 99):.2f},"
                f" max {ordered[-1] / 1e6:.2f}; {cpu[name] / len(ordered) * 1e6:,.0f} µs CPU"
                " per fork"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("trees", nargs="*", help="NAME=DIR, a canopy checkout each")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--per", type=int, default=10, help="sequential forks per round")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    args = parser.parse_args()
    trees = dict(spec.split("=", 1) for spec in args.trees) or {"canopy": HERE}
    uvloop.run(measure(trees, args.rounds, args.per, args.redis_url))


if __name__ == "__main__":
    main()
