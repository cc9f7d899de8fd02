"""The test harness's own care of the shared Cassandra: keyspaces of runs that died are
dropped, those of runs still going are kept, and a wipe leaves a test nothing of the last."""

from __future__ import annotations

import subprocess
import sys

from tests.backends import (
    _admin_session,
    drop_abandoned_keyspaces,
    finish_emptying,
    keyspace,
    wipe_cassandra,
)
from tests.services import KEYSPACE, require


def keyspaces(session) -> set[str]:  # type: ignore[no-untyped-def]
    rows = session.execute("SELECT keyspace_name FROM system_schema.keyspaces")
    return {name for (name,) in rows}


def test_keyspaces_of_dead_runs_are_dropped_and_live_ones_kept() -> None:
    require("cassandra")
    session = _admin_session()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    prefix = KEYSPACE.rsplit("_", 1)[0]
    dead, alive = (f"{prefix}_{gone}", f"{prefix}_{gone}_1"), f"{prefix}_1"  # pid 1 always lives
    replication = "{'class': 'SimpleStrategy', 'replication_factor': 1}"
    for name in (*dead, alive):
        session.execute(f"CREATE KEYSPACE IF NOT EXISTS {name} WITH replication = {replication}",
                        timeout=120)  # fmt: skip
    try:
        drop_abandoned_keyspaces(session)
        present = keyspaces(session)
        assert not set(dead) & present  # a run's two keyspaces (tests/backends.py)
        assert alive in present and KEYSPACE in present
    finally:
        for name in (*dead, alive):
            session.execute(f"DROP KEYSPACE IF EXISTS {name}", timeout=120)


def test_a_wipe_gives_an_empty_keyspace_tombstones_and_late_writes_included() -> None:
    """A deleted row is no row to a probe, but its tombstone would hide a later test's row
    under the same key; and a process of an earlier test may write to a keyspace after
    it went out of use. The keyspaces take turns: the test goes round them back to the first."""
    require("cassandra")
    session = _admin_session()
    wipe_cassandra()
    first = keyspace()
    session.execute(
        f"INSERT INTO {first}.accounts (user_id, body) VALUES ('u', 0x01) USING TIMESTAMP 10"
    )
    session.execute(f"DELETE FROM {first}.accounts USING TIMESTAMP 20 WHERE user_id = 'u'")
    wipe_cassandra()
    second = keyspace()
    assert second != first
    finish_emptying()  # the write below comes after it, as a lingering process's would
    session.execute(f"INSERT INTO {first}.conversation_activity (conversation_id) VALUES ('late')")
    while keyspace() != first:  # once round the keyspaces
        wipe_cassandra()
    session.execute(
        f"INSERT INTO {first}.accounts (user_id, body) VALUES ('u', 0x02) USING TIMESTAMP 15"
    )
    assert session.execute(f"SELECT body FROM {first}.accounts WHERE user_id = 'u'").one() == (
        b"\x02",
    )
    assert session.execute(f"SELECT * FROM {first}.conversation_activity LIMIT 1").one() is None
