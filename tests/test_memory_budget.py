"""The memory budget in bytes, through a real node process: many empty conversations."""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import Callable
from pathlib import Path

import aiohttp

from tests.processes import NodeProcess

CONVERSATIONS = 6_000  # per round
TITLE = "t" * 300
# Unbounded, each round of 6,000 such conversations takes about +20 MiB of RSS (3.4 KB
# each empty, plus the title twice). Within a 1 MB budget the first round brings the
# node to its steady state (store page cache, allocator pools, journal buffers); the
# second may grow by allocator slack only.
MARGIN = 8 * 1024 * 1024


def rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"VmRSS:\s+(\d+) kB", status)
    assert found is not None
    return int(found.group(1)) * 1024


class CountingNode(NodeProcess):
    """Keeps the node's output lines: its closing log line reports the registry's counters."""

    lines: list[bytes]

    async def _drain(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        self.lines = []
        while line := await self.process.stdout.readline():
            self.lines.append(line)


async def _create(session: aiohttp.ClientSession, base: str, count: int) -> None:
    body = {"title": TITLE, "created_by": "many"}
    for _ in range(count):
        async with session.post(f"{base}/api/v1/conversations", json=body) as response:
            assert response.status == 200, await response.text()


async def test_empty_conversations_stay_within_the_byte_budget(
    tmp_path: Path,
    unused_tcp_port_factory: Callable[[], int],
) -> None:
    node = CountingNode(tmp_path / "data", unused_tcp_port_factory(), "--max-hot-bytes", "1000000")
    await node.start()
    assert node.process is not None
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(2):  # the second round is measured
                before = rss(node.process.pid)
                await asyncio.gather(
                    *(_create(session, node.base, CONVERSATIONS // 8) for _ in range(8))
                )
                grown = rss(node.process.pid) - before
        print(f"RSS grew {grown / 2**20:.1f} MiB in the second round")
        assert grown < MARGIN, f"RSS grew {grown / 2**20:.1f} MiB"
        assert await node.stop(signal.SIGTERM) == 0
    finally:
        if node.process.returncode is None:
            node.process.kill()
            await node.process.wait()
    closing = next(line for line in node.lines if b"registry closed" in line)
    found = re.search(rb"(\d+) passivations", closing)
    assert found is not None, closing
    assert int(found.group(1)) >= CONVERSATIONS
