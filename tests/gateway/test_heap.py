"""The node freezes what its start made (gateway/heap.py), and lets go at shutdown."""

from __future__ import annotations

import gc

from aiohttp import web

from gateway.app import create_app
from gateway.config import Settings
from gateway.heap import freeze_startup_objects


async def test_objects_alive_once_started_are_frozen_until_cleanup() -> None:
    gc.unfreeze()
    app = web.Application()
    app.cleanup_ctx.append(freeze_startup_objects)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        assert gc.get_freeze_count() > 0
    finally:
        await runner.cleanup()
    assert gc.get_freeze_count() == 0


def test_the_node_freezes_after_its_components_are_up() -> None:
    """Entered last: the store, journal and recovered actors are among what is frozen."""
    assert list(create_app(Settings()).cleanup_ctx)[-1] is freeze_startup_objects
