"""Closing the engine leaves no task behind: an actor's drainer of queued appends, the
registry's passivations and the flusher's tasks are cancelled or awaited on close."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from test_group_commit import hold_one_append, open_gated

from engine.errors import Unavailable
from tests.waiting import until

if TYPE_CHECKING:
    from conftest import EngineFactory


def pending(prefix: str) -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith(prefix) and not t.done()]


async def test_close_awaits_an_actors_drainer_stuck_on_the_journal(
    open_engine: EngineFactory,
) -> None:
    engine, journal = await open_gated(open_engine)
    actor = await engine.conversation()
    root = actor.meta.root_id
    leader = await hold_one_append(engine, journal, actor.id, root)
    follower = asyncio.ensure_future(engine.say(actor.id, root, "queued"))
    await until(lambda: len(actor._appends) == 1)
    leader.cancel()  # its caller left: the queued append is the drainer's now
    await asyncio.gather(leader, return_exceptions=True)
    await until(lambda: len(journal.callers) == 3)  # creation, leader, the drainer's batch
    assert pending(f"appends-{actor.id}")
    await engine.close()
    assert pending(f"appends-{actor.id}") == []  # cancelled and awaited, not left pending
    assert isinstance((await asyncio.gather(follower, return_exceptions=True))[0], Unavailable)
