"""Engine fixtures: a node's real components (SQLite store, file journal, flusher,
registry) in a temporary directory, entered in gateway/app.py's order and closed in
reverse.

The flusher's background cycle is effectively off (a one-hour interval) unless a test
asks for it, so every store write a test sees is one it caused.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

from engine.access import ANONYMOUS
from engine.actor import ActorConfig, ConversationActor, Durability, NewConversation, NewMessage
from engine.directory import Directory
from engine.registry import Registry, RegistryConfig
from persistence.flusher import Flusher, FlusherConfig
from persistence.journal import Journal
from persistence.journal_file import FileJournal
from persistence.records import Message
from persistence.sqlite import SQLiteStore
from persistence.store import Store

HOUR = 3600.0


def text(value: str) -> bytes:
    """Canonical content bytes of a `text` message."""
    return msgspec.json.encode({"type": "text", "text": value})


@dataclass
class Engine:
    """One node's engine and persistence; helpers speak through the registry like routes do."""

    directory: Path
    sqlite: SQLiteStore
    store: Store  # what the flusher and registry use: `sqlite` or a wrapper around it
    journal: FileJournal  # the file journal itself, under any wrapper the engine uses
    flusher: Flusher
    registry: Registry
    stack: contextlib.AsyncExitStack
    closed: bool = False

    async def conversation(self, title: str = "chat", owner: str = "alice") -> ConversationActor:
        return await self.registry.create(ANONYMOUS, NewConversation(title, owner))

    async def say(
        self,
        conversation_id: str,
        parent_id: str | None,
        words: str = "hi",
        *,
        role: str = "human",
        branch_id: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> Message:
        """Append a text message through `Registry.run`, as the HTTP route does."""

        async def append(actor: ConversationActor) -> Message:
            return await actor.append(
                ANONYMOUS,
                NewMessage(parent_id, role, text(words), metadata or {}, "alice", branch_id),
            )

        return await self.registry.run(ANONYMOUS, conversation_id, append)

    async def close(self) -> None:
        """Graceful shutdown: registry, flusher (writes everything), journal, store."""
        if not self.closed:
            self.closed = True
            await self.stack.aclose()

    async def crash(self) -> None:
        """Stop as a killed process would: nothing more reaches the store.

        Background tasks are cancelled without the flusher's final flush; the journal's
        files keep what was written to them (a process crash leaves the page cache).
        """
        if self.closed:
            return
        self.closed = True
        self.stack.pop_all()
        tasks = self.registry.background_tasks()
        if self.flusher._task is not None:
            tasks.append(self.flusher._task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.journal.__aexit__(None, None, None)
        await self.sqlite.__aexit__(None, None, None)


EngineFactory = Callable[..., Awaitable[Engine]]


@pytest.fixture
async def open_engine(tmp_path: Path) -> AsyncIterator[EngineFactory]:
    """Open engines (by default all on one directory, so a reopen sees the same data)."""
    opened: list[Engine] = []

    async def open_(
        directory: Path | None = None,
        *,
        durability: Durability = "journal",
        max_lineage_depth: int = 1000,
        max_hot_messages: int = 2_000_000,
        max_hot_bytes: int = 1024**3,
        max_unflushed_bytes: int = 256 * 1024 * 1024,
        flush_interval: float = HOUR,
        wrap_store: Callable[[SQLiteStore], Store] | None = None,
        wrap_journal: Callable[[FileJournal], Journal] | None = None,
        recover_damaged: bool = False,
        directory_of: Callable[[Journal], Directory] | None = None,
        lease_wait_seconds: float = 0.0,
    ) -> Engine:
        directory = directory or tmp_path / "node"
        flusher_config = FlusherConfig(
            interval=flush_interval,
            max_unflushed_bytes=max_unflushed_bytes,
            backoff_initial=0.001,
            backoff_max=0.01,
        )
        registry_config = RegistryConfig(
            actor=ActorConfig(durability=durability, max_lineage_depth=max_lineage_depth),
            max_hot_messages=max_hot_messages,
            max_hot_bytes=max_hot_bytes,
            idle_seconds=HOUR,
            lease_wait_seconds=lease_wait_seconds,
        )
        async with contextlib.AsyncExitStack() as stack:
            sqlite = await stack.enter_async_context(SQLiteStore(directory / "canopy.db"))
            store: Store = wrap_store(sqlite) if wrap_store else sqlite
            journal = await stack.enter_async_context(
                FileJournal(directory / "journal", recover_damaged=recover_damaged)
            )
            used: Journal = wrap_journal(journal) if wrap_journal else journal
            flusher = await stack.enter_async_context(Flusher(store, used, flusher_config))
            leases = directory_of(used) if directory_of else None
            registry = await stack.enter_async_context(
                Registry(store, used, flusher, registry_config, directory=leases)
            )
            engine = Engine(directory, sqlite, store, journal, flusher, registry, stack.pop_all())
        opened.append(engine)
        return engine

    yield open_
    for engine in reversed(opened):
        await engine.close()


@pytest.fixture
async def engine(open_engine: EngineFactory) -> Engine:
    return await open_engine()
