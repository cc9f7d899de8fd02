"""Canopy against a store-backed service and the bare HTTP stack, one workload, one run.

    python -m bench.compare [--quick] [--json PATH] [--stores sqlite,cassandra]
                            [--target NAME=URL[,pid=N]...]

Systems, each a server subprocess started fresh on each store:
  canopy     `canopy serve`: trees in memory, writes journalled then written behind
             (on Cassandra + Redis from its flusher child process, whose CPU counts)
  canopy_inproc  `canopy serve --flusher-process off` (only with `--systems`, on
             Cassandra + Redis): the same, its write-behind in the serving process
  cache_off  `canopy serve --cache off`: every read is a targeted store query (one
             message, children by parent, lineage by a parent walk) and every write
             goes through to the store, as a conventional store-backed service does
  ceiling    `python -m bench.ceiling`: bare aiohttp+uvloop answering a constant
             message-sized JSON body; get_message and append only
  floor      `python -m bench.floor`: the same answers from a bare uvloop Protocol (no
             framework): what ceiling costs above it is aiohttp's cost per request
  NAME       `--target NAME=URL[,pid=N]` (repeatable; URL `http://HOST[:PORT]`): a
             server already running that speaks seed 000's API (e.g. the service Canopy
             replaces), seeded and shape-checked like the others on every store run and
             measured in canopy's alternating slices for every op (alone without canopy).
             Its rows carry the store of the canopy they ran beside, not its own store.
Stores: sqlite (embedded) always; cassandra when 127.0.0.1:9042 accepts connections,
a fresh keyspace per node (`canopy_bench_<pid>_<system>`, dropped at the end); on
Cassandra, canopy journals to Redis (127.0.0.1:6379 db 13, flushed before and after)
when Redis answers, else to its file journal.

Workload, seeded over HTTP into every node (texts of 200 characters):
  A  the root, a chain down to depth 100, and 9 more children under the depth-2 message
     (which so has 10 children, one of them the chain's next): 109 messages
  T  the root and a chain down to depth 100: 100 messages
  B  the root, one chain of 99 and nine chains of 100 below the root: 1,000 messages
Ops: get_message = GET A's depth-2 message; children = its 10 children; lineage_100 =
GET the lineage of A's depth-100 leaf; tree_100 = GET T's tree; append = POST a child
under A's depth-2 message; fork_1000 = POST a fork of B. Before timing, every node's
answers are checked for the same shapes (depths, counts), and every timed request must
answer 200: errors are counted, reported, and make the run exit 1.

For each op: a brief warm-up; at concurrency 1 a bounded number of sequential requests
(1000 reads, 300 appends, 100 forks; capped at 10 s) gives p50 and p99; at concurrency
32 keep-alive connections, min(N requests, 3 s) in three slices gives rps (the median
slice's). --quick divides the counts by 5 and caps the phases at 2 s and 1 s. The
ceiling and the floor stay up beside canopy and their slices alternate with canopy's,
so a drift in the machine's speed moves them all. With two or more CPUs the servers
are pinned to one and this client (bench/client.py: no per-request coroutine, no body
copies, no JSON) to another; the table shows both processes' CPU use at concurrency
32, so a saturated client would show, and the rest of the machine's (a co-located
Cassandra competes for the same cores). Before each system's phases and after each of
its slices the run waits, at most 1 s (0.2 s with --quick), for the machine to fall
quiet (under 0.3 cores busy for 100 ms): what one system's load left for Cassandra or
its flusher child to do is not timed as the next system's noise.

Every row's `cpu_us` is the server's CPU microseconds per request at concurrency 32:
utime + stime from /proc/<pid>/stat over the timed slices and the settling after each
(the write-behind a slice left is that slice's), summed over the server's processes
and their descendants (a flusher process the node starts counts; children it reaped
count through cutime + cstime), divided by the requests those slices sent. The
processes of a started system are known; a --target's are those its `pid=N` options
name (several are summed), and without one its `cpu_us` is null and its CPU lands in
the rest of the machine's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import uvloop

from bench.client import Connection, ProtocolError, Result, build_request, call, run
from bench.cpu import machine_cpu_seconds, settle, tree_cpu_seconds
from bench.node import Node, canopy, free_port, node
from bench.target import External, Server, parse_target

CASSANDRA = ("127.0.0.1", 9042)
REDIS = ("127.0.0.1", 6379)
REDIS_URL = "redis://127.0.0.1:6379/13"
API = "/api/v1/conversations"
OPS = ("get_message", "children", "lineage_100", "tree_100", "append", "fork_1000")
KIND = {op: "read" for op in OPS} | {"append": "append", "fork_1000": "fork"}
READS = ("get_message", "children", "lineage_100", "tree_100")
CONCURRENCY = 32
SLICES = 3


def log(message: str) -> None:
    print(f"[compare] {message}", file=sys.stderr, flush=True)


# -- settings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """How many requests, and how long, each phase may take (per op kind)."""

    sequential: dict[str, int]
    concurrent: dict[str, int]
    warm: dict[str, int]
    sequential_seconds: float
    concurrent_seconds: float
    warm_seconds: float = 0.5
    # Before each target's phases and after each slice, at most this long for the
    # machine to fall quiet (bench/cpu.py `settle`): one system's deferred work is not
    # the next one's noise.
    settle_seconds: float = 1.0

    @classmethod
    def default(cls, quick: bool) -> Budget:
        scale = 5 if quick else 1
        return cls(
            # A nearest-rank p99 needs 100 requests at least; of fewer, it is the slowest.
            sequential={"read": 1000 // scale, "append": 300 // scale, "fork": 100 // scale},
            # 200 forks copy 200k messages: past that the node's unflushed-bytes limit
            # (256 MiB) answers 503, as it should, and the run measures backpressure.
            concurrent={"read": 100_000, "append": 20_000, "fork": 200},
            warm={"read": 200, "append": 20, "fork": 4},
            sequential_seconds=2.0 if quick else 10.0,
            concurrent_seconds=1.0 if quick else 3.0,
            settle_seconds=0.2 if quick else 1.0,
        )


@dataclass(frozen=True)
class Store:
    name: str  # "sqlite" or "cassandra"
    redis: bool = False  # canopy journals to Redis (Cassandra only)

    def flags(self, system: str, keyspace: str) -> list[str]:
        if self.name == "sqlite":
            return []
        flags = ["--store", "scylla", "--scylla-nodes", f"{CASSANDRA[0]}:{CASSANDRA[1]}"]
        flags += ["--scylla-keyspace", keyspace]
        if self.redis and system in ("canopy", "canopy_inproc"):
            flags += ["--journal", "redis", "--redis-url", REDIS_URL]
        return flags


@dataclass(frozen=True)
class System:
    name: str
    ops: tuple[str, ...]
    command: Callable[[int, Path], list[str]]
    uses_store: bool = True
    needs_redis: bool = False  # runs only on a store whose canopy journals to Redis


def _serve(*extra: str) -> Callable[[int, Path], list[str]]:
    def command(port: int, data_dir: Path) -> list[str]:
        return canopy(port, data_dir, *extra)

    return command


def _bare(module: str) -> Callable[[int, Path], list[str]]:
    return lambda port, _: [sys.executable, "-m", module, "--port", str(port)]


BARE_OPS = ("get_message", "append")  # what the bare servers answer
SYSTEMS = (
    System("ceiling", BARE_OPS, _bare("bench.ceiling"), uses_store=False),
    System("floor", BARE_OPS, _bare("bench.floor"), uses_store=False),
    System("canopy", OPS, _serve()),
    System("cache_off", OPS, _serve("--cache", "off")),
    System("canopy_inproc", OPS, _serve("--flusher-process", "off"), needs_redis=True),
)
ORDER = ("canopy", "canopy_inproc", "cache_off", "ceiling", "floor")  # in the table, under each op
DEFAULT_SYSTEMS = ("canopy", "cache_off", "ceiling", "floor")


# -- processes -----------------------------------------------------------------------------


def answers(address: tuple[str, int], probe: bytes = b"", expect: bytes = b"") -> bool:
    try:
        with socket.create_connection(address, timeout=1.0) as connection:
            if probe:
                connection.sendall(probe)
                return connection.recv(64).startswith(expect)
            return True
    except OSError:
        return False


def has_cache_flag() -> bool:
    help_text = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--help"],
        capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    return "--cache" in help_text


def migrate(keyspace: str, store: Store) -> None:
    command = [sys.executable, "-m", "gateway.cli", "migrate", *store.flags("migrate", keyspace)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if done.returncode:
        raise RuntimeError(f"migrate {keyspace} failed:\n{done.stdout}\n{done.stderr}")


def drop_keyspaces(keyspaces: list[str]) -> None:
    if not keyspaces:
        return
    try:
        from cassandra import ProtocolVersion
        from cassandra.cluster import Cluster

        cluster = Cluster([CASSANDRA[0]], port=CASSANDRA[1], protocol_version=ProtocolVersion.V4)
        try:
            session = cluster.connect()
            for keyspace in keyspaces:
                session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}", timeout=120)
        finally:
            cluster.shutdown()
    except Exception as exc:  # leave a note, never mask the run's own outcome
        log(f"could not drop keyspaces {keyspaces}: {exc}")


def flush_redis() -> None:
    try:
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        client.flushdb()
        client.close()
    except Exception as exc:
        log(f"could not flush {REDIS_URL}: {exc}")


# -- workload ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    a: str  # conversation ids
    t: str
    b: str
    a_depth2: str  # message ids
    a_leaf: str


def text(tag: str, i: int) -> dict[str, str]:
    words = f"{tag} message {i}: " + "the quick brown fox jumps over the lazy dog; " * 5
    return {"type": "text", "text": words[:200]}


def message(parent: str, tag: str, i: int) -> dict[str, object]:
    role = "human" if i % 2 else "assistant"
    return {"parent_message_id": parent, "role": role, "content": text(tag, i),
            "created_by": "bench"}  # fmt: skip


async def conversation(connection: Connection, title: str) -> tuple[str, str]:
    """A new conversation: (its id, its root message's id)."""
    body = {"title": title, "created_by": "bench"}
    cid = (await call(connection, "POST", API, body))["conversation_id"]
    tree = await call(connection, "GET", f"{API}/{cid}/tree")
    return cid, tree["messages"][0]["message_id"]


async def chain(connection: Connection, cid: str, parent: str, length: int, tag: str) -> list[str]:
    ids = []
    for i in range(length):
        answer = await call(connection, "POST", f"{API}/{cid}/messages", message(parent, tag, i))
        parent = answer["message_id"]
        ids.append(parent)
    return ids


async def seed(server: Server) -> Workload:
    pool = [await Connection.open(server.port, server.host) for _ in range(12)]
    try:
        a, a_root = await conversation(pool[0], "A")
        t, t_root = await conversation(pool[0], "T")
        b, b_root = await conversation(pool[0], "B")
        chains = await asyncio.gather(
            chain(pool[0], a, a_root, 99, "a"),
            chain(pool[1], t, t_root, 99, "t"),
            chain(pool[2], b, b_root, 99, "b0"),
            *(chain(pool[2 + k], b, b_root, 100, f"b{k}") for k in range(1, 10)),
        )
        a_chain = chains[0]
        await asyncio.gather(*(chain(pool[k], a, a_chain[0], 1, f"side{k}") for k in range(9)))
        return Workload(a, t, b, a_depth2=a_chain[0], a_leaf=a_chain[-1])
    finally:
        for connection in pool:
            connection.close()


async def check(server: Server, w: Workload) -> None:
    """Every system must answer the same shapes, or the comparison means nothing."""
    c = await Connection.open(server.port, server.host)
    try:
        got = await call(c, "GET", f"{API}/{w.a}/messages/{w.a_depth2}")
        expect(got["depth"] == 2 and len(got["lineage"]) == 2, "get_message: depth 2", got)
        got = await call(c, "GET", f"{API}/{w.a}/messages/{w.a_depth2}/children")
        expect(len(got) == 10, "children: 10", len(got))
        got = await call(c, "GET", f"{API}/{w.a}/messages/{w.a_leaf}/lineage")
        expect(len(got) == 100 and got[-1]["depth"] == 100, "lineage_100: 100", len(got))
        got = await call(c, "GET", f"{API}/{w.t}/tree")
        expect(got["total_messages"] == len(got["messages"]) == 100, "tree_100: 100", len(got))
        got = await call(c, "GET", f"{API}/{w.a}/tree")
        expect(got["total_messages"] == 109, "A: 109 messages", got["total_messages"])
        got = await call(c, "GET", f"{API}/{w.b}/tree")
        expect(got["total_messages"] == 1000, "B: 1000 messages", got["total_messages"])
        got = await call(c, "POST", f"{API}/{w.a}/messages", message(w.a_leaf, "check", 0))
        expect(got["depth"] == 101, "append under the leaf: depth 101", got["depth"])
        fork = await call(c, "POST", f"{API}/{w.b}/fork", {"title": "f", "created_by": "bench"})
        got = await call(c, "GET", f"{API}/{fork['conversation_id']}/tree")
        expect(got["total_messages"] == 1000, "fork_1000: 1000 messages", got["total_messages"])
    finally:
        c.close()


def expect(ok: bool, what: str, got: object) -> None:
    if not ok:
        raise AssertionError(f"workload check failed: {what}; got {str(got)[:300]}")


def requests(op: str, w: Workload, server: Server) -> list[bytes]:
    port, host = server.port, server.host
    get = {
        "get_message": f"{API}/{w.a}/messages/{w.a_depth2}",
        "children": f"{API}/{w.a}/messages/{w.a_depth2}/children",
        "lineage_100": f"{API}/{w.a}/messages/{w.a_leaf}/lineage",
        "tree_100": f"{API}/{w.t}/tree",
    }
    if op in get:
        return [build_request("GET", get[op], port=port, host=host)]
    if op == "append":
        bodies = [message(w.a_depth2, "append", i) for i in range(2)]  # both roles
        path = f"{API}/{w.a}/messages"
        return [build_request("POST", path, b, port=port, host=host) for b in bodies]
    fork = {"title": "fork", "created_by": "bench"}
    return [build_request("POST", f"{API}/{w.b}/fork", fork, port=port, host=host)]


BARE_WORKLOAD = Workload(
    a="00000000-0000-4000-8000-000000000000", t="", b="",
    a_depth2="00000000-0000-4000-8000-000000000002", a_leaf="",
)  # fmt: skip


# -- measuring -----------------------------------------------------------------------------


@dataclass
class Measurement:
    op: str
    system: str
    store: str
    p50_ms: float
    p99_ms: float
    rps: float
    sequential: int  # requests timed at concurrency 1
    concurrent: int  # requests at concurrency 32
    client_cpu: float  # cores used at concurrency 32: this process
    server_cpu: float  # the server's processes (NaN when their pids are unknown)
    other_cpu: float  # everything else on the machine (e.g. Cassandra)
    cpu_us: float | None  # the server's CPU microseconds per request at concurrency 32
    errors: int = 0
    first_error: str = ""

    def row(self) -> dict[str, object]:
        return {"op": self.op, "system": self.system, "store": self.store,
                "p50_ms": round(self.p50_ms, 4), "p99_ms": round(self.p99_ms, 4),
                "rps": round(self.rps, 1),
                "cpu_us": None if self.cpu_us is None else round(self.cpu_us, 1)}  # fmt: skip


@dataclass(frozen=True)
class Target:
    """One server and the requests it gets for the op being measured."""

    server: Server
    system: str
    batch: list[bytes]


async def measure(targets: list[Target], op: str, budget: Budget, store: str) -> list[Measurement]:
    """Measure `op` on each target. At concurrency 32 their slices alternate (A B A B A B)
    and each reports its median slice: a drift in the machine's speed, or a burst of
    background work (Cassandra compacting on the same cores), hits both and moves less.
    """
    kind = KIND[op]
    phases: list[list[Result]] = []
    for target in targets:
        port, host, batch = target.server.port, target.server.host, target.batch
        await settle(budget.settle_seconds)  # the last target's write-behind, Cassandra's
        warm = await run(
            port, batch, connections=8, count=budget.warm[kind], seconds=budget.warm_seconds,
            host=host,
        )  # fmt: skip
        one = await run(
            port, batch, count=budget.sequential[kind], seconds=budget.sequential_seconds,
            host=host,
        )  # fmt: skip
        phases.append([warm, one])
    slices: list[list[Result]] = [[] for _ in targets]
    server = [0.0] * len(targets)  # over the slices: the cores column
    billed = [0.0] * len(targets)  # over the slices and the settling after each: cpu_us
    other = [0.0] * len(targets)
    for _ in range(SLICES):
        for i, target in enumerate(targets):
            pids = target.server.pids
            server_before, machine_before = tree_cpu_seconds(pids), machine_cpu_seconds()
            result = await run(
                target.server.port, target.batch, connections=CONCURRENCY,
                count=budget.concurrent[kind] // SLICES, seconds=budget.concurrent_seconds / SLICES,
                host=target.server.host,
            )  # fmt: skip
            used = tree_cpu_seconds(pids) - server_before
            server[i] += used
            other[i] += machine_cpu_seconds() - machine_before - used - result.cpu
            slices[i].append(result)
            # What the slice left (a flusher child writing its appends behind) is the
            # slice's: settled before the next target's slice, and billed to this one.
            await settle(budget.settle_seconds)
            billed[i] += tree_cpu_seconds(pids) - server_before
    measured = []
    for i, target in enumerate(targets):
        warm, one = phases[i]
        elapsed = sum(r.elapsed for r in slices[i])
        failed = [r for r in (warm, one, *slices[i]) if r.errors]
        known = bool(target.server.pids)
        served = sum(r.count for r in slices[i])
        measured.append(
            Measurement(
                op,
                target.system,
                store,
                one.percentile_ms(50),
                one.percentile_ms(99),
                statistics.median(r.rps for r in slices[i]),
                one.count,
                served,
                sum(r.cpu for r in slices[i]) / elapsed,
                server[i] / elapsed if known else math.nan,
                max(0.0, other[i] / elapsed),  # without pids it includes the target's CPU
                billed[i] / served * 1e6 if known and served else None,
                sum(r.errors for r in failed),
                failed[0].first_error if failed else "",
            )  # fmt: skip
        )
    return measured


@dataclass
class Plan:
    budget: Budget
    stores: list[Store]
    systems: list[System]
    server_cpus: set[int] | None
    ops: tuple[str, ...] = OPS
    externals: list[External] = field(default_factory=list)
    keyspaces: list[str] = field(default_factory=list)
    results: list[Measurement] = field(default_factory=list)


@contextlib.contextmanager
def start(plan: Plan, store: Store, system: System) -> Iterator[Node]:
    """A fresh node of `system` on `store` (its own data directory or keyspace)."""
    keyspace = f"canopy_bench_{os.getpid()}_{system.name}"
    if store.name == "cassandra" and system.uses_store:
        plan.keyspaces.append(keyspace)
        log(f"{store.name} {system.name}: migrate {keyspace}")
        migrate(keyspace, store)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="canopy-compare-") as data:
        command = system.command(port, Path(data) / "data")
        if system.uses_store:
            command += store.flags(system.name, keyspace)
        with node(command, port, Path(data) / "node.log", plan.server_cpus) as started:
            try:
                yield started
            except BaseException:
                log(f"{system.name} failed; the last lines of its log:\n{started.tail()}")
                raise


