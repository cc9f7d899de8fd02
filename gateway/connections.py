"""The node's client connections: a cap below the descriptor limit, JSON answers to what
the HTTP parser refuses, and a shutdown that cuts what would only stall it.

aiohttp builds one `RequestHandler` protocol per connection from its `Server`, and
`web.run_app` gives no hook into either, so the node runs its own small runner
(`serve`): `EdgeRunner` makes an `EdgeServer`, and `EdgeSite` listens with
`EdgeServer.accept` as the protocol factory. Past `max_connections` that factory
answers a canned 503 and hangs up instead of building a handler: the refusal costs
one descriptor for a moment, so a flood of idle sockets cannot push the node into
EMFILE, where its journal, store and Redis would fail with it. Refusing at accept
beats a middleware (it would run only once a request arrives, and an idle socket
never sends one) and beats pausing accept (the kernel backlog would hide the node's
state from clients, who would hang instead of hearing 503 + Retry-After).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import resource
import signal
import socket
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple, Protocol, cast

import msgspec
from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from gateway.busy_poll import BUSY_POLL, BusyPoll
from gateway.dispatch import Dispatcher
from gateway.lifeline import watch_stdin
from gateway.schemas import ErrorDetail, ErrorOut
from gateway.worker_peers import PEERS
from persistence.background import Throttled

log = logging.getLogger(__name__)

# Descriptors kept back from client connections: stdio, the event loop's own, the
# listening socket, SQLite (db, WAL, shm), journal segments being written, rotated and
# trimmed, the data-dir lock, Redis and Cassandra pools. An idle node holds about 20;
# the rest is headroom for the pools under load.
RESERVED_DESCRIPTORS = 64
# Refused connections are closed gracefully (the client reads its 503 rather than a
# reset); at most this many wait at once, past which the oldest is closed.
REFUSING_AT_ONCE = 16
# At shutdown in-flight requests get this share of shutdown_timeout; the flush and the
# storage close get the rest.
DRAIN_SHARE = 0.5
# With a lifecycle (a cluster node), leaving (handing conversations over, still serving)
# takes at most this share of shutdown_timeout first; the shutdown gets the rest.
LEAVE_SHARE = 0.4
KEEPALIVE_TIMEOUT = 75.0  # as web.run_app: idle keep-alive connections close after it
REFUSAL_LINGER = 1.0  # seconds a refused client gets to read its 503 and hang up


class Worker(NamedTuple):
    """Where one of `--workers N` listens besides the shared port."""

    number: int  # its index among the workers
    socket: Path | None  # its Unix socket: its siblings hand it its conversations' requests
    # a cluster member's own TCP port (bound, not listening yet): the address it
    # advertises, where other members forward its conversations' requests
    peer: socket.socket | None = None


class Lifecycle(Protocol):
    """What the app does once it listens and before it stops (gateway/cluster_lifecycle.py)."""

    async def listening(self) -> None: ...

    async def leaving(self, deadline: float) -> None: ...


LIFECYCLE: web.AppKey[Lifecycle] = web.AppKey("lifecycle")


def default_max_connections() -> int:
    """Client connections that fit under the soft RLIMIT_NOFILE with the node's reserve."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1 << 16
    return max(soft - RESERVED_DESCRIPTORS - REFUSING_AT_ONCE, 1)


throttled = Throttled(log, every=1.0)


def error_body(code: str, message: str) -> bytes:
    return msgspec.json.encode(ErrorOut(ErrorDetail(code, message)))


class _BareResponse(web.Response):
    """A response built outside the application (a parser error), without `Server`."""

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()
        self.headers.popall(hdrs.SERVER, None)


def _refusal() -> bytes:
    body = error_body("unavailable", "too many connections; retry shortly")
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


_REFUSAL = _refusal()


