"""Cold activation: loading a 1,000-message conversation from a store and rebuilding it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from bench.micro.conftest import chain_state
from engine.conversation import ConversationState
from persistence.records import Snapshot
from persistence.sqlite import SQLiteStore
from persistence.store import Changes, Store


def _sqlite(directory: Path) -> AbstractAsyncContextManager[Store]:
    return SQLiteStore(directory / "bench.db")


def _cassandra(directory: Path) -> AbstractAsyncContextManager[Store]:
    from persistence.scylla import ScyllaConfig, ScyllaStore

    return ScyllaStore(ScyllaConfig(keyspace="canopy_bench"))


STORES: dict[str, Callable[[Path], AbstractAsyncContextManager[Store]]] = {
    "sqlite": _sqlite,
    "cassandra": _cassandra,
}


@pytest.fixture(params=sorted(STORES))
def loaded_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Any, Store, str]]:
    """(loop, open store, id of a stored 1,000-message conversation)."""
    loop = asyncio.new_event_loop()
    stack = contextlib.AsyncExitStack()
    try:
        store = loop.run_until_complete(stack.enter_async_context(STORES[request.param](tmp_path)))
    except Exception as exc:  # noqa: BLE001 - a server that is not running is reported, not fatal
        loop.close()
        pytest.skip(f"{request.param} unavailable: {exc}")
    state = chain_state(1000)
    changes = Changes(
        conversation=state.meta,
        messages={m.message_id: m for m in state.tree},
        version=state.version,
    )
    loop.run_until_complete(store.write(state.meta.conversation_id, changes))
    yield loop, store, state.meta.conversation_id
    loop.run_until_complete(stack.aclose())
    loop.close()


def test_activation_1000(benchmark: Any, loaded_store: tuple[Any, Store, str]) -> None:
    loop, store, conversation_id = loaded_store

    def activate() -> int:
        snapshot: Snapshot | None = loop.run_until_complete(store.load(conversation_id))
        assert snapshot is not None
        return len(ConversationState.from_snapshot(snapshot).tree)

    assert benchmark(activate) == 1000