@dataclass(frozen=True)
class Beside:
    """A server measured in canopy's alternating slices, with the workload seeded into it."""

    server: Server
    system: str
    workload: Workload
    ops: tuple[str, ...] = OPS

    def target(self, op: str) -> Target:
        return Target(self.server, self.system, requests(op, self.workload, self.server))


async def seeded(server: Server, system: str, store: Store) -> Workload:
    began = time.perf_counter()
    workload = await seed(server)
    await check(server, workload)
    log(f"{store.name} {system}: seeded in {time.perf_counter() - began:.1f} s")
    return workload


async def run_store(plan: Plan, store: Store) -> None:
    """Every system on `store`. The bare servers and the --target servers stay up beside
    canopy (idle servers cost nothing) and their slices alternate with canopy's; without
    canopy each is measured alone."""
    bare = [s for s in plan.systems if not s.uses_store]  # the ceiling and the floor
    others = [s for s in plan.systems if s not in bare and (store.redis or not s.needs_redis)]
    with contextlib.ExitStack() as stack:
        beside: list[Beside] = []
        for system in bare:
            server = stack.enter_context(start(plan, store, system)).server()
            beside.append(Beside(server, system.name, BARE_WORKLOAD, system.ops))
        for external in plan.externals:
            try:
                workload = await seeded(external.server, external.name, store)
            except (OSError, ProtocolError) as exc:
                raise RuntimeError(f"--target {external.name} ({external.url}): {exc}") from exc
            beside.append(Beside(external.server, external.name, workload))
        for system in others:
            with start(plan, store, system) as started:
                with_canopy = beside if system.name == "canopy" else []
                await run_ops(plan, store, system, started.server(), with_canopy)
        if not any(s.name == "canopy" for s in others):
            for alone in beside:
                for op in (op for op in alone.ops if op in plan.ops):
                    await record(plan, store, [alone.target(op)], op)


