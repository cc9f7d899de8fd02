"""The activation table: one activation per conversation, shared by concurrent callers."""

from __future__ import annotations

import asyncio

import pytest

from engine.activation import ActivationTable
from tests.waiting import until


class Hot:
    """An actor as the table sees it."""

    id = "c"


class Loads:
    """A load per call, each held until the test releases it."""

    def __init__(self) -> None:
        self.started: list[asyncio.Future[object]] = []

    async def __call__(self, conversation_id: str) -> object:
        done: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self.started.append(done)
        return await done


async def test_concurrent_callers_share_one_load() -> None:
    table, loads = ActivationTable(), Loads()
    callers = [asyncio.ensure_future(table.activate("c", loads)) for _ in range(3)]  # type: ignore[arg-type]
    await until(lambda: len(loads.started) == 1)
    loads.started[0].set_result("actor")
    assert await asyncio.gather(*callers) == ["actor"] * 3
    assert len(loads.started) == 1


async def test_a_failed_load_fails_every_waiting_caller() -> None:
    table, loads = ActivationTable(), Loads()
    callers = [asyncio.ensure_future(table.activate("c", loads)) for _ in range(2)]  # type: ignore[arg-type]
    await until(lambda: len(loads.started) == 1)
    loads.started[0].set_exception(LookupError("not found"))
    for caller in callers:
        with pytest.raises(LookupError):
            await caller
    assert len(loads.started) == 1


async def test_a_load_cancelled_under_its_caller_lets_a_waiter_load_again() -> None:
    """It was that caller's cancellation (a shutdown, a client gone), not the waiter's."""
    table, loads = ActivationTable(), Loads()
    first = asyncio.ensure_future(table.activate("c", loads))  # type: ignore[arg-type]
    await until(lambda: len(loads.started) == 1)
    waiter = asyncio.ensure_future(table.activate("c", loads))  # type: ignore[arg-type]
    await asyncio.sleep(0)  # one turn: it waits for the first
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await until(lambda: len(loads.started) == 2)  # the waiter's own load
    loads.started[1].set_result("actor")
    assert await waiter == "actor"


async def test_a_cancelled_waiter_stops_waiting_and_the_load_goes_on() -> None:
    table, loads = ActivationTable(), Loads()
    first = asyncio.ensure_future(table.activate("c", loads))  # type: ignore[arg-type]
    await until(lambda: len(loads.started) == 1)
    waiter = asyncio.ensure_future(table.activate("c", loads))  # type: ignore[arg-type]
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    loads.started[0].set_result("actor")
    assert await first == "actor" and len(loads.started) == 1


async def test_a_load_cancelled_after_its_actor_went_hot_is_not_run_again() -> None:
    """Cancelled while it waited on the memory budget, the first load had admitted its
    actor: a waiter takes that actor rather than loading a second one beside it
    (found by review: two actors numbered one conversation's records apart)."""
    table = ActivationTable()
    loads = 0
    admitted, budget = asyncio.Event(), asyncio.Event()

    async def load(conversation_id: str) -> Hot:
        nonlocal loads
        loads += 1
        if loads > 1:
            return Hot()  # a second actor beside the first
        table.add(hot)  # type: ignore[arg-type]
        admitted.set()
        await budget.wait()  # keep_within_budget
        return hot

    hot = Hot()
    first = asyncio.ensure_future(table.activate("c", load))  # type: ignore[arg-type]
    await admitted.wait()
    waiter = asyncio.ensure_future(table.activate("c", load))  # type: ignore[arg-type]
    await asyncio.sleep(0)  # one turn: it waits for the first
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await waiter is hot
    assert loads == 1
