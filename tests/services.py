"""Real Redis, a Redis Cluster and Cassandra for tests: found once per run, never faked.

`make test` starts them (`make services`). Outside CI a test that needs a missing
server is skipped with the command that starts it; in CI (`CI=true`) it fails.
"""

from __future__ import annotations

import functools
import os
import socket

import pytest

REDIS_URL = os.environ.get("CANOPY_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
# Seed nodes of the three-master Redis Cluster `make services` starts (only database 0:
# tests on it must not run beside another test run on the same cluster).
REDIS_CLUSTER_URL = os.environ.get("CANOPY_TEST_REDIS_CLUSTER_URL", "redis://127.0.0.1:7001")
CASSANDRA_NODES = os.environ.get("CANOPY_TEST_SCYLLA_NODES", "127.0.0.1:9042")
KEYSPACE = f"canopy_test_{os.getpid()}"


@functools.cache
def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def require(service: str) -> None:
    """Skip (or, in CI, fail) the calling test unless `service` is reachable."""
    host, port = {
        "redis": ("127.0.0.1", int(REDIS_URL.rsplit(":", 1)[1].split("/")[0])),
        "redis-cluster": ("127.0.0.1", int(REDIS_CLUSTER_URL.split(",")[0].rsplit(":", 1)[1])),
        "cassandra": ("127.0.0.1", int(CASSANDRA_NODES.rsplit(":", 1)[1])),
    }[service]
    if _answers(host, port):
        return
    message = f"{service} is not running on {host}:{port}; start it with `make services`"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)