async def run_ops(
    plan: Plan, store: Store, system: System, started: Server, beside: list[Beside]
) -> None:
    workload = await seeded(started, system.name, store)
    await asyncio.sleep(0.5)  # let a write-behind node flush the seed before timing
    for op in (op for op in system.ops if op in plan.ops):
        targets = [Target(started, system.name, requests(op, workload, started))]
        targets += [b.target(op) for b in beside if op in b.ops]
        await record(plan, store, targets, op)


async def record(plan: Plan, store: Store, targets: list[Target], op: str) -> None:
    for result in await measure(targets, op, plan.budget, store.name):
        plan.results.append(result)
        log(
            f"{store.name} {result.system} {op}: p50 {result.p50_ms:.3f} ms, "
            f"p99 {result.p99_ms:.3f} ms, {result.rps:,.0f} rps, "
            + ("cpu unknown" if result.cpu_us is None else f"{result.cpu_us:.0f} µs cpu")
            + (f", {result.errors} ERRORS ({result.first_error})" if result.errors else "")
        )


# -- reporting -----------------------------------------------------------------------------


def find(results: list[Measurement], op: str, system: str, store: str) -> Measurement | None:
    return next((m for m in results if (m.op, m.system, m.store) == (op, system, store)), None)


def ratio(numerator: float | None, denominator: float | None) -> float:
    if not numerator or not denominator or math.isnan(numerator) or math.isnan(denominator):
        return math.nan
    return numerator / denominator


