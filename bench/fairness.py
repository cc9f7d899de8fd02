"""Fairness: other clients' latency while a few clients loop on a huge response.

    python -m bench.fairness [--seconds S] [--loopers N] [--json PATH]

One `canopy serve` node (default settings, SQLite, pinned to one core and this client
to another, as bench.compare does) holds a conversation with a chain down to depth
1000. Its lineage is seed 000's worst list: every message carries its own lineage,
19.9 MB in all, more than the response cache keeps, so every request encodes it anew.
A single keep-alive client times GET of one message (depth 2), first alone and then
while N clients (4 by default) loop on that lineage; each phase is bounded by S
seconds (5) and 20,000 requests. The issue's target: p99 at most 5 ms while they loop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import uvloop

from bench.client import Connection, Result, build_request, call, run
from bench.compare import placement
from bench.node import canopy, free_port, node

API = "/api/v1/conversations"
DEPTH = 1000
TEXT = "x" * 200
MAX_REQUESTS = 20_000


@dataclass
class Phase:
    name: str
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    rps: float
    lineages: int = 0  # full lineages the loopers received meanwhile


def log(message: str) -> None:
    print(f"[fairness] {message}", file=sys.stderr, flush=True)


async def seed(port: int) -> tuple[str, str, str]:
    """(conversation id, depth-2 message id, depth-1000 message id)."""
    connection = await Connection.open(port)
    try:
        created = await call(connection, "POST", API, {"title": "fair", "created_by": "bench"})
        cid = created["conversation_id"]
        tree = await call(connection, "GET", f"{API}/{cid}/tree")
        parent = tree["messages"][0]["message_id"]
        ids = []
        for _ in range(DEPTH - 1):
            body = {"parent_message_id": parent, "role": "human",
                    "content": {"type": "text", "text": TEXT}, "created_by": "bench"}  # fmt: skip
            parent = (await call(connection, "POST", f"{API}/{cid}/messages", body))["message_id"]
            ids.append(parent)
        return cid, ids[0], ids[-1]
    finally:
        connection.close()


def phase(name: str, result: Result, lineages: Result | None = None) -> Phase:
    return Phase(
        name,
        result.count,
        result.errors,
        round(result.percentile_ms(50), 3),
        round(result.percentile_ms(99), 3),
        round(result.rps, 1),
        len(lineages.latencies_ns) if lineages else 0,
    )


async def measure(port: int, loopers: int, seconds: float) -> list[Phase]:
    cid, near_root, deepest = await seed(port)
    get = [build_request("GET", f"{API}/{cid}/messages/{near_root}", port=port)]
    lineage = [build_request("GET", f"{API}/{cid}/messages/{deepest}/lineage", port=port)]
    await run(port, get, count=500, seconds=1.0)  # warm-up
    alone = await run(port, get, count=MAX_REQUESTS, seconds=seconds)
    looping = asyncio.ensure_future(
        run(port, lineage, connections=loopers, count=MAX_REQUESTS, seconds=seconds + 1.0)
    )
    await asyncio.sleep(0.5)  # the loopers are under way
    beside = await run(port, get, count=MAX_REQUESTS, seconds=seconds)
    lineages = await looping
    if lineages.errors:
        log(f"lineage errors: {lineages.errors}, first: {lineages.first_error}")
    return [phase("get_message alone", alone), phase(f"beside {loopers} loopers", beside, lineages)]


async def main_async(args: argparse.Namespace) -> int:
    server_cpus, client_cpus = placement(args.no_pin)
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)
    port = free_port()
    with (
        tempfile.TemporaryDirectory() as data,
        node(canopy(port, Path(data)), port, Path(data) / "node.log", server_cpus),
    ):
        phases = await measure(port, args.loopers, args.seconds)
    print(f"{'phase':<24}{'requests':>10}{'errors':>8}{'p50 ms':>9}{'p99 ms':>9}{'rps':>10}")
    for p in phases:
        print(f"{p.name:<24}{p.requests:>10}{p.errors:>8}{p.p50_ms:>9}{p.p99_ms:>9}{p.rps:>10}")
    print(f"lineages of depth {DEPTH} served to the loopers meanwhile: {phases[-1].lineages}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps([asdict(p) for p in phases], indent=2))
    return 1 if any(p.errors for p in phases) else 0


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.fairness", description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="per phase (default 5)")
    parser.add_argument("--loopers", type=int, default=4, help="clients looping on lineage")
    parser.add_argument("--json", help="also write the phases here")
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and client")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return uvloop.run(main_async(parse(argv)))


if __name__ == "__main__":
    sys.exit(main())
