"""Cassandra-specific behaviour beyond the Store contract: the schema migration, closing."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import threading
from datetime import UTC, datetime

import msgspec
import pytest

from persistence.records import Branch, Conversation, Message
from persistence.scylla import ScyllaStore
from persistence.store import Changes
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
            "conversation_activity", "expiring_conversations", "accounts", "accounts_by_email",
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


async def test_a_conversation_delete_wins_over_its_recent_rows() -> None:
    """Rows written at version 10 are gone after the conversation's delete at version 11
    (the delete's timestamp was on a smaller scale than the rows' and lost to them)."""
    require("cassandra")
    from tests.backends import wipe_cassandra

    wipe_cassandra()
    at = datetime(2026, 1, 1, tzinfo=UTC)
    meta = Conversation("c-del", "root", "t", None, at, "u", at, False, None, None, 2, 10)
    root = Message("root", None, "root", b"{}", {}, at, "u", 1, 0)
    child = Message("child", "root", "human", b'{"type":"text","text":"x"}', {}, at, "u", 2, 1)
    branch = Branch("b1", "main", "child", at, at, "u")
    async with ScyllaStore(SCYLLA) as store:
        messages = {"root": root, "child": child}
        written = Changes(conversation=meta, messages=messages, branches={"b1": branch})
        written.version = 10
        await store.write("c-del", written)
        assert [m.message_id for m in await store.lineage("c-del", "child")] == ["root", "child"]
        gone = msgspec.structs.replace(meta, deleted=True, version=11)
        await store.write("c-del", Changes(conversation=gone, version=11))
        assert await store.lineage("c-del", "child") == []
        assert await store.children("c-del", "root") == []
        head = await store.head("c-del")
        assert head is not None and head.conversation.deleted and head.branches == []


async def test_sessions_speak_protocol_v4() -> None:
    """v5's checksummed segments made a connect fail in a CI run ("CRC mismatch on header",
    PYTHON-1337); v4 is what ScyllaDB speaks and Cassandra 5 still serves."""
    require("cassandra")
    async with ScyllaStore(SCYLLA) as store:
        assert store._cluster is not None and store._cluster.protocol_version == 4
        assert await store.load("no-such-conversation") is None