def table(results: list[Measurement], store: str) -> str:
    head = (
        f"{'op':<12} {'system':<10} {'p50 ms':>8} {'p99 ms':>8} {'rps':>9} "
        f"{'p50 off/canopy':>14} {'rps canopy/off':>14} {'rps canopy/ceil':>15} "
        f"{'srv cpu':>7} {'cpu us':>7} {'cli cpu':>7} {'oth cpu':>7}"
    )
    lines = [f"store: {store}", head, "-" * len(head)]
    rows = sorted(
        (m for m in results if m.store == store),
        key=lambda m: (OPS.index(m.op), *place(m.system)),
    )
    for m in rows:
        cells = ["", "", ""]
        if m.system == "canopy":
            off = find(results, m.op, "cache_off", store)
            cells[0] = f"{ratio(off.p50_ms, m.p50_ms):.1f}x" if off else "n/a"
            cells[1] = f"{ratio(m.rps, off.rps):.1f}x" if off else "n/a"
            ceiling = find(results, m.op, "ceiling", store)
            if m.op in BARE_OPS:
                cells[2] = f"{ratio(m.rps, ceiling.rps):.2f}" if ceiling else "n/a"
        lines.append(
            f"{m.op:<12} {m.system:<10} {m.p50_ms:>8.3f} {m.p99_ms:>8.3f} {m.rps:>9,.0f} "
            f"{cells[0]:>14} {cells[1]:>14} {cells[2]:>15} "
            f"{cores(m.server_cpu)} {micros(m.cpu_us)} {cores(m.client_cpu)} {cores(m.other_cpu)}"
            + (f"  {m.errors} ERRORS" if m.errors else "")
        )
    lines.append(
        "p50/p99 at concurrency 1; rps at 32 (median of 3 slices); cpu at 32, in cores: "
        "the server, its CPU µs per request, this client, the rest of the machine "
        "(n/a: a --target without pid=)"
    )
    return "\n".join(lines)


