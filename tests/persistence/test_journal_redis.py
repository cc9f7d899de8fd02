"""Redis-journal specifics: epoch fencing between two owners of one conversation."""

from __future__ import annotations

from pathlib import Path

import pytest

from persistence.journal_redis import Fenced
from tests.backends import redis_journal


async def test_a_node_that_lost_ownership_cannot_append(tmp_path: Path) -> None:
    async with redis_journal(tmp_path) as old_owner, redis_journal(tmp_path) as new_owner:
        await old_owner.acquire("c1")
        await old_owner.append("c1", 1, b"first")
        await new_owner.acquire("c1")  # another node activates the conversation
        with pytest.raises(Fenced):
            await old_owner.append("c1", 2, b"stale")
        await new_owner.append("c1", 2, b"second")
        assert await new_owner.tail("c1", 0) == [b"first", b"second"]


async def test_appending_without_acquiring_is_refused(tmp_path: Path) -> None:
    async with redis_journal(tmp_path) as journal:
        with pytest.raises(Fenced):
            await journal.append("c9", 1, b"x")
        assert await journal.tail("c9", 0) == []
