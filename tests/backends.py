"""Opening the real server backends in tests, each test starting from empty data."""

from __future__ import annotations

import functools
import sys
from collections.abc import AsyncIterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import redis

from persistence.journal_redis import RedisJournal
from persistence.redis_pool import RedisPool, RedisSettings
from persistence.scylla import TABLES, ScyllaConfig, ScyllaStore
from tests.services import CASSANDRA_NODES, KEYSPACE, REDIS_CLUSTER_URL, REDIS_URL, require

# Two keyspaces take turns: a test runs on one while the last test's is emptied behind
# it (a TRUNCATE is slow, see `wipe_cassandra`). `keyspace()` is the one in use now. A
# third gained nothing: Cassandra runs one keyspace's truncates at a time, about as
# long as a test takes.
KEYSPACES = (KEYSPACE, f"{KEYSPACE}_1")
_in_use = 0
_fresh: set[Path] = set()


def keyspace() -> str:
    """The keyspace this test runs on (it changes only at a wipe, between tests)."""
    return KEYSPACES[_in_use]


def scylla(name: str | None = None) -> ScyllaConfig:
    """The store settings of this test's keyspace (or of the keyspace named)."""
    return ScyllaConfig(nodes=(CASSANDRA_NODES,), keyspace=name or keyspace())


def first_use(place: Path) -> bool:
    """True the first time a test's scratch directory opens a backend: time to wipe it."""
    if place in _fresh:
        return False
    _fresh.add(place)
    return True


@functools.cache
def _admin_session():  # type: ignore[no-untyped-def]
    from persistence.scylla import _cluster, migrate

    for name in KEYSPACES:
        migrate(scylla(name))
    session = _cluster(scylla()).connect()
    drop_abandoned_keyspaces(session)
    return session


def drop_abandoned_keyspaces(session) -> None:  # type: ignore[no-untyped-def]
    """Drop the keyspaces of earlier runs whose process is gone (a killed run never drops
    its own): Cassandra keeps every table's memtables, and 164 of them took its 1 GiB heap."""
    from cassandra import OperationTimedOut

    prefix = KEYSPACE.rsplit("_", 1)[0] + "_"
    rows = session.execute("SELECT keyspace_name FROM system_schema.keyspaces")
    for (name,) in rows:
        pid = name.removeprefix(prefix).split("_", 1)[0]  # canopy_test_PID, canopy_test_PID_1
        if name in KEYSPACES or not name.startswith(prefix) or not pid.isdigit():
            continue
        if Path(f"/proc/{pid}").exists():
            continue  # another run, still going
        try:
            session.execute(f"DROP KEYSPACE IF EXISTS {name}", timeout=120)
        except OperationTimedOut as exc:
            print(f"abandoned keyspace {name} not dropped: {exc}", file=sys.stderr)


def reset_admin_session() -> None:
    """Forget the admin connection (after a Cassandra restart); the next use reconnects,
    and the next wipes empty every table of every keyspace."""
    finish_emptying()  # their failures (Cassandra went away under them) are answered below
    _emptying.clear()
    _writes_at_wipe.clear()
    if _admin_session.cache_info().currsize:
        _admin_session().cluster.shutdown()
        _admin_session.cache_clear()


_TABLE_NAMES = tuple(s.split("EXISTS", 1)[1].split("(", 1)[0].strip() for s in TABLES)
_WRITES = "SELECT table_name, count FROM system_views.local_write_latency WHERE keyspace_name = %s"
# Each keyspace's count of writes per table when last emptied; missing (at the start, or
# after a restart of Cassandra, whose counts start again from 0): every table is emptied.
_writes_at_wipe: dict[str, dict[str, int]] = {}
_behind = ThreadPoolExecutor(1, thread_name_prefix="keyspace-wipe")
_emptying: dict[str, Future[None]] = {}  # keyspaces out of use, being emptied in turn


def wipe_cassandra() -> None:
    """Give the test an empty keyspace: the next in turn, emptied behind the tests since
    it was last used and checked again here (a process of an earlier test may have
    written since); the one the last test used is emptied behind this one.

    A TRUNCATE costs 20-60 ms even of an empty table (0.35-0.49 s for all eleven, and
    they do not overlap; on tmpfs no less), over the ~560 tests on Cassandra minutes of
    `make test` when each test waited for them."""
    global _in_use
    used = keyspace()
    _in_use = (_in_use + 1) % len(KEYSPACES)
    emptying = _emptying.pop(keyspace(), None)
    if emptying is not None and emptying.exception() is not None:  # Cassandra went away
        _writes_at_wipe.pop(keyspace(), None)  # under it: every table again
    _empty(keyspace())  # normally nothing left to do: a probe of each table
    _emptying[used] = _behind.submit(_empty, used)