def place(system: str) -> tuple[int, str]:
    """Canopy's own systems in ORDER, then the --target ones by name."""
    return (ORDER.index(system), "") if system in ORDER else (len(ORDER), system)


def cores(used: float) -> str:
    return f"{'n/a':>7}" if math.isnan(used) else f"{used:>7.0%}"


def micros(cpu_us: float | None) -> str:
    return f"{'n/a':>7}" if cpu_us is None else f"{cpu_us:>7.1f}"


# The write-path issue's absolute figures, per store: server CPU µs per append at
# concurrency 32 (flush included), append p50 at concurrency 1, fork of 1,000 p99.
APPEND_CPU_US = {"sqlite": 80.0, "cassandra": 130.0}
APPEND_P50_MS = {"cassandra": 0.3}
FORK_P99_MS = {"cassandra": 10.0}


def targets(results: list[Measurement], store: str) -> list[dict[str, object]]:
    """The issues' targets: get_message rps >= 80% of the ceiling, reads' p50 >= 10x
    lower than cache_off, appends' p50 >= 3x lower; append rps >= 2x every --target's;
    the write path's absolute figures (above)."""
    found: list[dict[str, object]] = []

    def add(name: str, value: float | None, goal: float, *, at_most: bool = False) -> None:
        if value is not None and not math.isnan(value):
            met = value <= goal if at_most else value >= goal
            found.append({"store": store, "target": name, "value": round(value, 3),
                          "goal": goal, "at_most": at_most, "met": met})  # fmt: skip

    def canopy(op: str) -> Measurement | None:
        return find(results, op, "canopy", store)

    def off(op: str) -> Measurement | None:
        return find(results, op, "cache_off", store)

    def p50(m: Measurement | None) -> float | None:
        return m.p50_ms if m else None

    def rps(m: Measurement | None) -> float | None:
        return m.rps if m else None

    add(
        "get_message rps canopy/ceiling",
        ratio(rps(canopy("get_message")), rps(find(results, "get_message", "ceiling", store))),
        0.8,
    )
    for op in READS:
        add(f"{op} p50 cache_off/canopy", ratio(p50(off(op)), p50(canopy(op))), 10.0)
    add("append p50 cache_off/canopy", ratio(p50(off("append")), p50(canopy("append"))), 3.0)
    external = sorted({m.system for m in results if m.store == store} - set(ORDER))
    for name in external:
        theirs = rps(find(results, "append", name, store))
        add(f"append rps canopy/{name}", ratio(rps(canopy("append")), theirs), 2.0)
    append = canopy("append")
    if store in APPEND_CPU_US and append is not None:
        add("append cpu_us canopy", append.cpu_us, APPEND_CPU_US[store], at_most=True)
    if store in APPEND_P50_MS:
        add("append p50 ms canopy", p50(append), APPEND_P50_MS[store], at_most=True)
    fork = canopy("fork_1000")
    if store in FORK_P99_MS and fork is not None:
        add("fork_1000 p99 ms canopy", fork.p99_ms, FORK_P99_MS[store], at_most=True)
    return found


