"""A worker of `canopy serve --workers N` among its siblings.

Each conversation belongs to one worker by placement (rendezvous over `worker-0` ..
`worker-N-1`, engine/membership_workers.py). The kernel hands a connection on the
shared port to any worker, so a request for another worker's conversation is relayed
to it over its Unix socket (gateway/relay.py) with the hop header, which the owner
never relays again. The dispatcher asks `owner_elsewhere` only when there are peers:
a single worker pays nothing per request.

Over a shared store (`--store scylla`) the store lists every worker's conversations:
a listing reads it once and merges what the siblings changed and have not flushed yet,
asked of each over its socket (`hot_entries`, engine/peer_listing.py, as a cluster
node asks its peers) rather than merging N pages of the same store rows.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import msgspec
from aiohttp import hdrs, web
from aiohttp.web_urldispatcher import UrlMappingMatchInfo

from engine import peer_listing
from engine.membership_workers import worker_id
from engine.peer_listing import HotEntries
from engine.placement import Rendezvous
from gateway.migration import Adopt, Inbox, Outbox, inbox_path
from gateway.peer_http import PeerPool, PeerUnavailable
from gateway.relay import relay, request_head
from gateway.schemas import ErrorDetail, ErrorOut
from persistence.background import Throttled

log = logging.getLogger(__name__)
throttled = Throttled(log)


@dataclass(frozen=True)
class PeerAnswer:
    status: int
    body: bytes
    content_type: str


HOP = "X-Canopy-Hop"  # set on a request one worker relays to another
CONNECT_TIMEOUT = 2.0  # a worker being restarted answers after this: 503 meanwhile
HOT_LISTING = "/internal/v1/worker-hot-listing/"  # + user id: a worker's unflushed entries
MSGPACK = "application/msgpack"  # as a cluster node answers its peers (gateway/forwarding.py)


class WorkerPeers:
    """Worker `index` among workers answering on `sockets` (one per worker, by index)."""

    def __init__(self, index: int, sockets: Sequence[Path], *, shared_store: bool = False) -> None:
        self.index = index
        self.shared_store = shared_store  # listings: the store's rows + siblings' hot ones
        self._hot_entries: Callable[[str], HotEntries] | None = None
        self.node_id = worker_id(index)
        self.sockets = list(sockets)
        self.placement = Rendezvous(worker_id(k) for k in range(len(sockets)))
        self._index_of = {worker_id(k): k for k in range(len(sockets))}
        self._sessions: dict[int, PeerPool] = {}
        self._outbox = Outbox({k: inbox_path(path) for k, path in enumerate(self.sockets)})
        self._inbox: Inbox | None = None
        self.handed_over = 0
        self.unreachable = 0
        self.listing_failures = 0  # siblings whose hot entries a listing went without

    @property
    def count(self) -> int:
        return len(self.sockets)

    async def __aenter__(self) -> WorkerPeers:
        for k, path in enumerate(self.sockets):
            if k != self.index:
                self._sessions[k] = PeerPool.unix(str(path), connect_timeout=CONNECT_TIMEOUT)
        return self

    async def __aexit__(self, *exc: object) -> None:
        sessions, self._sessions = self._sessions, {}
        for session in sessions.values():
            session.close()
        self._outbox.close()
        if self._inbox is not None:
            inbox, self._inbox = self._inbox, None
            await inbox.__aexit__(None, None, None)

    async def take_connections(self, adopt: Adopt) -> None:
        """Take the connections siblings move here (gateway/migration.py), given to
        `adopt`, until this worker closes; once it listens."""
        self._inbox = Inbox(inbox_path(self.sockets[self.index]), adopt)
        await self._inbox.__aenter__()

    def stats(self) -> dict[str, Any]:
        return {
            "worker": self.index,
            "workers": self.count,
            "handed_over": self.handed_over,
            "connections_opened": sum(pool.opened for pool in self._sessions.values()),
            "unreachable": self.unreachable,
            "listing_failures": self.listing_failures,
            **self._outbox.stats(),
            **(self._inbox.stats() if self._inbox is not None else {}),
        }

    def owns(self, conversation_id: str) -> bool:
        """Whether the conversation is placed on this worker."""
        return self.placement.owner_of(conversation_id) == self.node_id

    def owner_elsewhere(self, request: web.Request, match: UrlMappingMatchInfo) -> int | None:
        """The worker that owns the route's conversation, if not this one. A request a
        sibling relayed here is served here; the hop header counts only on the Unix
        socket (a client sending it to the shared port must not pick the worker)."""
        conversation_id = match.get("conversation_id")
        if conversation_id is None:
            return None
        if HOP in request.headers and _from_sibling(request):
            return None
        owner = self._index_of[self.placement.owner_of(conversation_id)]
        if owner == self.index:
            self._outbox.served_here(request)
            return None
        return owner

    async def hand_over(self, request: web.Request, owner: int) -> web.StreamResponse:
        """Move the request's connection to worker `owner`, or else relay the request
        to it and its answer back; 503 if it cannot be reached (being restarted) or
        fails before answering."""
        if self._outbox.move(request, owner):
            return web.Response(status=204)  # written nowhere: the connection is the owner's
        self.handed_over += 1
        try:
            return await relay(request, self._sessions[owner], hop_header=HOP)
        except PeerUnavailable as exc:
            return self._unreachable(owner, exc)

    async def ask_all(self, request: web.Request, paths: dict[int, str]) -> dict[int, PeerAnswer]:
        """GET each worker's path (and query) at once, as the request's caller (its
        headers, so each re-authenticates it); 503 for a worker that does not answer."""
        answers = await asyncio.gather(
            *(self._ask(k, request_head(request, HOP, get=p)[0]) for k, p in paths.items())
        )
        return dict(zip(paths, answers, strict=True))

    async def _ask(self, k: int, head: bytes) -> PeerAnswer:
        try:
            answer = await self._sessions[k].request(head, None, method=hdrs.METH_GET)
            body = await answer.read()
        except OSError as exc:  # PeerUnavailable, or the answer cut short
            refusal = self._unreachable(k, exc)
            assert refusal.body is None or isinstance(refusal.body, bytes)
            return PeerAnswer(503, refusal.body or b"", "application/json")
        content_type = (answer.header(hdrs.CONTENT_TYPE) or "").split(";", 1)[0].strip()
        return PeerAnswer(answer.status, body, content_type or "application/octet-stream")

    # -- listings over a shared store ----------------------------------------------------

    def list_hot(self, entries: Callable[[str], HotEntries]) -> None:
        """Answer the siblings' `peer_entries` with `entries(user)` (the registry's)."""
        self._hot_entries = entries

    async def peer_entries(self, user_id: str) -> list[HotEntries]:
        """Every sibling's unflushed entries for the user, asked at once; one that does
        not answer (being restarted: it flushes what it replays before it serves) is
        left out and counted."""
        path = HOT_LISTING + quote(user_id, safe="")
        head = f"GET {path} HTTP/1.1\r\nHost: {self.node_id}\r\n\r\n".encode()
        answers = await asyncio.gather(*(self._ask(k, head) for k in self._sessions))
        found = []
        for answer in answers:
            if answer.status == 200 and answer.content_type == MSGPACK:
                found.append(peer_listing.decode(answer.body))
            else:
                self.listing_failures += 1
                throttled.warning("listing", "a worker's hot listing is missing: %d %r",
                                  answer.status, answer.body[:200])  # fmt: skip
        return found

    def internal(self, request: web.Request) -> web.Response | None:
        """A sibling's call for this worker's hot entries, over the Unix socket only
        (on the shared port it does not exist); None for any other path."""
        path = request.rel_url.raw_path
        if self._hot_entries is None or not path.startswith(HOT_LISTING):
            return None
        if not _from_sibling(request):
            return None
        body = peer_listing.encode(self._hot_entries(unquote(path[len(HOT_LISTING) :])))
        return web.Response(body=body, content_type=MSGPACK)

    def _unreachable(self, owner: int, exc: BaseException) -> web.Response:
        self.unreachable += 1
        message = f"worker {owner} is not answering (restarting?): {exc}"
        return web.Response(
            status=503,
            body=msgspec.json.encode(ErrorOut(ErrorDetail("unavailable", message))),
            content_type="application/json",
            headers={"Retry-After": "1"},
        )


def _from_sibling(request: web.Request) -> bool:
    """Whether the request came over a Unix socket (a TCP peer has an address)."""
    transport = request.transport
    return transport is not None and not transport.get_extra_info("peername")


PEERS = web.AppKey("peers", WorkerPeers)  # with --workers N: this worker's siblings
