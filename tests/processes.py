"""Real `canopy` node processes for fault tests: started, signalled, always reaped."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp


class NodeProcess:
    """`canopy serve` in a subprocess; ready once it prints its address."""

    def __init__(
        self, data_dir: Path, port: int, *extra: str, preexec_fn: Callable[[], None] | None = None
    ) -> None:
        self.data_dir, self.port, self.extra = data_dir, port, extra
        self.base = f"http://127.0.0.1:{port}"
        self.process: asyncio.subprocess.Process | None = None
        self.preexec_fn = preexec_fn  # e.g. a lower RLIMIT_NOFILE
        self.output: list[bytes] = []  # every line it printed or logged

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            *self.extra,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            preexec_fn=self.preexec_fn,
        )
        assert self.process.stdout is not None
        seen = []
        async with asyncio.timeout(60):
            while True:
                line = await self.process.stdout.readline()
                assert line, f"node exited before serving: {b''.join(seen)!r}"
                seen.append(line)
                self.output.append(line)
                if b"Running on" in line:
                    break
        asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        while line := await self.process.stdout.readline():
            self.output.append(line)

    async def stop(self, sig: signal.Signals) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        async with asyncio.timeout(60):
            return await self.process.wait()


async def post_json(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any]
) -> dict[str, Any]:
    async with session.post(url, json=body) as response:
        assert response.status == 200, await response.text()
        return await response.json()  # type: ignore[no-any-return]
