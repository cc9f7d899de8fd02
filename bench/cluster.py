"""Canopy as a cluster on loopback: what forwarding costs, how long failover takes, and
what lease renewal asks of Redis.

    python -m bench.cluster [--nodes 3] [--kills 5] [--hot 10000] [--phases ...] [--json PATH]

Nodes are `canopy serve --cluster redis` processes over the Redis and Cassandra that
`make services` starts, each with its own port and data dir:
- forwarding: get_message and append at concurrency 1, sent to the conversation's owner
  (direct) and to another node (which forwards; `X-Canopy-Node` names the owner),
  alternated `--rounds` times; p50 of each and the difference of the medians.
- failover: SIGKILL the owner of a conversation that was just written through another
  node, then time until a surviving node serves its whole tree; the killed node is
  started again before the next kill. Median and max over `--kills`.
- lease renewal: one node alone holding `--hot` conversations, idle; Redis commands per
  second over `--idle-seconds` that clients sent to the bench's database, and those run
  inside scripts (MONITOR, which names each command's database: other databases' clients
  are not counted).
Bounded: every phase has a request count and a time limit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import uvloop

from bench.client import Connection, Result, build_request, call, run
from bench.compare import API, CASSANDRA, REDIS_URL, Store, log, message, migrate
from bench.cpu import tree_cpu_seconds
from bench.node import Node, canopy, free_port, node

KEYSPACE = "canopy_bench_cluster"
ADMIN_TOKEN = "bench-cluster"
PHASES = ("forwarding", "failover", "renewal")
SERVED_AGAIN_WITHIN = 30.0  # seconds a failover may take before the run gives up
SETTLE_WITHIN = 120.0  # seconds the seeding's write-behind may take before the run gives up


@dataclass
class Member:
    node_id: str
    port: int
    data_dir: Path
    process: Node | None = None

    def cpu_seconds(self) -> float:
        assert self.process is not None
        return tree_cpu_seconds([self.process.process.pid])


def command(member: Member, lease_seconds: float | None, flusher_process: str) -> list[str]:
    flags = canopy(member.port, member.data_dir, "--node-id", member.node_id,
             "--cluster", "redis", "--admin-token", ADMIN_TOKEN,
             "--store", "scylla", "--scylla-nodes", f"{CASSANDRA[0]}:{CASSANDRA[1]}",
             "--scylla-keyspace", KEYSPACE, "--flusher-process", flusher_process,
             "--journal", "redis", "--redis-url", REDIS_URL)  # fmt: skip
    if lease_seconds is not None:
        flags += ["--lease-seconds", str(lease_seconds)]
    return flags


class Cluster:
    """Members started and stopped as processes; a stopped one can start again."""

    def __init__(
        self, root: Path, size: int, lease_seconds: float | None, flusher_process: str = "auto"
    ) -> None:
        self.members = [Member(f"n{k + 1}", free_port(), root / f"n{k + 1}") for k in range(size)]
        self.lease_seconds = lease_seconds
        # each member's write-behind: in its own flusher process (auto, on) or in-process
        self.flusher_process = flusher_process
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Cluster:
        for member in self.members:
            self.start(member)
        return self

    async def settled(self) -> None:
        """Every running member lists every running member. Until then a conversation
        made now may be placed by a partial view and move a moment later (the bench
        would take a forwarding node for its owner)."""
        running = [m for m in self.members if m.process is not None]
        expected = sorted(m.node_id for m in running)
        deadline = time.perf_counter() + SERVED_AGAIN_WITHIN
        for member in running:
            while (seen := await _members_seen(member.port)) != expected:
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"{member.node_id} sees {seen}, not {expected}")
                await asyncio.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def start(self, member: Member) -> None:
        member.data_dir.mkdir(parents=True, exist_ok=True)
        log_path = member.data_dir.parent / f"{member.node_id}.log"
        flags = command(member, self.lease_seconds, self.flusher_process)
        started = node(flags, member.port, log_path, None)
        member.process = self._stack.enter_context(started)

    def kill(self, member: Member) -> None:
        assert member.process is not None
        member.process.process.kill()
        member.process.process.wait()
        member.process = None

    def by_port(self, port: int) -> Member:
        return next(m for m in self.members if m.port == port)

    def by_id(self, node_id: str) -> Member:
        return next(m for m in self.members if m.node_id == node_id)


async def _admin_nodes(port: int) -> list[dict[str, Any]]:
    """The live nodes as the node on `port` lists them (`GET /admin/nodes`)."""
    connection = await Connection.open(port)
    try:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        listed = await call(connection, "GET", "/admin/nodes", headers=headers)
        return list(listed["nodes"])
    finally:
        connection.close()


async def _members_seen(port: int) -> list[str]:
    return sorted(n["node_id"] for n in await _admin_nodes(port))


async def owner_of(port: int, path: str) -> str:
    """The node that answered `GET path` sent to `port` (its X-Canopy-Node header)."""
    connection = await Connection.open(port)
    try:
        status, _ = await connection.fetch(build_request("GET", path, port=port))
        if status != 200:
            raise RuntimeError(f"GET {path} -> {status}")
        return connection.header(b"x-canopy-node").decode()
    finally:
        connection.close()


async def seeded(port: int, title: str, messages: int = 0) -> tuple[str, str, list[str]]:
    """A new conversation made through `port`: its id, root and appended message ids."""
    connection = await Connection.open(port)
    try:
        body = {"title": title, "created_by": "bench"}
        cid = (await call(connection, "POST", API, body))["conversation_id"]
        tree = await call(connection, "GET", f"{API}/{cid}/tree")
        root = tree["messages"][0]["message_id"]
        parent, appended = root, []
        for i in range(messages):
            made = await call(connection, "POST", f"{API}/{cid}/messages", message(parent, "f", i))
            parent = made["message_id"]
            appended.append(parent)
        return cid, root, appended
    finally:
        connection.close()


# -- forwarding ----------------------------------------------------------------------------


async def forwarding(cluster: Cluster, rounds: int, count: int) -> dict[str, object]:
    await cluster.settled()
    first = cluster.members[0]
    cid, root, _ = await seeded(first.port, "forwarding")
    results: dict[str, dict[str, list[float]]] = {}
    for op in ("get_message", "append"):
        results[op] = {"direct": [], "forwarded": [], "owner_cpu_us": [], "forwarder_cpu_us": []}
        for _ in range(rounds):
            for way in ("direct", "forwarded"):
                p50, owner_cpu, forwarder_cpu = await _one_round(cluster, op, way, cid, root, count)
                results[op][way].append(p50)
                if way == "direct":
                    results[op]["owner_cpu_us"].append(owner_cpu)
                else:
                    results[op]["forwarder_cpu_us"].append(forwarder_cpu)
    table: dict[str, object] = {}
    for op, ways in results.items():
        direct, forwarded = statistics.median(ways["direct"]), statistics.median(ways["forwarded"])
        owner_cpu = statistics.median(ways["owner_cpu_us"])
        forwarder_cpu = statistics.median(ways["forwarder_cpu_us"])
        table[op] = {"direct_p50_ms": round(direct, 3), "forwarded_p50_ms": round(forwarded, 3),
                     "added_ms": round(forwarded - direct, 3),
                     "owner_cpu_us": round(owner_cpu, 1),
                     "forwarder_cpu_us": round(forwarder_cpu, 1)}  # fmt: skip
        log(f"forwarding {op}: direct p50 {direct:.3f} ms, forwarded {forwarded:.3f} ms "
            f"(+{forwarded - direct:.3f}); CPU per request: owner {owner_cpu:.0f} us "
            f"direct, forwarding node {forwarder_cpu:.0f} us")  # fmt: skip
    return table


async def _one_round(
    cluster: Cluster, op: str, way: str, cid: str, root: str, count: int
) -> tuple[float, float, float]:
    """p50 of one round sent to the owner (direct) or to another node (forwarded), and
    the CPU per request of the owner and of the node the requests were sent to. The
    owner is asked before and after: a round during which it changed is run again."""
    for _ in range(3):
        owner = cluster.by_id(await owner_of(cluster.members[0].port, f"{API}/{cid}/tree"))
        target = owner if way == "direct" else next(m for m in cluster.members if m is not owner)
        before = {m.node_id: m.cpu_seconds() for m in (owner, target)}
        result = await _one_way(op, target.port, cid, root, count)
        spent = {m.node_id: (m.cpu_seconds() - before[m.node_id]) / result.count * 1e6
                 for m in (owner, target)}  # fmt: skip
        if await owner_of(cluster.members[0].port, f"{API}/{cid}/tree") == owner.node_id:
            return result.percentile_ms(50), spent[owner.node_id], spent[target.node_id]
        log(f"forwarding {op} {way}: the owner moved during the round; running it again")
    raise RuntimeError(f"the owner of {cid} kept moving")


async def _one_way(op: str, port: int, cid: str, root: str, count: int) -> Result:
    if op == "get_message":
        requests = [build_request("GET", f"{API}/{cid}/messages/{root}", port=port)]
    else:
        requests = [build_request("POST", f"{API}/{cid}/messages", message(root, "fwd", i),
                                  port=port) for i in range(2)]  # fmt: skip
    result = await run(port, requests, connections=1, count=count, seconds=10.0)
    if result.errors:
        raise RuntimeError(f"{op} through {port}: {result.first_error}")
    return result


# -- failover ------------------------------------------------------------------------------


async def failover(cluster: Cluster, kills: int) -> dict[str, object]:
    times: list[float] = []
    for k in range(kills):
        writer = cluster.members[k % len(cluster.members)]
        await cluster.settled()  # a restarted node is seen: the conversation stays put
        cid, _, appended = await seeded(writer.port, f"failover {k}", messages=5)
        owner = cluster.by_id(await owner_of(writer.port, f"{API}/{cid}/tree"))
        survivor = next(m for m in cluster.members if m is not owner)
        cluster.kill(owner)
        killed_at = time.perf_counter()
        served = await _served_again(survivor.port, cid, len(appended) + 1)
        times.append(served - killed_at)
        log(f"failover {k + 1}: {owner.node_id} killed, served by another node "
            f"after {times[-1]:.2f} s")  # fmt: skip
        cluster.start(owner)
    summary = {"kills": kills, "median_s": round(statistics.median(times), 3),
               "max_s": round(max(times), 3), "each_s": [round(t, 3) for t in times]}  # fmt: skip
    log(f"failover over {kills} kills: median {summary['median_s']} s, max {summary['max_s']} s")
    return summary


async def _served_again(port: int, cid: str, messages: int) -> float:
    """When `port` first answered the conversation's whole tree (polled every 10 ms)."""
    deadline = time.perf_counter() + SERVED_AGAIN_WITHIN
    request = build_request("GET", f"{API}/{cid}/tree", port=port)
    while time.perf_counter() < deadline:
        connection = await Connection.open(port)
        try:
            status, body = await connection.fetch(request)
        finally:
            connection.close()
        if status == 200 and len(json.loads(body)["messages"]) == messages:
            return time.perf_counter()
        await asyncio.sleep(0.01)
    raise RuntimeError(f"conversation {cid} not served again within {SERVED_AGAIN_WITHIN} s")


