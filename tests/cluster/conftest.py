from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tests.cluster.cluster import Cluster


@pytest.fixture
async def cluster(
    tmp_path: Path, unused_tcp_port_factory: Callable[[], int]
) -> AsyncIterator[Cluster]:
    """Three nodes, started and settled (each lists all three)."""
    made = Cluster(tmp_path, [unused_tcp_port_factory() for _ in range(3)])
    try:
        await made.start()
        yield made
    finally:
        await made.close()
