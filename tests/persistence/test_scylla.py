"""Cassandra-specific behaviour beyond the Store contract: the schema migration, closing."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from cassandra.cluster import NoHostAvailable
from cassandra.connection import ConnectionBusy
from cassandra.query import BatchStatement

from persistence.records import Branch, Conversation, Message
from persistence.scylla import ScyllaStore
from persistence.store import Changes
from tests.backends import _admin_session, scylla
from tests.persistence.conftest import Rows
from tests.services import require


def test_migrate_is_idempotent_and_creates_every_table() -> None:
    require("cassandra")
    keyspace = f"canopy_migrate_{os.getpid()}"
    command = [
        sys.executable, "-m", "gateway.cli", "migrate", "--scylla-keyspace", keyspace,
        "--scylla-nodes", ",".join(scylla().nodes), "--scylla-replication", "SimpleStrategy:1",
    ]  # fmt: skip
    session = _admin_session()
    try:
        for _ in range(2):
            done = subprocess.run(command, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr
        tables = {
            row[0]
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
        assert replication[0]["replication_factor"] == "1"
    finally:
        session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}")


def test_replication_spec_maps_to_cql() -> None:
    config = dataclasses.replace(scylla(), replication="NetworkTopologyStrategy:dc1=3,dc2=2")
    assert config.replication_map() == {"class": "NetworkTopologyStrategy", "dc1": 3, "dc2": 2}


async def test_close_is_bounded_when_the_driver_shutdown_hangs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """cassandra-driver's Cluster.shutdown can hang for minutes (scylladb/python-driver#172);
    a node's shutdown must not wait for it."""
    require("cassandra")
    release = threading.Event()
    store = ScyllaStore(dataclasses.replace(scylla(), close_timeout=0.2))
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
    async with ScyllaStore(scylla()) as store:
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
    async with ScyllaStore(scylla()) as store:
        assert store._cluster is not None and store._cluster.protocol_version == 4
        assert await store.load("no-such-conversation") is None


async def test_opening_and_reading_log_no_use_keyspace_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Cassandra 5 warns at a PREPARE on a session with a keyspace set; a node logged it
    at every start. Each store's session uses one keyspace, which every statement is in:
    the ambiguity it warns of cannot arise, so it is not logged. Other server warnings are,
this one naming two keyspaces too."""
    require("cassandra")
    caplog.set_level(logging.WARNING, logger="cassandra")
    async with ScyllaStore(scylla()) as store:
        assert await store.load("no-such-conversation") is None
    warned = [r.getMessage() for r in caplog.records if r.name == "cassandra.protocol"]
    assert not [m for m in warned if "USE <keyspace>" in m], warned
    protocol = logging.getLogger("cassandra.protocol")
    for other in ("Aggregation query used without partition key",
                  "`USE <keyspace>` with prepared statements is considered to be an "
                  "anti-pattern. Keyspace used: a, statement keyspace: b, statement id: 1"):
        protocol.warning("Server warning: %s", other)
        assert caplog.records[-1].getMessage() == f"Server warning: {other}"


class Refused:
    """What the driver's future reports when every host's connection was too busy to
    even send the request ("Connection ... is overloaded")."""

    has_more_pages = False
    query: object = None
    message: object = None
    query_plan: object = None

    def add_callbacks(self, callback: object, errback: Callable[[BaseException], None]) -> None:
        busy = ConnectionBusy("Connection 127.0.0.1:9042 is overloaded")
        errback(NoHostAvailable("Unable to complete the operation", {"127.0.0.1:9042": busy}))

    def clear_callbacks(self) -> None:
        pass


async def test_a_fork_sized_write_waits_out_a_busy_connection() -> None:
    """A batch the driver could not send is sent again once the connection drains: the
    1,000-row flush of a fork is stored instead of failing."""
    require("cassandra")
    at = datetime(2026, 1, 1, tzinfo=UTC)
    meta = Conversation("c-busy", "root", "t", None, at, "u", at, False, None, None, 1001, 1)
    root = Message("root", None, "root", b"{}", {}, at, "u", 1, 0)
    rows = [root] + [
        Message(f"m{i}", "root", "human", b'{"type":"text","text":"x"}', {}, at, "u", 2, i)
        for i in range(1, 1001)
    ]
    async with ScyllaStore(scylla()) as store:
        assert store._session is not None
        real = store._session.execute_async
        refusals = iter(range(8))  # the first batches meet a full socket

        def busy_at_first(statement: Any, *args: Any, **kwargs: Any) -> Any:
            if isinstance(statement, BatchStatement) and next(refusals, None) is not None:
                return Refused()
            return real(statement, *args, **kwargs)

        store._session.execute_async = busy_at_first  # type: ignore[method-assign]
        written = Changes(conversation=meta, messages={m.message_id: m for m in rows}, version=1)
        await store.write("c-busy", written)
        assert store.busy_retries == 8
        loaded = await store.load("c-busy")
        assert loaded is not None and len(loaded.messages) == 1001


async def test_rows_come_back_as_plain_tuples() -> None:
    """The driver's default row factory builds a namedtuple class for every result."""
    require("cassandra")
    async with ScyllaStore(scylla()) as store:
        rows = await store._query("SELECT release_version FROM system.local", ())
        assert type(rows[0]) is tuple


async def test_a_finished_request_lets_go_of_its_statement(rows: Rows) -> None:
    """The driver's future, its timer and our callbacks form a cycle: unbroken, it kept
    each request's statement (a fork's bound rows) until the cycle collector ran."""
    require("cassandra")
    async with ScyllaStore(scylla()) as store:
        assert store._session is not None
        real = store._session.execute_async
        sent: list[weakref.ref[Any]] = []

        def send(statement: Any, *args: Any, **kwargs: Any) -> Any:
            sent.append(weakref.ref(statement))
            return real(statement, *args, **kwargs)

        store._session.execute_async = send  # type: ignore[method-assign]
        meta = rows.conversation("c-gc")
        messages = tuple(rows.message(f"m{i}", "c-gc-root", i) for i in range(1, 300))
        gc.disable()
        try:
            await store.write("c-gc", rows.changes(meta, messages))
            assert sent and all(ref() is None for ref in sent)
        finally:
            gc.enable()