class Refusal(asyncio.Protocol):
    """Answers 503 at once and hangs up, holding its descriptor no longer than it must:
    until the client's request arrived (closing with it unread would reset the
    connection, and the client could lose the 503), its EOF, or REFUSAL_LINGER."""

    def __init__(self, server: EdgeServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop's is not one
        transport.write(_REFUSAL)
        if transport.can_write_eof():
            transport.write_eof()
        self.server.lingering(self)
        asyncio.get_running_loop().call_later(REFUSAL_LINGER, transport.close)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.close()  # its request is read: no reset

    def eof_received(self) -> bool:
        return False  # close now

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.refusing.pop(self, None)


class EdgeHandler(RequestHandler):
    """aiohttp's protocol, answering parser errors as JSON and reporting its state."""

    __slots__ = ("__weakref__", "reading_body", "pending", "streak", "poke")

    def __init__(self, manager: EdgeServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        # a request's bytes and its answer (gateway/json_answer.py) keep the loop polling
        self.poke = manager.busy_poll.poker if manager.busy_poll is not None else None
        self.reading_body = False  # a stalled upload is cut first at shutdown
        self.pending = b""  # a moved connection's request, read by the worker it left
        self.streak = (-1, 0)  # (worker, requests in a row for it), gateway/migration.py

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.pending:  # before anything more is read from the socket: in order
            data, self.pending = self.pending, b""
            self.data_received(data)

    def data_received(self, data: bytes) -> None:
        if self.poke is not None:
            self.poke()
        super().data_received(data)

    @property
    def in_request(self) -> bool:
        return self._request_in_progress

    def connection_lost(self, exc: BaseException | None) -> None:
        manager = self._manager
        super().connection_lost(exc)
        if isinstance(manager, EdgeServer):
            manager.live.discard(self)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A parser error (bad request line, headers, framing) is the client's: one
        rate-limited warning line and a JSON 400. Anything else stays a logged 500."""
        if request.writer.output_size > 0:
            raise ConnectionError("a response is already under way; cannot answer an error")
        if isinstance(exc, HttpProcessingError):
            detail = (message or exc.message or type(exc).__name__)[:200]
            throttled.warning(
                "parser", "malformed HTTP request from %s: %s", request.remote, detail
            )
            body = error_body("bad_request", f"malformed HTTP request: {detail}")
        else:
            self.log_exception("error handling request from %s", request.remote, exc_info=exc)
            body = error_body("internal", "internal error")
        response = _BareResponse(body=body, status=status, content_type="application/json")
        response.force_close()
        return response

    @contextmanager
    def reading(self) -> Iterator[None]:
        self.reading_body = True
        try:
            yield
        finally:
            self.reading_body = False


class MovableHandler(EdgeHandler):
    """A `--workers N` worker's handler: it keeps what the socket gave last, for a move
    to check that no part of a next request is behind the one moving
    (gateway/migration.py). A node alone does not pay for the extra call."""

    __slots__ = ("last_read",)

    def __init__(self, manager: EdgeServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self.last_read = b""

    def data_received(self, data: bytes) -> None:
        if data:  # aiohttp feeds b"" to reparse what it held back while paused
            self.last_read = data
        super().data_received(data)


class EdgeServer(web.Server):
    """aiohttp's server, capped at `max_connections` and cutting stalls at shutdown."""

    def __init__(
        self,
        *args: Any,
        max_connections: int,
        movable: bool = False,
        busy_poll: BusyPoll | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.max_connections = max_connections
        self.busy_poll = busy_poll
        self._handler = MovableHandler if movable else EdgeHandler
        # Handlers made and not yet lost; weak, so one that never connected cannot leak
        # a slot.
        self.live: weakref.WeakSet[EdgeHandler] = weakref.WeakSet()
        self.refusing: dict[Refusal, None] = {}  # oldest first
        self.refused = 0
        self._adopting: set[asyncio.Task[Any]] = set()  # moved connections being set up

    def __call__(self) -> EdgeHandler:
        return self._handler(self, loop=self._loop, **self._kwargs)

    def stats(self) -> dict[str, int]:
        """Counters for the admin API and metrics."""
        return {
            "connections": len(self.live),
            "max_connections": self.max_connections,
            "refused": self.refused,
            "refusing": len(self.refusing),
        }

    def accept(self) -> asyncio.BaseProtocol:
        """The protocol factory: a handler, or a 503 once the cap is reached."""
        if len(self.live) >= self.max_connections:
            self.refused += 1
            throttled.warning(
                "cap",
                "%d connections open, the cap (--max-connections): answering 503",
                len(self.live),
            )
            return Refusal(self)
        handler = self()
        self.live.add(handler)
        return handler

    def adopt(self, sock: socket.socket, request: bytes) -> None:
        """Serve a connection a sibling worker moved here (gateway/migration.py), starting
        with the request it read from it."""
        protocol = self.accept()
        if isinstance(protocol, EdgeHandler):
            protocol.pending = request
        loop = asyncio.get_running_loop()
        adopting = loop.create_task(loop.connect_accepted_socket(lambda: protocol, sock))
        self._adopting.add(adopting)
        adopting.add_done_callback(functools.partial(self._adopted, sock))

    def _adopted(self, sock: socket.socket, adopting: asyncio.Task[Any]) -> None:
        self._adopting.discard(adopting)
        if not adopting.cancelled() and adopting.exception() is not None:
            throttled.warning("adopt", "a moved connection failed: %s", adopting.exception())
            sock.close()

    def lingering(self, refusal: Refusal) -> None:
        """At most REFUSING_AT_ONCE refusals wait for their client; the oldest (most
        likely an idle socket, which had its 503 and FIN already) goes first."""
        if len(self.refusing) >= REFUSING_AT_ONCE:
            oldest = next(iter(self.refusing))
            del self.refusing[oldest]
            if oldest.transport is not None:
                oldest.transport.close()
        self.refusing[refusal] = None

    async def shutdown(self, timeout: float | None = None) -> None:
        """Cut idle, half-sent and still-uploading connections at once (nothing of theirs
        was acknowledged), then give in-flight requests a share of the budget."""
        if self._adopting:  # each is a moment's work: then its handler is in `live`
            await asyncio.wait(self._adopting, timeout=1.0)
        for handler in list(self.live):
            if not handler.in_request or handler.reading_body:
                handler.force_close()
        drain = (timeout or 0.0) * DRAIN_SHARE
        # RequestHandler.shutdown waits up to its timeout twice (finish, then cancel)
        await super().shutdown(drain / 2)


class ServerSlot:
    """Where the app finds the server that serves it (made after the app is frozen)."""

    server: EdgeServer | None = None

    def stats(self) -> dict[str, int]:
        return self.server.stats() if self.server is not None else {}


SERVER = web.AppKey("edge_server", ServerSlot)


class EdgeRunner(web.AppRunner):
    """An AppRunner whose server is an EdgeServer."""

    def __init__(
        self, app: web.Application, *, max_connections: int, movable: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(app, **kwargs)
        self.max_connections = max_connections
        self.movable = movable  # a worker's: its connections may move (MovableHandler)

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()  # runs the app's startup
        server = EdgeServer(
            Dispatcher(self.app),
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=asyncio.get_running_loop(),
            max_connections=self.max_connections,
            movable=self.movable,
            busy_poll=self.app.get(BUSY_POLL),
            **plain._kwargs,
        )
        if SERVER in self.app:
            self.app[SERVER].server = server
        return server


class EdgeSite(web.BaseSite):
    """A TCP site whose protocol factory is EdgeServer.accept."""

    def __init__(
        self, runner: EdgeRunner, host: str, port: int, *, reuse_port: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(runner, **kwargs)
        self.host, self.bound_port = host, port
        self.reuse_port = reuse_port  # --workers N: every worker listens on the one port

    @property
    def name(self) -> str:
        return f"http://{self.host}:{self.bound_port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert isinstance(server, EdgeServer)
        self._server = await asyncio.get_running_loop().create_server(
            server.accept,
            self.host,
            self.bound_port,
            backlog=self._backlog,
            reuse_port=self.reuse_port or None,
        )
        self.bound_port = self._server.sockets[0].getsockname()[1]


async def serve(
    app: web.Application,
    host: str,
    port: int,
    *,
    max_connections: int,
    shutdown_timeout: float,
    announce: Callable[[str], None],
    worker: Worker | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM, then shut down within `shutdown_timeout`; as one
    of `--workers N` (`worker`), on the shared port, on its Unix socket or its cluster
    peer port too, and until its supervisor goes (SIGTERM from it, or its lifeline)."""
    lifecycle = app.get(LIFECYCLE)
    leave_deadline = shutdown_timeout * LEAVE_SHARE if lifecycle is not None else 0.0
    runner = EdgeRunner(
        app,
        max_connections=max_connections,
        movable=worker is not None and worker.socket is not None,
        shutdown_timeout=shutdown_timeout - leave_deadline,
        keepalive_timeout=KEEPALIVE_TIMEOUT,
        access_log=None,
    )
    await runner.setup()
    try:
        site = EdgeSite(runner, host, port, reuse_port=worker is not None)
        await site.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        if worker is None:
            loop.add_signal_handler(signal.SIGINT, stop.set)
        else:  # Ctrl-C reaches the whole group: the supervisor stops its workers
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            watch_stdin(loop, stop)
            if worker.socket is not None:
                worker.socket.unlink(missing_ok=True)  # one a killed worker left
                await web.UnixSite(runner, str(worker.socket)).start()
                peers = app.get(PEERS)
                if peers is not None and isinstance(runner.server, EdgeServer):
                    await peers.take_connections(runner.server.adopt)
            if worker.peer is not None:
                await web.SockSite(runner, worker.peer).start()
        if lifecycle is not None:
            await lifecycle.listening()
        announce(f"======== Running on {site.name} ========")
        await stop.wait()
        if lifecycle is not None:
            await lifecycle.leaving(leave_deadline)
    finally:
        await runner.cleanup()
