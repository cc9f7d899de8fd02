"""The garbage collector's view of a started node.

A node starts with ~70,000 tracked objects (modules, classes, the drivers' state) that
live as long as it does; every full collection walks them all again, a pause that lands
on whatever request is running (38-51 ms under forks on Cassandra, 4.5-9 ms frozen: see
docs/decisions.md). Once the node is up they are moved to the permanent generation
(`gc.freeze`), so a full collection walks only what was made since. No collection runs
first: it would cost every start a full pass, and what garbage there is stays bounded.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator

from aiohttp import web


async def freeze_startup_objects(app: web.Application) -> AsyncIterator[None]:
    """A cleanup context entered after the node's components: freeze what they made."""
    gc.freeze()
    yield
    gc.unfreeze()
