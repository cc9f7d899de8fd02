"""A child process's lifeline: its stdin, a pipe from its parent, ends when the parent
closes it or dies however it dies (SIGKILL included), and the child stops then."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading


def watch_stdin(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """Set `stop` once stdin reaches its end: the parent closed it, or died."""

    def read() -> None:
        with contextlib.suppress(OSError):  # the raw descriptor: no lock left held at exit
            while os.read(0, 4096):
                pass
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=read, name="lifeline", daemon=True).start()
