"""In-actor operations: what a read or an append costs inside one conversation."""

from __future__ import annotations

from typing import Any

import pytest
from msgspec.structs import replace

from bench.micro.conftest import chain_state, message
from gateway.schemas import path_out
from persistence.records import Appended
from persistence.store import Changes


@pytest.mark.parametrize("depth", [10, 100, 1000])
def test_lineage(benchmark: Any, depth: int) -> None:
    state = chain_state(depth)
    path = benchmark(state.tree.lineage, f"m{depth - 1}")
    assert len(path) == depth


@pytest.mark.parametrize("fanout", [1, 10, 1000])
def test_children(benchmark: Any, fanout: int) -> None:
    """A lone child (most messages) is indexed as itself; siblings as a list."""
    state = chain_state(2, fanout_at_root=fanout - 1)
    children = benchmark(state.tree.children, "m0")
    assert len(children) == fanout


def test_append_apply(benchmark: Any) -> None:
    state = chain_state(1)
    changes = Changes()
    counter = iter(range(1, 10_000_000))

    def append() -> None:
        i = next(counter)
        state.apply(i + 1, Appended(message(f"a{i}", "m0", 2, i), None), changes)

    benchmark(append)


@pytest.mark.parametrize("size", [1000, 10_000])
def test_fork_copy(benchmark: Any, size: int) -> None:
    """What a fork does in memory: select the messages and re-hang them on a new root."""
    state = chain_state(size)

    def fork() -> int:
        copied = [
            replace(n, parent_id="new-root") if n.depth == 2 else n
            for n in state.tree
            if n.parent_id
        ]
        forked = chain_state(1)
        for node in copied:
            forked.tree.add(node)
        return len(forked.tree)

    assert benchmark(fork) == size


def test_encode_lineage_100(benchmark: Any) -> None:
    import msgspec

    state = chain_state(100)
    encode = msgspec.json.Encoder().encode
    body = benchmark(lambda: encode(path_out("c", state.tree.lineage("m99"))))
    assert body.startswith(b"[")