# -- main ----------------------------------------------------------------------------------


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.compare", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="a fifth of the requests")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--stores", default="auto", help="sqlite,cassandra (default: auto)")
    parser.add_argument(
        "--systems", default=",".join(DEFAULT_SYSTEMS),
        help=f"of {', '.join(ORDER)} (canopy_inproc: canopy with --flusher-process off, "
        "on Cassandra + Redis only)",
    )  # fmt: skip
    parser.add_argument("--ops", default=",".join(OPS))
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument(
        "--target", action="append", type=parse_target, default=[], metavar="NAME=URL[,pid=N]",
        help="a running server with seed 000's API, measured beside canopy (repeatable); "
        "pid=N (repeatable) names its processes for cpu_us",
    )  # fmt: skip
    args = parser.parse_args(argv)
    names = [t.name for t in args.target]
    for name in names:
        if name in ORDER or names.count(name) > 1:
            parser.error(f"--target {name}: the name is taken")
    for pid in (pid for t in args.target for pid in t.server.pids):
        if not Path(f"/proc/{pid}").exists():
            parser.error(f"--target pid={pid}: no such process")  # it would count 0 µs
    return args


def choose(args: argparse.Namespace) -> tuple[list[Store], list[System]]:
    cassandra = answers(CASSANDRA)
    wanted = {"sqlite", "cassandra"} if args.stores == "auto" else set(args.stores.split(","))
    stores = [Store("sqlite")] if "sqlite" in wanted else []
    if "cassandra" in wanted and cassandra:
        stores.append(Store("cassandra", redis=answers(REDIS, b"PING\r\n", b"+PONG")))
    elif "cassandra" in wanted:
        log(f"cassandra: skipped, nothing answers on {CASSANDRA[0]}:{CASSANDRA[1]}")
    names = args.systems.split(",")
    systems = [s for s in SYSTEMS if s.name in names]
    if any(s.name == "cache_off" for s in systems) and not has_cache_flag():
        log("cache_off: skipped, `gateway.cli serve` has no --cache option yet")
        systems = [s for s in systems if s.name != "cache_off"]
    return stores, systems


