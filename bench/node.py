"""Starting a node for a benchmark: one free port, one launcher, CPU pinning.

Every bench module starts its servers here: `node()` runs a command (a `canopy serve`,
or the bare aiohttp ceiling), waits until it printed "Running on", pins it to the
server's CPUs, and terminates it however the caller leaves (a canopy node flushes
every dirty conversation first).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from bench.client import HOST
from bench.target import Server


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def pin(pid: int, cpus: set[int] | None) -> None:
    """Pin every thread of `pid` (threads started later inherit it)."""
    if not cpus:
        return
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(task.name), cpus)


@dataclass
class Node:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def server(self) -> Server:
        """Its address; its CPU is the process's and its descendants' (a flusher process)."""
        return Server(HOST, self.port, (self.process.pid,))

    def tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


@contextlib.contextmanager
def node(
    command: list[str],
    port: int,
    log_path: Path,
    cpus: set[int] | None = None,
    *,
    env: Mapping[str, str] = {},
) -> Iterator[Node]:
    """A server subprocess, ready (it printed "Running on"); terminated however we leave.
    `env` overrides this process's environment for it; its log stays readable after."""
    with open(log_path, "wb") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env={**os.environ, **env}
        )
    started = Node(process, port, log_path)
    try:
        pin(process.pid, cpus)
        deadline = time.monotonic() + 120
        while "Running on" not in log_path.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{' '.join(command[1:4])} did not start:\n{started.tail()}")
            time.sleep(0.05)
        pin(process.pid, cpus)
        yield started
    finally:
        process.terminate()
        try:
            process.wait(timeout=120)  # a canopy node flushes every dirty conversation first
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def canopy(port: int, data_dir: Path, *extra: str, workers: int = 1) -> list[str]:
    """The command of a `canopy serve` node (`workers` > 1: a supervisor and its workers;
    its CPU is the process tree's, bench.cpu.tree_cpu_seconds)."""
    command = [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port),
               "--data-dir", str(data_dir), *extra]  # fmt: skip
    return command + (["--workers", str(workers)] if workers != 1 else [])
