"""The write-behind flusher's share of every mutation, however much is waiting to flush."""

from __future__ import annotations

from typing import Any, cast

import pytest

from persistence.flusher import Flusher, FlusherConfig
from persistence.journal import NoJournal
from persistence.store import Changes


@pytest.mark.parametrize("dirty", [1, 10_000])
def test_capacity_check(benchmark: Any, dirty: int) -> None:
    """Every mutation checks the unflushed bytes first, with `dirty` conversations waiting."""
    flusher = Flusher(cast(Any, None), NoJournal(), FlusherConfig())

    def grow(changes: Changes) -> None:
        changes.nbytes += 100

    for index in range(dirty):
        flusher.record(f"c{index}", grow)
    benchmark(flusher.check_capacity)
    assert flusher.unflushed_bytes == 100 * dirty