def placement(no_pin: bool) -> tuple[set[int] | None, set[int] | None]:
    """(server CPUs, client CPUs): one core each when there are two or more."""
    cpus = sorted(os.sched_getaffinity(0))
    if no_pin or len(cpus) < 2:
        return None, None
    return {cpus[0]}, {cpus[1]}


async def main_async(args: argparse.Namespace) -> int:
    began = time.perf_counter()
    load = os.getloadavg()[0]
    if load > 1.0:
        log(f"the machine is busy (load average {load:.1f}): expect noisy figures")
    stores, systems = choose(args)
    server_cpus, client_cpus = placement(args.no_pin)
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)
    budget = Budget.default(args.quick)
    ops = tuple(op for op in OPS if op in args.ops.split(","))
    plan = Plan(budget, stores, systems, server_cpus, ops, externals=args.target)
    redis_used = any(s.redis for s in stores)
    if redis_used:
        flush_redis()
    try:
        for store in stores:
            await run_store(plan, store)
    finally:
        drop_keyspaces(plan.keyspaces)
        if redis_used:
            flush_redis()
    seconds = time.perf_counter() - began
    found = [t for store in stores for t in targets(plan.results, store.name)]
    report(plan, found, seconds, args)
    errors = sum(m.errors for m in plan.results)
    if errors:
        for m in plan.results:
            if m.errors:
                log(f"ERRORS: {m.store} {m.system} {m.op}: {m.errors}, first: {m.first_error}")
        return 1
    return 0


