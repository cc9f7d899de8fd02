"""`canopy flusher`: write a node's Redis journal behind to the store, in its own process.

Run by `canopy serve --flusher-process` as its child, or on its own with the node's
settings (the same options and `CANOPY_*` variables; `--node-id` or `--port` name the
node). It stops on SIGTERM or SIGINT, when its lifeline (stdin, with `--stdin-lifeline`)
closes, or when it lost its lease; it refuses to start while another flusher runs for
the node (exit status 2).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys

from redis.exceptions import RedisError

from engine.flush_worker import FlushWorker, FlushWorkerConfig, LeaseHeld
from gateway.app import open_store
from gateway.config import Settings
from gateway.lifeline import watch_stdin
from persistence.journal import JournalError
from persistence.journal_redis import RedisJournal
from persistence.redis_pool import RedisPool
from persistence.store import StoreError

log = logging.getLogger(__name__)


async def run(settings: Settings, *, lifeline: bool) -> int:
    """Flush until told to stop; the process's exit status."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    if lifeline:  # the node stops it (Ctrl-C reaches the whole process group)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        watch_stdin(loop, stop)
    else:
        loop.add_signal_handler(signal.SIGINT, stop.set)
    config = FlushWorkerConfig(
        node=settings.node(), interval=settings.flush_interval, cluster=settings.cluster != "none"
    )
    try:
        async with contextlib.AsyncExitStack() as stack:
            pool = await stack.enter_async_context(RedisPool(settings.redis()))
            store = await stack.enter_async_context(open_store(settings))
            journal = await stack.enter_async_context(RedisJournal(pool))
            worker = await stack.enter_async_context(FlushWorker(store, journal, pool, config))
            print(f"flusher for node {config.node} ready (pid {os.getpid()})", flush=True)
            lost = asyncio.create_task(worker.lost_lease.wait())
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait((lost, stopped), return_when=asyncio.FIRST_COMPLETED)
            for task in (lost, stopped):
                task.cancel()
            return 1 if worker.lost_lease.is_set() else 0
    except LeaseHeld as exc:
        print(f"canopy flusher: {exc}", file=sys.stderr, flush=True)
        return 2
    except (RedisError, JournalError, StoreError) as exc:  # its parent starts it again
        print(f"canopy flusher: cannot start: {exc}", file=sys.stderr, flush=True)
        return 1
