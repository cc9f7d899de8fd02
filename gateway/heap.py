"""The garbage collector's view of a started node.

A node starts with ~70,000 tracked objects (modules, classes, the drivers' state) that
live as long as it does; every full collection walks them all again, a pause that lands
on whatever request is running (38-51 ms under forks on Cassandra, 4.5-9 ms frozen: see
docs/decisions.md). Once the node is up they are moved to the permanent generation
(`gc.freeze`), so a full collection walks only what was made since. No collection runs
first: it would cost every start a full pass, and what garbage there is stays bounded.

The youngest generation is collected at 10,000 instead of CPython's 700. Its count is
tracked objects made less those freed, so under load it rises and falls with the
requests in flight, and at 700 it crossed the threshold ~130 times a second under 32
appenders (with ~12 collections of the middle generation), each walking every young
object alive. At 10,000 a collection runs only once that many more objects live than
at the last one: none ran in a 4 s window of the same load, and an append cost ~3 µs
less CPU (docs/decisions.md). Cyclic garbage waits at most that many allocations longer.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator

from aiohttp import web

YOUNG_THRESHOLD = 10_000  # allocations between young collections (CPython's default: 700)


async def freeze_startup_objects(app: web.Application) -> AsyncIterator[None]:
    """A cleanup context entered after the node's components: freeze what they made, and
    collect the young generation less often while serving."""
    gc.freeze()
    thresholds = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, *thresholds[1:])
    yield
    gc.set_threshold(*thresholds)
    gc.unfreeze()