# -- lease renewal -------------------------------------------------------------------------


async def renewal(cluster: Cluster, hot: int, idle_seconds: float) -> dict[str, object]:
    member = cluster.members[0]
    bodies = [{"title": f"hot {i}", "created_by": "bench"} for i in range(64)]
    requests = [build_request("POST", API, body, port=member.port) for body in bodies]
    made = await run(member.port, requests, connections=16, count=hot, seconds=120.0)
    if made.errors:
        raise RuntimeError(f"creating {hot} conversations: {made.first_error}")
    await _written_behind(member.port)  # what is measured next is the renewal alone
    sent, scripted = await asyncio.to_thread(_commands_of_db, REDIS_URL, idle_seconds)
    per_second = {name: round(calls / idle_seconds, 1) for name, calls in sorted(sent.items())}
    inside = {name: round(calls / idle_seconds, 1) for name, calls in sorted(scripted.items())}
    total = round(sum(per_second.values()), 1)
    log(f"lease renewal with {len(made.latencies_ns)} hot conversations on one idle node: "
        f"{total} Redis commands/s ({per_second}; inside scripts: {inside})")  # fmt: skip
    return {"hot": len(made.latencies_ns), "commands_per_second": total,
            "by_command": per_second, "inside_scripts": inside}  # fmt: skip


