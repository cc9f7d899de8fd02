"""`until` waits out work done outside the event loop, on a loaded machine too."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tests import waiting
from tests.waiting import until


async def test_until_outlasts_its_bare_turns() -> None:
    """A condition that needs more turns than `ticks` (a thread's I/O on a busy CI
    machine) still holds in time: CI failed on a 1,000-turn bound."""
    calls = 0

    def late() -> bool:
        nonlocal calls
        calls += 1
        return calls > 1_050

    await until(late, ticks=1_000)
    assert calls == 1_051


async def test_until_waits_for_a_thread() -> None:
    done = threading.Event()
    release = threading.Event()
    worker = threading.Thread(target=lambda: (release.wait(), done.set()))
    worker.start()
    asyncio.get_running_loop().call_soon(release.set)
    await until(done.is_set, ticks=0)
    worker.join()


async def test_until_gives_up_at_its_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(waiting, "DEADLINE_SECONDS", 0.0)
    with pytest.raises(AssertionError, match="never held"):
        await until(lambda: False, ticks=10)
