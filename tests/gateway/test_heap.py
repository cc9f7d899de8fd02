"""The node freezes what its start made and collects its young objects less often
(gateway/heap.py); at shutdown it lets go of both."""

from __future__ import annotations

import gc

from aiohttp import web

from gateway.app import create_app
from gateway.config import Settings
from gateway.heap import YOUNG_THRESHOLD, freeze_startup_objects


async def test_objects_alive_once_started_are_frozen_until_cleanup() -> None:
    gc.unfreeze()
    before = gc.get_threshold()
    app = web.Application()
    app.cleanup_ctx.append(freeze_startup_objects)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (YOUNG_THRESHOLD, *before[1:])
    finally:
        await runner.cleanup()
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before


def test_the_node_freezes_after_its_components_are_up() -> None:
    """Entered last: the store, journal and recovered actors are among what is frozen."""
    assert list(create_app(Settings()).cleanup_ctx)[-1] is freeze_startup_objects
