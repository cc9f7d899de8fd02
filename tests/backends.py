"""Opening the real server backends in tests, each test starting from empty data."""

from __future__ import annotations

import functools
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import redis

from persistence.journal_redis import RedisJournal
from persistence.redis_pool import RedisPool, RedisSettings
from persistence.scylla import TABLES, ScyllaConfig, ScyllaStore
from tests.services import CASSANDRA_NODES, KEYSPACE, REDIS_CLUSTER_URL, REDIS_URL, require

SCYLLA = ScyllaConfig(nodes=(CASSANDRA_NODES,), keyspace=KEYSPACE)
_fresh: set[Path] = set()


def first_use(place: Path) -> bool:
    """True the first time a test's scratch directory opens a backend: time to wipe it."""
    if place in _fresh:
        return False
    _fresh.add(place)
    return True


@functools.cache
def _admin_session():  # type: ignore[no-untyped-def]
    from persistence.scylla import _cluster, migrate

    migrate(SCYLLA)
    session = _cluster(SCYLLA).connect(KEYSPACE)
    drop_abandoned_keyspaces(session)
    return session


def drop_abandoned_keyspaces(session) -> None:  # type: ignore[no-untyped-def]
    """Drop the keyspaces of earlier runs whose process is gone (a killed run never drops
    its own): Cassandra keeps every table's memtables, and 164 of them took its 1 GiB heap."""
    from cassandra import OperationTimedOut

    prefix = KEYSPACE.rsplit("_", 1)[0] + "_"
    rows = session.execute("SELECT keyspace_name FROM system_schema.keyspaces")
    for (name,) in rows:
        pid = name.removeprefix(prefix)
        if name == KEYSPACE or not name.startswith(prefix) or not pid.isdigit():
            continue
        if Path(f"/proc/{pid}").exists():
            continue  # another run, still going
        try:
            session.execute(f"DROP KEYSPACE IF EXISTS {name}", timeout=120)
        except OperationTimedOut as exc:
            print(f"abandoned keyspace {name} not dropped: {exc}", file=sys.stderr)


def reset_admin_session() -> None:
    """Forget the admin connection (after a Cassandra restart); the next use reconnects,
    and the next wipe empties every table."""
    global _writes_at_wipe
    _writes_at_wipe = None
    if _admin_session.cache_info().currsize:
        _admin_session().cluster.shutdown()
        _admin_session.cache_clear()


_TABLE_NAMES = tuple(s.split("EXISTS", 1)[1].split("(", 1)[0].strip() for s in TABLES)
_WRITES = "SELECT table_name, count FROM system_views.local_write_latency WHERE keyspace_name = %s"
# Each table's count of writes when last emptied; None after a restart of Cassandra
# (its counts start again from 0): every table is emptied then.
_writes_at_wipe: dict[str, int] | None = {}


def wipe_cassandra() -> None:
    """Empty every table written since the last wipe, or holding a row.

    A TRUNCATE costs 20-60 ms even of an empty table (0.35-0.49 s for all eleven, and
    they do not overlap): over the ~560 tests on Cassandra, minutes of `make test`. A
    table's live rows alone do not say it is clean: a delete leaves a tombstone stamped
    on the rows' scale (docs/decisions.md), which hides a later test's rows of the same
    ids. Cassandra's per-table write counts (deletes and LWTs included) do."""
    global _writes_at_wipe
    session = _admin_session()
    counts = session.execute_async(_WRITES, (KEYSPACE,))
    probes = [(t, session.execute_async(f"SELECT * FROM {t} LIMIT 1")) for t in _TABLE_NAMES]
    written, before = dict(counts.result()), _writes_at_wipe
    for table, probe in probes:
        if before is None or written.get(table) != before.get(table, 0) or probe.result().one():
            session.execute(f"TRUNCATE {table}")
    _writes_at_wipe = written


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
    """Drop this run's keyspace. A schema change waits for every table's flush: on a busy
    machine it can take far longer than a query's 10 s, and a keyspace left behind (named
    by the run's pid) harms nothing, so a timeout is reported, not failed."""
    from cassandra import OperationTimedOut

    if _admin_session.cache_info().currsize:
        session = _admin_session()
        try:
            session.execute(f"DROP KEYSPACE IF EXISTS {KEYSPACE}", timeout=120)
        except OperationTimedOut as exc:
            print(f"keyspace {KEYSPACE} not dropped: {exc}", file=sys.stderr)
        finally:
            session.cluster.shutdown()


@asynccontextmanager
async def cassandra_store(directory: Path) -> AsyncIterator[ScyllaStore]:
    require("cassandra")
    if first_use(directory):
        wipe_cassandra()
    async with ScyllaStore(SCYLLA) as store:
        yield store


@asynccontextmanager
async def redis_journal(directory: Path, *, cluster: bool = False) -> AsyncIterator[RedisJournal]:
    """A journal over a pool of its own; the first one of a test starts from empty data."""
    settings = redis_settings(cluster=cluster, timeout=10.0)  # no contract test is about timeouts
    if first_use(directory / ("redis-cluster" if cluster else "redis")):
        wipe_redis_cluster() if cluster else wipe_redis()
    async with RedisPool(settings) as pool, RedisJournal(pool) as journal:
        yield journal
