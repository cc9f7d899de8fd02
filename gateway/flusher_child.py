"""The node's flusher process as its child (`canopy serve --flusher-process`).

The child is `canopy flusher` with the node's own settings (passed as `CANOPY_*`
variables). It watches its stdin, a pipe from this process: when the node closes it,
or dies however it dies, the child drains what is due and exits, so it never outlives
the node for long. A child that exits is started again after a backoff (also when it
refused because the previous one still held the node's lease: it is on its way out).
Stopping closes the pipe and waits for the drain, then terminates, then kills: every
wait is bounded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import sys

from redis.exceptions import RedisError

from gateway import config
from persistence.background import Backoff
from persistence.flusher_lease import break_dead
from persistence.redis_pool import Client

log = logging.getLogger(__name__)

HEALTHY_SECONDS = 30.0  # a child that ran this long resets the restart backoff
STOP_TIMEOUT = 20.0  # seconds for the child's drain (its own close_timeout is 10 s)
SIGNAL_GRACE = 5.0  # seconds after SIGTERM, then after SIGKILL
STOP_BOUND = STOP_TIMEOUT + 2 * SIGNAL_GRACE  # the most stopping the child can take
STDERR = 2  # the file descriptor, whatever sys.stderr is in this process


def flusher_settings(settings: config.Settings) -> config.Settings:
    """The node's settings as its flusher process takes them. A worker of `--workers N`
    serves with its own node id and peer address, which the command line refuses beside
    `--workers N` (its flusher exited with 2 at every start): the flusher is one process
    for one node id."""
    return dataclasses.replace(settings, workers="1", advertise_url="")


class FlusherChild:
    """Starts, restarts and stops the node's flusher process; an async context manager."""

    def __init__(
        self, settings: config.Settings, client: Client, *, stop_timeout: float = STOP_TIMEOUT
    ) -> None:
        self._settings = settings
        self._client = client  # the node's shared pool's
        self._stop_timeout = stop_timeout  # over the child's own drain (close_timeout)
        self._backoff = Backoff(0.2, 5.0)
        self._process: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.restarts = 0
        self.started = asyncio.Event()  # the first child is running

    async def __aenter__(self) -> FlusherChild:
        await self._start()
        self._task = asyncio.create_task(self._supervise(), name="flusher-child")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stopping = True
        process = self._process
        if process is not None and process.returncode is None:
            await self._stop(process)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None and process.returncode is None else None

    def stats(self) -> dict[str, object]:
        return {"restarts": self.restarts, "pid": self.pid or 0, "running": self.pid is not None}

    async def _start(self) -> None:
        environment = {**os.environ, **config.environment(flusher_settings(self._settings))}
        # Its output goes to this process's stderr, not its stdout: a worker's stdout is
        # a pipe its supervisor waits to see closed when the worker dies, and a child
        # still draining would hold it open (the worker's restart waiting for the drain).
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", "flusher", "--stdin-lifeline",
            stdin=asyncio.subprocess.PIPE, stdout=STDERR, env=environment,
        )  # fmt: skip
        log.info("flusher process %d started", self._process.pid)
        self.started.set()

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            assert self._process is not None
            began = loop.time()
            code = await self._process.wait()
            if self._stopping:
                return
            if loop.time() - began > HEALTHY_SECONDS:
                self._backoff.succeeded()
            delay = self._backoff.failed()
            # 0: it drained and stopped when told to, by a signal to the whole process
            # group (a service manager's stop) that reached it before this node stopped it
            level = logging.WARNING if code == 0 else logging.ERROR
            log.log(level, "flusher process %d exited with %d; restarting in %.1fs",
                    self._process.pid, code, delay)  # fmt: skip
            await self._break_lease(self._process.pid)
            await asyncio.sleep(delay)
            if self._stopping:
                return
            await self._start()
            self.restarts += 1

    async def _break_lease(self, pid: int) -> None:
        """The dead child's lease would hold its successor back until it expires."""
        try:
            await break_dead(self._client, self._settings.node(), pid)
        except RedisError as exc:  # it expires on its own
            log.warning("lease of the dead flusher process %d not broken: %s", pid, exc)

    async def _stop(self, process: asyncio.subprocess.Process) -> None:
        if process.stdin is not None:
            process.stdin.close()  # the child drains and exits
        for step in (None, signal.SIGTERM, signal.SIGKILL):
            if step is not None:
                log.warning("flusher process %d still running: sending %s", process.pid, step.name)
                process.send_signal(step)
            try:
                async with asyncio.timeout(self._stop_timeout if step is None else SIGNAL_GRACE):
                    await process.wait()
                return
            except TimeoutError:
                continue
