"""`canopy serve --workers N`: N worker processes on one port, and their supervisor.

Each worker is `python -m gateway.cli serve --worker-index K`, a fresh interpreter
(fork after uvloop and threads are up is unsafe), with the supervisor's settings in
its environment. It listens on the shared port with SO_REUSEPORT, so the kernel
spreads connections over the workers, and on its own Unix socket, over which its
siblings hand it the requests for its conversations (gateway/worker_peers.py). It
keeps its shard of the data dir, `data-dir/worker-K/` (SQLite file, journal, lock);
a shared store or journal (Cassandra, Redis) stays shared. With `--cluster redis` each
worker is a cluster member instead (`<node-id>/worker-K`): it listens on a peer port of
its own, which it advertises, and requests for other members' conversations are
forwarded to them like any node's (gateway/forwarding.py), not handed over.

The supervisor holds the data dir's own lock (two supervisors cannot share it), starts
the workers and announces the node once all of them serve, forwards SIGTERM and SIGINT
to them and waits for them (each within its shutdown timeout, then SIGKILL), restarts
one that dies unexpectedly with a growing backoff, and exits non-zero if a worker
cannot start. Its workers stop by themselves if it dies (their stdin lifeline).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import os
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

import uvloop

from engine.membership_workers import worker_id
from gateway import config, connections
from gateway.admin_token import AdminAccess
from gateway.app import create_app
from gateway.flusher_child import STOP_BOUND
from gateway.worker_peers import WorkerPeers
from persistence.data_dir import DataDirLock
from persistence.node_secret import load_or_create_secret

log = logging.getLogger(__name__)

LAYOUT_FILE = "workers"  # in the data dir: how many shards it was split into
SOCKET_NAME = "handover.sock"
MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with the terminating NUL
FIRST_BACKOFF, MAX_BACKOFF = 0.5, 30.0  # seconds before a dead worker is started again
STEADY_SECONDS = 60.0  # a worker up this long had its backoff reset
MAX_FAILED_STARTS = 5  # in a row: past it the supervisor gives up and stops the node
KILL_GRACE = 5.0  # seconds past a worker's shutdown timeout before it is killed


class WorkersRefused(Exception):
    """The workers cannot start: the data dir was sharded for another number of them,
    or the port is taken."""


def shard_dir(data_dir: Path, index: int) -> Path:
    return data_dir / worker_id(index)


def socket_paths(data_dir: Path, count: int) -> list[Path]:
    """Each worker's Unix socket: in its shard, or (a data dir too deep for AF_UNIX's
    path limit) in a private directory under the temporary directory."""
    base = data_dir.resolve()
    paths = [shard_dir(base, k) / SOCKET_NAME for k in range(count)]
    if all(len(os.fsencode(path)) <= MAX_SOCKET_PATH for path in paths):
        return paths
    tag = hashlib.blake2b(os.fsencode(base), digest_size=6).hexdigest()
    short = Path(tempfile.gettempdir()) / f"canopy-{os.getuid()}-{tag}"
    return [short / f"{worker_id(k)}.sock" for k in range(count)]


def _private_directory(path: Path) -> None:
    path.mkdir(mode=0o700, exist_ok=True)
    status = path.stat()
    if status.st_uid != os.getuid() or status.st_mode & 0o077:
        raise WorkersRefused(f"{path} must be a directory only this user can enter")


def check_layout(data_dir: Path, count: int) -> None:
    """A data dir keeps the number of workers it was first served with (conversations
    are placed by it); a single node's data is not split afterwards, nor shards merged."""
    marker = data_dir / LAYOUT_FILE
    recorded = int(marker.read_text()) if marker.exists() else 1
    if marker.exists() or count == 1:
        if recorded != count:
            raise WorkersRefused(
                f"data dir {data_dir} holds {recorded} worker shards: serve it with "
                f"--workers {recorded} (conversations are placed by the number of workers)"
            )
        return
    if (data_dir / "canopy.db").exists():
        raise WorkersRefused(
            f"data dir {data_dir} holds a single node's data: serve it with --workers 1, "
            "or give --workers another --data-dir"
        )
    marker.write_text(f"{count}\n")


# -- a worker -------------------------------------------------------------------------------


