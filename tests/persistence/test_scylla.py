"""Cassandra-specific behaviour beyond the Store contract: the schema migration, closing."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import threading

import pytest

from persistence.scylla import ScyllaStore
from tests.backends import SCYLLA, _admin_session
from tests.services import require


def test_migrate_is_idempotent_and_creates_every_table() -> None:
    require("cassandra")
    keyspace = f"canopy_migrate_{os.getpid()}"
    command = [
        sys.executable, "-m", "gateway.cli", "migrate", "--scylla-keyspace", keyspace,
        "--scylla-nodes", ",".join(SCYLLA.nodes), "--scylla-replication", "SimpleStrategy:1",
    ]  # fmt: skip
    session = _admin_session()
    try:
        for _ in range(2):
            done = subprocess.run(command, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr
        tables = {
            row.table_name
            for row in session.execute(
                "SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s", (keyspace,)
            )
        }
        assert tables == {
            "conversations", "messages", "branches", "shares",
            "user_conversations", "user_conversation_activity", "shared_conversations",
            "conversation_activity",
        }  # fmt: skip
        replication = session.execute(
            "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s", (keyspace,)
        ).one()
        assert replication.replication["replication_factor"] == "1"
    finally:
        session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}")


def test_replication_spec_maps_to_cql() -> None:
    config = dataclasses.replace(SCYLLA, replication="NetworkTopologyStrategy:dc1=3,dc2=2")
    assert config.replication_map() == {"class": "NetworkTopologyStrategy", "dc1": 3, "dc2": 2}


async def test_close_is_bounded_when_the_driver_shutdown_hangs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """cassandra-driver's Cluster.shutdown can hang for minutes (scylladb/python-driver#172);
    a node's shutdown must not wait for it."""
    require("cassandra")
    release = threading.Event()
    store = ScyllaStore(dataclasses.replace(SCYLLA, close_timeout=0.2))
    await store.__aenter__()
    cluster = store._cluster
    assert cluster is not None
    real_shutdown = cluster.shutdown

    def stuck() -> None:
        release.wait(60)  # the hang, until the test lets it go
        real_shutdown()

    monkeypatch.setattr(cluster, "shutdown", stuck)
    try:
        async with asyncio.timeout(30):  # a hang detector far above the 0.2 s bound
            await store.__aexit__(None, None, None)
        assert not release.is_set()  # it returned while the driver was still stuck
    finally:
        release.set()