async def _written_behind(port: int) -> None:
    """Once the node has nothing unflushed: the creations' write-behind (10,000 journal
    tails read and trimmed by its flusher process, some seconds) is not renewal traffic."""
    deadline = time.perf_counter() + SETTLE_WITHIN
    while sum(n["unflushed_records"] for n in await _admin_nodes(port)):
        if time.perf_counter() > deadline:
            raise RuntimeError(f"the write-behind did not finish within {SETTLE_WITHIN} s")
        await asyncio.sleep(0.1)


def _commands_of_db(url: str, seconds: float) -> tuple[Counter[str], Counter[str]]:
    """The commands clients sent to `url`'s database over `seconds`, and those scripts
    ran, by name (MONITOR names each command's database: other databases' clients of
    the same server are not counted)."""
    client = redis.Redis.from_url(url, socket_timeout=seconds)
    db = int(client.connection_pool.connection_kwargs.get("db", 0))
    sent: Counter[str] = Counter()
    scripted: Counter[str] = Counter()
    deadline = time.monotonic() + seconds
    try:
        with client.monitor() as monitor:
            while time.monotonic() < deadline:
                try:
                    seen = monitor.next_command()
                except redis.TimeoutError:
                    break  # nothing at all was sent (the node heartbeats, so: gone)
                if seen["db"] == db and seen["command"]:
                    name = seen["command"].split(" ", 1)[0].lower()
                    (scripted if seen["client_type"] == "lua" else sent)[name] += 1
    finally:
        client.close()
    return sent, scripted