def report(
    plan: Plan, found: list[dict[str, object]], seconds: float, args: argparse.Namespace
) -> None:
    for store in plan.stores:
        print()
        print(table(plan.results, store.name))
        for target in (t for t in found if t["store"] == store.name):
            verdict = "ok" if target["met"] else "MISSED"
            goal = f"{'<=' if target['at_most'] else '>='} {target['goal']}"
            print(f"  target {target['target']}: {target['value']} ({goal}) {verdict}")
    print(f"\n{len(plan.results)} rows in {seconds:.0f} s")
    if args.json:
        document = {
            "results": [m.row() for m in plan.results],
            "details": [asdict(m) for m in plan.results],
            "targets": found,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "platform": platform.platform(), "loadavg_end": os.getloadavg()},
            "settings": {"quick": args.quick, "concurrency": CONCURRENCY,
                         "budget": asdict(plan.budget), "seconds": round(seconds, 1),
                         "pinned": plan.server_cpus is not None,
                         "stores": [asdict(s) for s in plan.stores],
                         "targets": [{"name": t.name, "url": t.url, "pids": t.server.pids}
                                     for t in plan.externals]},
        }  # fmt: skip
        args.json.write_text(json.dumps(finite(document), indent=2, allow_nan=False) + "\n")
        print(f"wrote {args.json}")


def finite(value: object) -> object:
    """NaN (a phase with no successful request) becomes null: JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    return uvloop.run(main_async(parse(argv)))


if __name__ == "__main__":
    sys.exit(main())
