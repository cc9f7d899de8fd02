"""The test harness's own care of the shared Cassandra: keyspaces of runs that died are
dropped, those of runs still going are kept, and a wipe leaves a test nothing of the last."""

from __future__ import annotations

import subprocess
import sys

from tests.backends import _admin_session, drop_abandoned_keyspaces, wipe_cassandra
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
    dead, alive = f"{prefix}_{gone}", f"{prefix}_1"  # pid 1 always lives
    replication = "{'class': 'SimpleStrategy', 'replication_factor': 1}"
    for name in (dead, alive):
        session.execute(f"CREATE KEYSPACE IF NOT EXISTS {name} WITH replication = {replication}",
                        timeout=120)  # fmt: skip
    try:
        drop_abandoned_keyspaces(session)
        present = keyspaces(session)
        assert dead not in present
        assert alive in present and KEYSPACE in present
    finally:
        for name in (dead, alive):
            session.execute(f"DROP KEYSPACE IF EXISTS {name}", timeout=120)


def test_a_wipe_empties_what_was_written_since_the_last_one_tombstones_included() -> None:
    """A deleted row is no row to a probe, but its tombstone would hide the next test's
    row under the same key if the wipe left its table alone."""
    require("cassandra")
    session = _admin_session()
    wipe_cassandra()
    session.execute("INSERT INTO accounts (user_id, body) VALUES ('u', 0x01) USING TIMESTAMP 10")
    session.execute("DELETE FROM accounts USING TIMESTAMP 20 WHERE user_id = 'u'")
    session.execute("INSERT INTO conversation_activity (conversation_id) VALUES ('c')")
    wipe_cassandra()
    session.execute("INSERT INTO accounts (user_id, body) VALUES ('u', 0x02) USING TIMESTAMP 15")
    assert session.execute("SELECT body FROM accounts WHERE user_id = 'u'").one() == (b"\x02",)
    assert session.execute("SELECT * FROM conversation_activity LIMIT 1").one() is None
