"""Append load on a running node, for profiling it: rps, latency and the server's CPU per append.

    python -m bench.append_load --port 8710 --pid <node pid> [--seconds 10] [--conversations 1]

32 keep-alive connections POST bench.compare's append bodies under the root of each of
`--conversations` new conversations (cycled) for `--seconds`, after a 2 s warm-up. The
server's CPU per append is its user + system time over the run (all threads, from
/proc/<pid>/stat) divided by the appends answered; run py-spy or perf against the same pid.
"""

from __future__ import annotations

import argparse

import uvloop

from bench.client import Connection, build_request, run
from bench.compare import API, conversation, message
from bench.cpu import cpu_seconds


async def load(port: int, pid: int, seconds: float, conversations: int, connections: int) -> str:
    seeding = await Connection.open(port)
    requests: list[bytes] = []
    try:
        for k in range(conversations):
            cid, root = await conversation(seeding, f"append load {k}")
            path = f"{API}/{cid}/messages"
            requests += [build_request("POST", path, message(root, "load", i), port=port)
                         for i in range(2)]  # fmt: skip
    finally:
        seeding.close()
    await run(port, requests, connections=connections, count=2_000, seconds=2.0)
    before = cpu_seconds(pid)
    result = await run(port, requests, connections=connections, count=10**9, seconds=seconds)
    answered = len(result.latencies_ns)
    cpu_us = (cpu_seconds(pid) - before) / max(answered, 1) * 1e6
    return (
        f"appends={answered} errors={result.errors} rps={result.rps:.0f}"
        f" p50={result.percentile_ms(50):.2f}ms p99={result.percentile_ms(99):.2f}ms"
        f" server_cpu_us_per_append={cpu_us:.0f}"
        f" client_cpu_us_per_append={result.cpu / max(answered, 1) * 1e6:.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pid", type=int, required=True, help="the node's process id")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--conversations", type=int, default=1)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    print(uvloop.run(load(args.port, args.pid, args.seconds, args.conversations,
                          args.connections)))  # fmt: skip


if __name__ == "__main__":
    main()
