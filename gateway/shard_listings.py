"""Listings over every worker's shard: the sidebar and seed 000's user listing.

With `--workers N` a user's conversations lie in N shards. The worker answering asks
the others for their page over their Unix sockets (an internal route, as the caller:
each re-authenticates the request's own headers), takes its own from memory, and
merges them (engine/sidebar_merge.py). Asking the live workers, rather than reading
their SQLite files, keeps a write acknowledged a moment ago on another worker in the
listing: it is in that worker's hot listing, not yet in its store. Over a shared store
there are no shards to merge: the worker's own listing reads the store and merges its
siblings' hot entries (gateway/worker_peers.py).
"""

from __future__ import annotations

import asyncio
import base64
import binascii

import msgspec
from aiohttp import web

from engine.access import Principal
from engine.errors import CanopyError, Unavailable
from engine.registry import Registry
from engine.sidebar import USER_LISTING, Filters, InvalidCursor, Page, ShardPage, listing_for
from engine.sidebar_merge import merge, shard_cursors
from gateway.keys import CONVERSATIONS, PRINCIPAL
from gateway.schemas import ErrorOut
from gateway.worker_peers import PEERS, PeerAnswer, WorkerPeers

INTERNAL = "/internal/v1/shard-listing"
MSGPACK = "application/x-msgpack"


class ShardQuery(msgspec.Struct, array_like=True):
    filters: tuple[bool, bool | None, str | None, str | None]
    limit: int
    cursor: str | None
    user: str | None  # seed 000's listing of this user, else the caller's sidebar

    def encoded(self) -> str:
        return base64.urlsafe_b64encode(_encode(self)).rstrip(b"=").decode()


class PeerRefused(CanopyError):
    """Another worker refused its part of a listing: its answer, passed on."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


_encode = msgspec.msgpack.Encoder().encode
_query = msgspec.msgpack.Decoder(ShardQuery).decode
_page = msgspec.msgpack.Decoder(ShardPage).decode
_error = msgspec.json.Decoder(ErrorOut).decode


async def sidebar_page(
    request: web.Request, filters: Filters, limit: int, cursor: str | None
) -> Page:
    """The caller's sidebar page: this node's, or merged over every worker's shard."""
    peers = request.app.get(PEERS)
    if peers is None or peers.shared_store:
        return await request.app[CONVERSATIONS].sidebar(request[PRINCIPAL], filters, limit, cursor)
    return await _merged(request, peers, filters, limit, cursor, None)


async def user_ids(request: web.Request, user_id: str, limit: int) -> list[str]:
    """Seed 000's listing of `user_id`: this node's, or merged over every shard."""
    peers = request.app.get(PEERS)
    if peers is None or peers.shared_store:
        return await request.app[CONVERSATIONS].user_conversations(
            request[PRINCIPAL], user_id, limit
        )
    page = await _merged(request, peers, USER_LISTING, limit, None, user_id)
    return [item.meta.conversation_id for item in page.items]


async def _merged(
    request: web.Request,
    peers: WorkerPeers,
    filters: Filters,
    limit: int,
    cursor: str | None,
    user: str | None,
) -> Page:
    cursors = shard_cursors(cursor, peers.count, filters)
    fields = (filters.favorite, filters.archived, filters.tag, filters.q)
    paths = {
        k: f"{INTERNAL}?q={ShardQuery(fields, limit, cursors[k], user).encoded()}"
        for k in range(peers.count)
        if k != peers.index
    }
    mine = ShardQuery(fields, limit, cursors[peers.index], user)
    own, answers = await asyncio.gather(_shard_page(request, mine), peers.ask_all(request, paths))
    pages = [own if k == peers.index else _read(answers[k]) for k in range(peers.count)]
    return merge(pages, limit, filters)


def _read(answer: PeerAnswer) -> ShardPage:
    if answer.status == 200 and answer.content_type == MSGPACK:
        return _page(answer.body)
    try:
        detail = _error(answer.body).error
    except msgspec.DecodeError:
        raise Unavailable(f"a worker answered its listing with {answer.status}") from None
    if answer.status == 503:
        raise Unavailable(detail.message)
    raise PeerRefused(answer.status, detail.code, detail.message)


async def _shard_page(request: web.Request, query: ShardQuery) -> ShardPage:
    registry = request.app[CONVERSATIONS]
    assert isinstance(registry, Registry)  # --workers needs the cache (gateway/config.py)
    principal: Principal = request[PRINCIPAL]
    if query.user is not None:
        principal = listing_for(principal, query.user)
    favorite, archived, tag, q = query.filters
    filters = Filters(favorite, archived, tag, q)
    return await registry.shard_page(principal, filters, query.limit, query.cursor)


async def shard_listing(request: web.Request) -> web.Response:
    """The internal route: this worker's page of a merged listing, to its siblings only
    (over its Unix socket; on the shared port it does not exist)."""
    if request.transport is None or request.transport.get_extra_info("peername"):
        raise web.HTTPNotFound()  # a TCP peer has an address; a Unix socket's has none
    try:
        query = _query(base64.urlsafe_b64decode(request.query.get("q", "").encode() + b"=="))
    except (binascii.Error, msgspec.DecodeError, ValueError):
        raise InvalidCursor("not a shard listing query") from None
    page = await _shard_page(request, query)
    return web.Response(body=_encode(page), content_type=MSGPACK)


def add_internal_routes(app: web.Application) -> None:
    app.router.add_get(INTERNAL, shard_listing, allow_head=False)
