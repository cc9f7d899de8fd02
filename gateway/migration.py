"""A client's connection moves to the worker that owns its conversation (`--workers N`).

The kernel spreads connections on the shared port over the workers at random. A
keep-alive client writing to one conversation so lands, half the time, on a worker
that must hand each request over (gateway/worker_peers.py): both workers then parse and
answer every request, and two workers did less than one on two cores. Instead, the
first such request hands over the connection itself. Its socket descriptor goes to the
owner over a Unix socket (SCM_RIGHTS) with the request's bytes. The owner adopts the
socket as if it had accepted it and answers that request, and the client's next
requests arrive there directly. The client sees nothing: same connection, same
address (the owner's rate limits and access log see the client's own).

A connection moves once MOVE_AFTER requests in a row on it were for one other worker:
it looks like a client's connection to one conversation. A pooled client's connection
spreads its requests over every worker; moving it at each of them would bounce it to
and fro, and a move costs about two relays (bench.workers, mixed: 221 µs a request
moving at once, 150 relaying). Its requests are relayed.

A request moves only when it can move whole, else it is relayed as before:
- It came over TCP (not a sibling's relay) and is HTTP/1.x without `Expect`.
- Its body, if any, has all arrived and was framed by Content-Length (a chunked one
  would arrive de-chunked under a chunked header).
- Nothing is queued behind it on the connection: no pipelined request parsed, no
  part of one read (the last bytes read from the socket end where this request
  ends), no response bytes still unsent.
- It fits one datagram (MAX_MESSAGE).
- The owner's inbox takes it at once; a full or missing one means a relay.
After the send, this worker lets go of its descriptor without touching the connection:
`abort()` closes only its own descriptor (libuv drops it from the epoll set first), and
the owner's copy keeps the connection open. The response this worker's aiohttp then
tries to write fails as on a lost connection, quietly.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path

from aiohttp import hdrs, web

from gateway.relay import BODY_READ
from persistence.background import Throttled

log = logging.getLogger(__name__)
throttled = Throttled(log)

MAX_MESSAGE = 64 * 1024  # a request's head and body, in one datagram
MOVE_AFTER = 8  # requests in a row for one other worker (random over 2 workers: 1 in 256)
BACKLOG = 64


def inbox_path(handover_socket: Path) -> Path:
    """Where a worker takes connections in: beside its handover socket (same private
    directory, so only the node's own processes reach it)."""
    return handover_socket.with_name(handover_socket.stem + ".conn")


def request_bytes(request: web.BaseRequest) -> bytes | None:
    """The request as the client sent it, if it may move whole (see the module's list)."""
    transport = request.transport
    if transport is None or transport.is_closing() or not transport.get_extra_info("peername"):
        return None  # gone, or a sibling's relay over a Unix socket
    if transport.get_write_buffer_size():
        return None  # an earlier answer is still on its way out
    protocol = request.protocol
    if getattr(protocol, "_messages", None):  # aiohttp's queue of parsed requests
        return None
    version = request.version
    if version.major != 1 or hdrs.EXPECT in request.headers:
        return None
    if hdrs.TRANSFER_ENCODING in request.headers:
        return None
    line = f"{request.method} {request.raw_path} HTTP/{version.major}.{version.minor}\r\n"
    head = [line.encode()]
    head += [name + b": " + value + b"\r\n" for name, value in request.raw_headers]
    head.append(b"\r\n")
    if sum(map(len, head)) + (request.content_length or 0) > MAX_MESSAGE:
        return None  # checked before the body is taken: a relay must still find it
    if not request.body_exists:
        return b"".join(head) if _ends_the_read(protocol, b"\r\n\r\n") else None
    if not request.content.is_eof():
        return None
    request[BODY_READ] = body = request.content.read_nowait()  # a relay if it stays here
    return b"".join(head) + body if _ends_the_read(protocol, body) else None


def _ends_the_read(protocol: object, tail: bytes) -> bool:
    """Whether the last bytes read from the socket end with the request's `tail`: part
    of a next request read behind it is in this worker's parser and cannot go along
    (the owner would parse the rest of it as a request of its own: a 400)."""
    last: bytes = getattr(protocol, "last_read", b"")
    n = min(len(last), len(tail))
    return n > 0 and last.endswith(tail[-n:])


class Outbox:
    """This worker's end of its siblings' inboxes (connected when first used)."""

    def __init__(self, inboxes: dict[int, Path]) -> None:
        self._paths = inboxes
        self._sockets: dict[int, socket.socket] = {}
        self.moved = 0  # connections handed to their owner
        self.kept = 0  # requests that could not move (relayed instead)

    def close(self) -> None:
        sockets, self._sockets = self._sockets, {}
        for sock in sockets.values():
            sock.close()

    def stats(self) -> dict[str, int]:
        return {"connections_moved": self.moved, "connections_kept": self.kept}

    @staticmethod
    def served_here(request: web.BaseRequest) -> None:
        """A request for this worker's conversation: the connection's streak ends."""
        protocol = request.protocol
        if hasattr(protocol, "streak"):
            protocol.streak = (-1, 0)

    def move(self, request: web.BaseRequest, owner: int) -> bool:
        """Hand the request's connection to worker `owner` with the request, if its last
        MOVE_AFTER requests were that worker's; False (the connection untouched) if it
        does not move now."""
        protocol = request.protocol
        if not hasattr(protocol, "streak"):
            return False
        worker, count = protocol.streak
        count = count + 1 if worker == owner else 1
        protocol.streak = (owner, count)
        if count < MOVE_AFTER:
            return False
        data = request_bytes(request)
        if data is None:
            self.kept += 1
            return False
        transport = request.transport
        assert transport is not None
        copy = os.dup(transport.get_extra_info("socket").fileno())
        try:
            sent = self._send(owner, data, copy)
        finally:
            os.close(copy)  # sent: the owner has its own; not sent: nobody needs it
        if not sent:
            self.kept += 1
            return False
        transport.abort()  # this worker's descriptor only: the owner's keeps it open
        self.moved += 1
        return True

    def _send(self, owner: int, data: bytes, descriptor: int) -> bool:
        sock = self._sockets.get(owner)
        try:
            if sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                sock.setblocking(False)
                try:
                    sock.connect(str(self._paths[owner]))
                except OSError:
                    sock.close()
                    raise
                self._sockets[owner] = sock
            socket.send_fds(sock, [data], [descriptor])
            return True
        except BlockingIOError:
            return False  # its inbox is full: relayed this time
        except OSError as exc:  # not listening (restarting), or gone since
            throttled.warning("move", "worker %d takes no connections now: %s", owner, exc)
            dropped = self._sockets.pop(owner, None)
            if dropped is not None:
                dropped.close()
            return False


Adopt = Callable[[socket.socket, bytes], None]


class Inbox:
    """Takes the connections siblings move here and gives each to `adopt` with the
    request that came with it; an async context manager (listens while entered)."""

    def __init__(self, path: Path, adopt: Adopt) -> None:
        self._path = path
        self._adopt = adopt
        self._listener: socket.socket | None = None
        self._peers: set[socket.socket] = set()
        self.adopted = 0
        self.malformed = 0  # datagrams without exactly one descriptor, or cut short

    async def __aenter__(self) -> Inbox:
        self._path.unlink(missing_ok=True)  # one a killed worker left
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        listener.setblocking(False)
        listener.bind(str(self._path))
        listener.listen(BACKLOG)
        self._listener = listener
        asyncio.get_running_loop().add_reader(listener.fileno(), self._accept)
        return self

    async def __aexit__(self, *exc: object) -> None:
        loop = asyncio.get_running_loop()
        for sock in [*self._peers, *([self._listener] if self._listener else [])]:
            loop.remove_reader(sock.fileno())
            sock.close()
        self._peers.clear()
        self._listener = None
        self._path.unlink(missing_ok=True)

    def stats(self) -> dict[str, int]:
        return {"connections_adopted": self.adopted, "moves_malformed": self.malformed}

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            peer, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        peer.setblocking(False)
        self._peers.add(peer)
        asyncio.get_running_loop().add_reader(peer.fileno(), self._receive, peer)

    def _receive(self, peer: socket.socket) -> None:
        try:
            data, descriptors, flags, _ = socket.recv_fds(peer, MAX_MESSAGE, 4)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            throttled.warning("move", "a sibling's connection failed: %s", exc)
            data, descriptors, flags = b"", [], 0
        if not data and not descriptors:  # the sibling closed its end
            asyncio.get_running_loop().remove_reader(peer.fileno())
            self._peers.discard(peer)
            peer.close()
            return
        if len(descriptors) != 1 or flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            self.malformed += 1
            for descriptor in descriptors:
                os.close(descriptor)
            return
        self.adopted += 1
        self._adopt(socket.socket(fileno=descriptors[0]), data)