def worker_settings(settings: config.Settings, index: int) -> config.Settings:
    """What worker `index` serves with: its shard of the data dir (what is embedded is
    sharded; a shared Cassandra or Redis stays shared), its own node id (its keys in
    Redis, its name in X-Canopy-Node and /admin), and the node's one accounts secret."""
    shared_store = settings.store != "sqlite"
    return dataclasses.replace(
        settings,
        data_dir=shard_dir(settings.data_dir, index),
        node_id=f"{settings.node()}/{worker_id(index)}",
        # A first page of store rows kept here would miss what the siblings flush to the
        # shared store meanwhile (their unflushed rows are asked of them at each read).
        sidebar_cache_seconds=0.0 if shared_store else settings.sidebar_cache_seconds,
        jwt_secret=settings.jwt_secret or _accounts_secret(settings),
    )


def _accounts_secret(settings: config.Settings) -> str:
    """--accounts signs with the data dir's secret: the node's, not a shard's (a token
    one worker issued verifies on every other)."""
    if not settings.accounts:
        return ""
    return load_or_create_secret(settings.data_dir / "jwt-secret").decode()


def run_worker(settings: config.Settings, index: int) -> int:
    """Serve as worker `index` until SIGTERM or the supervisor's end."""
    count = settings.worker_count()
    if settings.cluster != "none":  # a cluster member: forwarding, not handover
        peer = _peer_socket(settings.host)
        shard = dataclasses.replace(
            worker_settings(settings, index),
            advertise_url=f"http://{_url_host(settings.host)}:{peer.getsockname()[1]}",
        )
        node = settings.node()
        siblings = [f"{node}/{worker_id(k)}" for k in range(count) if k != index]
        app = create_app(shard, siblings=siblings)
        worker = connections.Worker(index, None, peer)
    else:
        sockets = socket_paths(settings.data_dir, count)
        shared = settings.store != "sqlite"
        app = create_app(
            worker_settings(settings, index), WorkerPeers(index, sockets, shared_store=shared)
        )
        worker = connections.Worker(index, sockets[index])
    serving = connections.serve(
        app,
        settings.host,
        settings.port,
        max_connections=settings.max_connections or connections.default_max_connections(),
        shutdown_timeout=settings.shutdown_timeout,
        announce=lambda message: print(message, flush=True),
        worker=worker,
    )
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serving)
    return 0


def _peer_socket(host: str) -> socket.socket:
    """A cluster member's own port for peer traffic, bound now (its URL is advertised
    as the member joins, before it listens): an ephemeral one on --host. The shared
    port would land a forwarded request on any worker, and forwarding is one hop."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    peer = socket.socket(family, socket.SOCK_STREAM)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    peer.bind((host, 0))
    peer.setblocking(False)
    return peer


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# -- the supervisor ---------------------------------------------------------------------------


def supervise(settings: config.Settings) -> int:
    """Run `--workers N` worker processes until SIGTERM or SIGINT; the exit status."""
    count = settings.worker_count()
    with DataDirLock(settings.data_dir):
        check_layout(settings.data_dir, count)
        sockets = socket_paths(settings.data_dir, count)
        if sockets[0].parent.name != worker_id(0):
            _private_directory(sockets[0].parent)
        port = _free_port(settings.host, settings.port)
        # one admin token and accounts secret for all workers (each would make its own)
        access = AdminAccess.make(settings.admin_token, settings.metrics_public)
        settings = dataclasses.replace(settings, admin_token=access.token)
        _accounts_secret(settings)
        environ = {
            **os.environ,
            **config.environment(settings),
            "CANOPY_WORKERS": str(count),
            "CANOPY_PORT": str(port),
        }
        # Cassandra's tables are made by the first worker to open the store: alone, as
        # concurrent schema changes can disagree.
        first_alone = settings.store != "sqlite"
        # A worker stops its flusher process last (gateway/flusher_child.py): killed
        # before that, it would leave the cluster without releasing its leases.
        stopping = settings.shutdown_timeout + (STOP_BOUND if settings.flusher_in_child() else 0)
        supervisor = Supervisor(count, environ, stopping, first_alone)
        with asyncio.Runner() as runner:
            return runner.run(supervisor.run())


def _free_port(host: str, port: int) -> int:
    """The port the workers share: `port`, or (0) one free now; refuses early if taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise WorkersRefused(f"cannot listen on {host}:{port}: {exc}") from None
        bound: int = probe.getsockname()[1]
        return bound


