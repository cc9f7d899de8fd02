"""What `--auth jwt` costs against `--auth none`: get_message, one run, same machine.

    python -m bench.auth [--quick] [--json PATH] [--no-pin]

Two `canopy serve` nodes on loopback, each with a fresh embedded store: one `--auth
none`, one `--auth jwt --jwt-secret ...`. Each gets the same conversation (a root and
two messages) and answers GET of its depth-2 message at concurrency 32 over keep-alive
connections (bench/client.py). Rounds alternate none, jwt, jwt_uncached, so a drift in
the machine's speed moves all of them; each reports its median round. `jwt` sends one
token (verified once, then served from the node's token cache); `jwt_uncached` cycles
through 20,000 distinct tokens, twice the cache's size, so that every request pays a
signature check: what the cache saves. Server CPU per request is the node process's
user+system time over a round (/proc/<pid>/stat) divided by the requests it answered.
Bounded: rounds x min(requests, seconds) per system (default 7 x 1.5 s, --quick 3 x 0.5 s).
Every request must answer 200, or the run exits 1. The target is jwt rps >= 0.9 x none.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import jwt
import uvloop

from bench.client import Connection, build_request, call, run
from bench.compare import placement
from bench.cpu import cpu_seconds
from bench.node import Node, canopy, free_port, node

API = "/api/v1/conversations"
SECRET = "bench-auth-secret-0123456789abcdef-0123456789"
CONCURRENCY = 32
UNCACHED_TOKENS = 20_000  # twice the node's token cache (gateway/token_cache.py)


def log(message: str) -> None:
    print(f"[auth] {message}", file=sys.stderr, flush=True)


def bearer_token(subject: str = "bench", serial: int = 0) -> str:
    claims = {"sub": subject, "exp": int(time.time()) + 3600, "jti": str(serial)}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@contextlib.contextmanager
def serve(mode: str, cpus: set[int] | None) -> Iterator[Node]:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix=f"canopy-auth-{mode}-") as data:
        command = canopy(port, Path(data) / "data", "--auth", mode)
        if mode == "jwt":
            command += ["--jwt-secret", SECRET]
        with node(command, port, Path(data) / "node.log", cpus) as started:
            yield started


async def seed(port: int, headers: Mapping[str, str]) -> str:
    """A conversation with a root and two messages; the path of the depth-2 one."""
    connection = await Connection.open(port)
    try:
        body = {"title": "bench", "created_by": "bench"}
        cid = (await call(connection, "POST", API, body, headers))["conversation_id"]
        tree = await call(connection, "GET", f"{API}/{cid}/tree", None, headers)
        parent = tree["messages"][0]["message_id"]
        text = {"type": "text", "text": "the quick brown fox " * 10}
        for role in ("human", "assistant"):
            message = {
                "parent_message_id": parent,
                "role": role,
                "content": text,
                "created_by": "bench",
            }
            answer = await call(connection, "POST", f"{API}/{cid}/messages", message, headers)
            parent = answer["message_id"]
        return f"{API}/{cid}/messages/{parent}"
    finally:
        connection.close()


@dataclass
class System:
    name: str
    node: Node
    batch: list[bytes]
    sent: int = 0  # requests sent so far: the next run goes on from there in the batch

    def next_batch(self) -> list[bytes]:
        """The batch from where the last run stopped: the uncached system's tokens are
        then used in one cycle across runs, each again only after the cache forgot it."""
        start = self.sent % len(self.batch)
        return self.batch[start:] + self.batch[:start]


@dataclass
class Figures:
    system: str
    rps: float  # median round
    cpu_us_per_request: float  # median round, server process
    requests: int
    errors: int
    first_error: str


async def measure(systems: list[System], rounds: int, seconds: float) -> list[Figures]:
    rps: dict[str, list[float]] = {s.name: [] for s in systems}
    cpu: dict[str, list[float]] = {s.name: [] for s in systems}
    counts = dict.fromkeys(rps, 0)
    errors = dict.fromkeys(rps, 0)
    first: dict[str, str] = dict.fromkeys(rps, "")
    for system in systems:  # warm-up: connections, caches, the token cache
        warm = await run(system.node.port, system.batch, connections=8, count=2000, seconds=0.5)
        system.sent += warm.count
    for round_number in range(rounds):
        turn = round_number % len(systems)  # each system goes first in turn: no order bias
        for system in systems[turn:] + systems[:turn]:
            pid = system.node.process.pid
            before = cpu_seconds(pid)
            result = await run(system.node.port, system.next_batch(), connections=CONCURRENCY,
                               count=200_000, seconds=seconds)  # fmt: skip
            answered = len(result.latencies_ns)
            system.sent += result.count
            rps[system.name].append(result.rps)
            cpu[system.name].append((cpu_seconds(pid) - before) / max(1, answered) * 1e6)
            counts[system.name] += result.count
            errors[system.name] += result.errors
            first[system.name] = first[system.name] or result.first_error
            log(f"round {round_number + 1} {system.name}: {result.rps:,.0f} rps, "
                f"{cpu[system.name][-1]:.1f} µs CPU/request")  # fmt: skip
    return [
        Figures(
            name,
            statistics.median(rps[name]),
            statistics.median(cpu[name]),
            counts[name],
            errors[name],
            first[name],
        )  # fmt: skip
        for name in rps
    ]


def ratios(figures: list[Figures]) -> dict[str, float]:
    by = {f.system: f for f in figures}
    none = by["none"]
    return {
        f"{name}_rps_ratio": round(by[name].rps / none.rps, 4) for name in by if name != "none"
    } | {
        f"{name}_cpu_ratio": round(by[name].cpu_us_per_request / none.cpu_us_per_request, 4)
        for name in by
        if name != "none"
    }


async def main_async(args: argparse.Namespace) -> int:
    rounds, seconds = (3, 0.5) if args.quick else (7, 1.5)
    server_cpus, client_cpus = placement(args.no_pin)
    if client_cpus:
        import os

        os.sched_setaffinity(0, client_cpus)
    with serve("none", server_cpus) as plain, serve("jwt", server_cpus) as checked:
        token = bearer_token()
        path_none = await seed(plain.port, {})
        path_jwt = await seed(checked.port, bearer(token))
        log(f"minting {UNCACHED_TOKENS:,} distinct tokens")
        uncached = [
            build_request(
                "GET", path_jwt, port=checked.port, headers=bearer(bearer_token(serial=i))
            )
            for i in range(UNCACHED_TOKENS)
        ]
        systems = [
            System("none", plain, [build_request("GET", path_none, port=plain.port)]),
            System(
                "jwt",
                checked,
                [build_request("GET", path_jwt, port=checked.port, headers=bearer(token))],
            ),  # fmt: skip
            System("jwt_uncached", checked, uncached),
        ]
        figures = await measure(systems, rounds, seconds)
    summary = ratios(figures)
    for f in figures:
        print(f"{f.system:>13}  {f.rps:>9,.0f} rps  {f.cpu_us_per_request:>7.1f} µs CPU/request"
              f"  ({f.requests:,} requests, {f.errors} errors)")  # fmt: skip
    print("  ".join(f"{k} {v:.3f}" for k, v in summary.items()))
    if args.json:
        report = {"figures": [asdict(f) for f in figures], "ratios": summary,
                  "rounds": rounds, "seconds_per_round": seconds, "concurrency": CONCURRENCY,
                  "pinned": server_cpus is not None}  # fmt: skip
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    failed = [f for f in figures if f.errors]
    for f in failed:
        log(f"{f.system}: {f.errors} requests failed, first: {f.first_error}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.auth", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="3 rounds of 0.5 s per system")
    parser.add_argument("--json", help="also write the figures and ratios here")
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and client")
    return uvloop.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