# -- the run -------------------------------------------------------------------------------


@contextlib.contextmanager
def fresh_state() -> Iterator[Path]:
    """An empty Redis database and keyspace, and a temporary root for the data dirs."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.flushdb()
    finally:
        client.close()
    migrate(KEYSPACE, Store("cassandra", redis=True))
    with tempfile.TemporaryDirectory(prefix="canopy-bench-cluster-") as root:
        yield Path(root)


async def measure(args: argparse.Namespace) -> dict[str, object]:
    report: dict[str, object] = {}
    with fresh_state() as root:
        if {"forwarding", "failover"} & args.phases:
            with Cluster(root / "nodes", args.nodes, None, args.flusher_process) as cluster:
                if "forwarding" in args.phases:
                    report["forwarding"] = await forwarding(cluster, args.rounds, args.requests)
                if "failover" in args.phases:
                    report["failover"] = await failover(cluster, args.kills)
        if "renewal" in args.phases:
            with Cluster(root / "alone", 1, None, args.flusher_process) as alone:
                report["renewal"] = await renewal(alone, args.hot, args.idle_seconds)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--hot", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=1000, help="per op, way and round")
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--phases", type=lambda v: set(v.split(",")) & set(PHASES),
                        default=set(PHASES), help=",".join(PHASES) + " (default: all)")  # fmt: skip
    parser.add_argument("--flusher-process", choices=("auto", "on", "off"), default="auto",
                        help="each node's write-behind in its own process or not")  # fmt: skip
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    report = uvloop.run(measure(args))
    text_report = json.dumps(report, indent=2)
    print(text_report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text_report + "\n")


if __name__ == "__main__":
    main()
