"""get_message and append with 1 and 2 workers (`canopy serve --workers N`), alternated.

    python -m bench.workers [--seconds 5] [--rounds 3] [--connections 32] [--json]

Each round starts a node with 1 worker and one with 2 (the order swapped every round,
so a machine shared with other work weighs on both alike), seeds 16 conversations over
fresh connections (so they are spread over the workers), and runs each op over
`--connections` keep-alive connections, in two patterns:
  mixed   each connection sends the next conversation's request in turn (a pooled
          backend's connections): with 2 workers about half the requests are for the
          other worker, which gets them relayed over its Unix socket
  sticky  connection k sends only conversation k's requests (a chat client's): the
          kernel gives each connection to any worker, and one on the wrong worker moves
          to the owner after a few requests (gateway/migration.py)
CPU per request is the whole process tree's (supervisor, workers) over the run,
divided by the requests answered. The figures to quote are the medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import uvloop

from bench.client import Connection, build_request, call, run
from bench.compare import API, conversation, message
from bench.cpu import tree_cpu_seconds
from bench.node import canopy, free_port, node

CONVERSATIONS = 16
OPS = ("get_message", "append")


async def seed(port: int) -> list[tuple[str, str, str]]:
    """(conversation, its root, a message under it), each made over its own connection."""
    seeded = []
    for k in range(CONVERSATIONS):
        connection = await Connection.open(port)
        try:
            cid, root = await conversation(connection, f"workers {k}")
            answer = await call(connection, "POST", f"{API}/{cid}/messages", message(root, "w", 0))
            seeded.append((cid, root, answer["message_id"]))
        finally:
            connection.close()
    return seeded


def requests(op: str, seeded: list[tuple[str, str, str]], port: int) -> list[bytes]:
    if op == "get_message":
        return [build_request("GET", f"{API}/{cid}/messages/{mid}", port=port)
                for cid, _, mid in seeded]  # fmt: skip
    return [build_request("POST", f"{API}/{cid}/messages", message(root, "load", i), port=port)
            for i, (cid, root, _) in enumerate(seeded)]  # fmt: skip


async def measure(port: int, pid: int, seconds: float, connections: int) -> dict[str, dict]:
    seeded = await seed(port)
    figures: dict[str, dict] = {}
    for op, sticky in ((op, sticky) for op in OPS for sticky in (False, True)):
        load = requests(op, seeded, port)
        await run(port, load, connections=connections, count=2_000, seconds=1.0, sticky=sticky)
        before = tree_cpu_seconds([pid])
        result = await run(
            port, load, connections=connections, count=10**9, seconds=seconds, sticky=sticky
        )
        answered = len(result.latencies_ns)
        figures[f"{op} {'sticky' if sticky else 'mixed'}"] = {
            "rps": round(result.rps),
            "p50_ms": round(result.percentile_ms(50), 3),
            "cpu_us": round((tree_cpu_seconds([pid]) - before) / max(answered, 1) * 1e6, 1),
            "errors": result.errors,
        }
    return figures


def one_run(workers: int, seconds: float, connections: int) -> dict[str, dict]:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as directory:
        data = Path(directory) / "data"
        log = Path(directory) / "node.log"
        with node(canopy(port, data, workers=workers), port, log, None) as started:
            return uvloop.run(measure(port, started.process.pid, seconds, connections))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    runs: dict[int, list[dict[str, dict]]] = {1: [], 2: []}
    for round_ in range(args.rounds):
        for workers in (1, 2) if round_ % 2 == 0 else (2, 1):
            figures = one_run(workers, args.seconds, args.connections)
            runs[workers].append(figures)
            if not args.json:
                print(f"round {round_} workers={workers} {json.dumps(figures)}", flush=True)
    medians = {
        f"{op} workers={workers}": {
            key: statistics.median(run[op][key] for run in done)
            for key in ("rps", "p50_ms", "cpu_us", "errors")
        }
        for workers, done in runs.items()
        for op in done[0]
    }
    if args.json:
        print(json.dumps({"runs": runs, "medians": medians}))
        return
    print("medians of alternated runs:")
    for name, figures in medians.items():
        print(f"  {name:<24} rps={figures['rps']:.0f} p50={figures['p50_ms']:.2f}ms "
              f"cpu/req={figures['cpu_us']:.1f}us errors={figures['errors']:.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
