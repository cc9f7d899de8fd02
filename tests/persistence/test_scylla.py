"""Cassandra-specific behaviour beyond the Store contract: the schema migration."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

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
