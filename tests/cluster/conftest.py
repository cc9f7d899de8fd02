from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tests.cluster.cluster import Cluster


@pytest.fixture
async def cluster(
    request: pytest.FixtureRequest, tmp_path: Path, unused_tcp_port_factory: Callable[[], int]
) -> AsyncIterator[Cluster]:
    """Three nodes, started and settled (each lists all three), over the single Redis;
    a test marked `OVER_BOTH_REDIS` (tests/cluster/cluster.py) runs over the Redis
    Cluster too."""
    over = getattr(request, "param", "redis")
    ports = [unused_tcp_port_factory() for _ in range(3)]
    made = Cluster(tmp_path, ports, redis_cluster=over == "redis-cluster")
    try:
        await made.start()
        yield made
    finally:
        await made.close()
