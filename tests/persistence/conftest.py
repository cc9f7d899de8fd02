"""Persistence fixtures: every Store and Journal backend behind one factory each.

A new backend is one entry in `STORES` or `JOURNALS`: a function from the test's
scratch directory to an async context manager that opens the backend (the backend
itself, or an `@asynccontextmanager` that also wipes a shared server's data on exit).
Contract suites take the `store` or `journals` fixture and run once per entry.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from msgspec.structs import replace

from persistence.journal import Journal
from persistence.journal_file import FileJournal
from persistence.records import Branch, Conversation, Message, Share
from persistence.sqlite import SQLiteStore
from persistence.store import Changes, Store
from tests.backends import cassandra_store, redis_journal

STORES: dict[str, Callable[[Path], AbstractAsyncContextManager[Store]]] = {
    "sqlite": lambda directory: SQLiteStore(directory / "canopy.db"),
    "cassandra": cassandra_store,
}

# Options are backend-neutral names; each factory maps the ones it understands.
JOURNALS: dict[str, Callable[..., AbstractAsyncContextManager[Journal]]] = {
    "file": lambda directory, fsync="0.05": FileJournal(
        directory / "journal", fsync=fsync if fsync == "always" else float(fsync)
    ),
    "redis": lambda directory, fsync="0.05": redis_journal(directory),
    "redis-cluster": lambda directory, fsync="0.05": redis_journal(directory, cluster=True),
}


@pytest.fixture(params=sorted(STORES))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with STORES[request.param](tmp_path) as opened:
        yield opened


class Journals:
    """Opens journals of one backend over one place; a reopen sees what the last one left."""

    def __init__(self, kind: str, directory: Path) -> None:
        self.kind = kind
        self._directory = directory
        self._open: dict[int, contextlib.AsyncExitStack] = {}

    async def open(self, **options: Any) -> Journal:
        stack = contextlib.AsyncExitStack()
        journal = await stack.enter_async_context(JOURNALS[self.kind](self._directory, **options))
        self._open[id(journal)] = stack
        return journal

    async def close(self, journal: Journal) -> None:
        await self._open.pop(id(journal)).aclose()

    async def reopen(self, journal: Journal, **options: Any) -> Journal:
        await self.close(journal)
        return await self.open(**options)

    async def close_all(self) -> None:
        for stack in reversed(list(self._open.values())):
            await stack.aclose()
        self._open.clear()


@pytest.fixture(params=sorted(JOURNALS))
async def journals(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Journals]:
    opened = Journals(request.param, tmp_path)
    yield opened
    await opened.close_all()


EPOCH = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@dataclass
class Rows:
    """Builders of store rows with sensible defaults; `at(n)` is EPOCH plus n seconds."""

    @staticmethod
    def at(seconds: float) -> datetime:
        return EPOCH + timedelta(seconds=seconds)

    def conversation(self, cid: str, *, version: int = 1, **fields: Any) -> Conversation:
        row = Conversation(
            conversation_id=cid,
            root_id=f"{cid}-root",
            title="title",
            description=None,
            created_at=EPOCH,
            created_by="alice",
            updated_at=EPOCH,
            is_public=False,
            fork_from_conversation_id=None,
            fork_from_message_id=None,
            message_count=1,
            version=version,
        )
        return replace(row, **fields)

    def message(self, mid: str, parent: str | None, seq: int, **fields: Any) -> Message:
        row = Message(
            message_id=mid,
            parent_id=parent,
            role="root" if parent is None else "human",
            content=b'{"type":"text","text":"%d"}' % seq,
            content_metadata={"n": str(seq)},
            created_at=self.at(seq),
            created_by="alice",
            depth=1 if parent is None else 2,
            seq=seq,
        )
        return replace(row, **fields)

    def branch(self, bid: str, leaf: str, **fields: Any) -> Branch:
        return replace(Branch(bid, f"name-{bid}", leaf, EPOCH, EPOCH, "alice"), **fields)

    def share(self, user: str, permission: str = "read", **fields: Any) -> Share:
        return replace(Share(user, permission, EPOCH, "alice"), **fields)

    def changes(
        self,
        conversation: Conversation | None,
        messages: tuple[Message, ...] = (),
        branches: dict[str, Branch | None] | None = None,
        shares: dict[str, Share | None] | None = None,
    ) -> Changes:
        return Changes(
            conversation=conversation,
            messages={m.message_id: m for m in messages},
            branches=dict(branches or {}),
            shares=dict(shares or {}),
            version=conversation.version if conversation else 0,
            nbytes=sum(len(m.content) for m in messages),
        )


@pytest.fixture
def rows() -> Rows:
    return Rows()