def finish_emptying() -> None:
    """Wait until the keyspaces out of use are emptied (a failure, if any, is answered by
    the wipe that takes that keyspace up)."""
    for emptying in list(_emptying.values()):
        emptying.exception()


def _empty(name: str) -> None:
    """Empty every table of the keyspace written since it was last emptied, or holding
    a row. Live rows alone do not say a table is clean: a delete leaves a tombstone
    stamped on the rows' scale (docs/decisions.md), which hides a later test's rows of
    the same ids; Cassandra's per-table write counts (deletes and LWTs included) do."""
    session = _admin_session()
    counts = session.execute_async(_WRITES, (name,))
    probes = [(t, session.execute_async(f"SELECT * FROM {name}.{t} LIMIT 1")) for t in _TABLE_NAMES]
    written, before = dict(counts.result()), _writes_at_wipe.pop(name, None)
    for table, probe in probes:
        if before is None or written.get(table) != before.get(table, 0) or probe.result().one():
            session.execute(f"TRUNCATE {name}.{table}", timeout=120)
    _writes_at_wipe[name] = written


def wipe_redis() -> None:
    with redis.Redis.from_url(REDIS_URL) as client:
        client.flushdb()


def wipe_redis_cluster() -> None:
    on_every_server(RedisSettings(REDIS_CLUSTER_URL, cluster=True), "FLUSHALL")


def on_every_server(settings: RedisSettings, *command: str) -> None:
    """Run a command on the single Redis, or on every master of the cluster (redis-py's
    blocking RedisCluster leaves a socket unclosed after a command sent to all nodes)."""
    with redis.Redis.from_url(settings.urls()[0]) as seed:
        if not settings.cluster:
            seed.execute_command(*command)
            return
        ranges = seed.execute_command("CLUSTER", "SLOTS")
    for host, port in {(r[2][0].decode(), int(r[2][1])) for r in ranges}:
        with redis.Redis(host, port) as master:
            master.execute_command(*command)


def redis_settings(*, cluster: bool = False, **options: float) -> RedisSettings:
    """The test Redis (or the test Redis Cluster), required: skipped or failed if absent."""
    require("redis-cluster" if cluster else "redis")
    url = REDIS_CLUSTER_URL if cluster else REDIS_URL
    return RedisSettings(url=url, cluster=cluster, **options)  # type: ignore[arg-type]


def drop_keyspace() -> None:
    """Drop this run's keyspaces. A schema change waits for every table's flush: on a busy
    machine it can take far longer than a query's 10 s, and a keyspace left behind (named
    by the run's pid) harms nothing, so a timeout is reported, not failed."""
    from cassandra import OperationTimedOut

    finish_emptying()  # before its keyspace goes
    if _admin_session.cache_info().currsize:
        session = _admin_session()
        try:
            for name in KEYSPACES:
                session.execute(f"DROP KEYSPACE IF EXISTS {name}", timeout=120)
        except OperationTimedOut as exc:
            print(f"keyspaces {KEYSPACES} not dropped: {exc}", file=sys.stderr)
        finally:
            session.cluster.shutdown()


@asynccontextmanager
async def cassandra_store(directory: Path) -> AsyncIterator[ScyllaStore]:
    require("cassandra")
    if first_use(directory):
        wipe_cassandra()
    async with ScyllaStore(scylla()) as store:
        yield store


@asynccontextmanager
async def redis_journal(directory: Path, *, cluster: bool = False) -> AsyncIterator[RedisJournal]:
    """A journal over a pool of its own; the first one of a test starts from empty data."""
    settings = redis_settings(cluster=cluster, timeout=10.0)  # no contract test is about timeouts
    if first_use(directory / ("redis-cluster" if cluster else "redis")):
        wipe_redis_cluster() if cluster else wipe_redis()
    async with RedisPool(settings) as pool, RedisJournal(pool) as journal:
        yield journal