@dataclasses.dataclass
class _Worker:
    index: int
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    backoff: float = FIRST_BACKOFF
    failed_starts: int = 0


class Supervisor:
    def __init__(
        self,
        count: int,
        environ: dict[str, str],
        shutdown_timeout: float,
        first_alone: bool = False,
    ) -> None:
        self._workers = [_Worker(k) for k in range(count)]
        self._first_alone = first_alone  # start worker 0 before the others
        self._environ = environ
        self._shutdown_timeout = shutdown_timeout
        self._stopping = asyncio.Event()
        self._failed = asyncio.Event()  # a worker could not start: stop the node
        self._tasks: set[asyncio.Task[None]] = set()
        self.restarts = 0

    async def run(self) -> int:
        """Serve until told to stop or a worker cannot start; 0 if all stopped cleanly."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stopping.set)
        try:
            code = await self._serve()
        finally:
            self._stopping.set()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            clean = await self._stop_all()
        return code if clean else 1

    async def _serve(self) -> int:
        later = self._workers
        if self._first_alone:
            first, *later = self._workers
            if not await self._start(first):
                return 1
        if not all(await asyncio.gather(*(self._start(w) for w in later))):
            return 1
        host, port = self._environ.get("CANOPY_HOST", "127.0.0.1"), self._environ["CANOPY_PORT"]
        print(f"======== Running on http://{host}:{port} "
              f"({len(self._workers)} workers) ========", flush=True)  # fmt: skip
        for worker in self._workers:
            self._own(self._keep(worker))
        stop = asyncio.ensure_future(self._stopping.wait())
        failed = asyncio.ensure_future(self._failed.wait())
        await asyncio.wait((stop, failed), return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        failed.cancel()
        return 1 if self._failed.is_set() else 0

    def _own(self, coroutine: object) -> None:
        assert asyncio.iscoroutine(coroutine)
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start(self, worker: _Worker) -> bool:
        """Start the worker and wait until it serves; False if it exited first."""
        process = worker.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", "serve", "--worker-index", str(worker.index),
            env=self._environ, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        worker.started_at = time.monotonic()
        assert process.stdout is not None
        while line := await process.stdout.readline():
            if b"Running on" in line:
                print(f"{worker_id(worker.index)} serving (pid {process.pid})", flush=True)
                self._own(self._relay_output(worker.index, process.stdout))
                return True
            sys.stdout.buffer.write(line)
            sys.stdout.flush()
        code = await process.wait()
        log.error("%s exited with %s before serving", worker_id(worker.index), code)
        return False

    async def _relay_output(self, index: int, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            sys.stdout.buffer.write(line)
            sys.stdout.flush()

    async def _keep(self, worker: _Worker) -> None:
        """Start the worker again each time it dies while the node is not stopping."""
        while not self._stopping.is_set():
            assert worker.process is not None
            code = await worker.process.wait()
            if self._stopping.is_set():
                return
            if time.monotonic() - worker.started_at >= STEADY_SECONDS:
                worker.backoff = FIRST_BACKOFF
            log.warning(
                "%s (pid %d) exited with %s: starting it again in %.1fs",
                worker_id(worker.index), worker.process.pid, code, worker.backoff,
            )  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), worker.backoff)
                return  # stopping meanwhile
            worker.backoff = min(worker.backoff * 2, MAX_BACKOFF)
            self.restarts += 1
            if await self._start(worker):
                worker.failed_starts = 0
                continue
            worker.failed_starts += 1
            if worker.failed_starts >= MAX_FAILED_STARTS:
                log.error("%s failed to start %d times in a row: stopping the node",
                          worker_id(worker.index), worker.failed_starts)  # fmt: skip
                self._failed.set()
                return

    async def _stop_all(self) -> bool:
        """SIGTERM every worker, wait for each within its shutdown timeout, then kill
        what is left; True if each exited 0."""
        live = [w.process for w in self._workers if w.process and w.process.returncode is None]
        for process in live:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        codes = await asyncio.gather(*(self._reap(p) for p in live))
        return all(code == 0 for code in codes)

    async def _reap(self, process: asyncio.subprocess.Process) -> int:
        try:
            return await asyncio.wait_for(process.wait(), self._shutdown_timeout + KILL_GRACE)
        except TimeoutError:
            log.error("worker pid %d did not stop in time: killing it", process.pid)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            return await process.wait()
