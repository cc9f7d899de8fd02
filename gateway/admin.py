"""The admin API under /admin/...: the node's figures and its hot actors, flush and
passivate. Every figure comes from a component's stats() (gateway/node_stats.py) or a
read-only look at one actor; the bearer is the admin token (gateway/admin_token.py).

Nodes come from `Membership.nodes()` (gateway/admin_nodes.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from importlib import resources

from aiohttp import web

from engine.actor import ConversationActor
from engine.errors import InvalidInput, NotFound, Unavailable
from engine.registry import Registry
from gateway.admin_nodes import MEMBERSHIP, ThisNode
from gateway.admin_schemas import ActorOut, ActorsOut, NodesOut, PassivatedOut
from gateway.admin_token import ADMIN, AdminAccess, require_admin
from gateway.codec import json_response, path_id
from gateway.config import Settings
from gateway.connections import SERVER, ServerSlot
from gateway.keys import CONVERSATIONS, FLUSHER, JOURNAL
from gateway.metrics import add_metrics
from gateway.metrics import routes as metrics_routes
from gateway.openapi import Query, describe
from gateway.request_metrics import REQUEST_METRICS, RequestMetrics
from persistence.store import StoreError

routes = web.RouteTableDef()
PAGE = resources.files("gateway").joinpath("admin_page.html").read_bytes()
MAX_LIMIT = 1000
SORTS: dict[str, Callable[[ActorOut], tuple[float, str]]] = {  # largest or latest first
    "memory": lambda a: (-a.memory_bytes, a.conversation_id),
    "unflushed": lambda a: (-a.unflushed_records, a.conversation_id),
    "last_access": lambda a: (a.idle_seconds, a.conversation_id),
}


NODE_ID = web.AppKey("node_id", str)


def actor_out(
    request: web.Request, actor: ConversationActor, touched: float, now: float
) -> ActorOut:
    """The actor's figures; `now` (time.monotonic) is one instant for a whole listing."""
    flusher = request.app[FLUSHER]
    unflushed_bytes, unflushed_records = flusher.unflushed(actor.id)
    return ActorOut(
        conversation_id=actor.id,
        owner_node=request.app[NODE_ID],
        epoch=request.app[JOURNAL].epoch(actor.id),
        messages=len(actor),
        branches=len(actor.state.branches),
        memory_bytes=actor.nbytes,
        unflushed_bytes=unflushed_bytes,
        unflushed_records=unflushed_records,
        last_flush=flusher.last_flush(actor.id),
        pending_mutations=actor.queued_appends,
        idle_seconds=max(0.0, now - touched),
        title=actor.meta.title,
    )


def _registry(request: web.Request) -> Registry | None:
    """The hot actors' owner (None with --cache off: nothing is hot)."""
    conversations = request.app[CONVERSATIONS]
    return conversations if isinstance(conversations, Registry) else None


def _hot(request: web.Request) -> tuple[Registry, ConversationActor, float]:
    conversation_id = path_id(request, "conversation_id")
    registry = _registry(request)
    found = None if registry is None else registry.hot(conversation_id)
    if registry is not None and found is not None:
        return registry, *found
    raise NotFound(f"conversation {conversation_id} is not hot on this node")


def _paging(request: web.Request) -> tuple[str, int, int]:
    query = request.query
    sort = query.get("sort", "memory")
    if sort not in SORTS:
        raise InvalidInput(f"sort must be one of {', '.join(SORTS)}; got {sort!r}")
    try:
        limit = int(query.get("limit", "50"))
        offset = int(query.get("cursor", "0"))
    except ValueError:
        raise InvalidInput("limit and cursor must be integers") from None
    if not 1 <= limit <= MAX_LIMIT or offset < 0:
        raise InvalidInput(f"limit must be from 1 to {MAX_LIMIT}, cursor at least 0")
    return sort, limit, offset


@routes.get("/admin")
@describe("The admin page (HTML over the admin API)", response=str, media="text/html")
async def page(request: web.Request) -> web.Response:
    return web.Response(body=PAGE, content_type="text/html", charset="utf-8")


@routes.get("/admin/nodes")
@describe("Every live node with its figures", response=NodesOut)
async def nodes(request: web.Request) -> web.Response:
    require_admin(request)
    return json_response(NodesOut(request.app[MEMBERSHIP].nodes()))


@routes.get("/admin/actors")
@describe("This node's hot actors, sorted and paged", response=ActorsOut, query=(
    Query("sort", str, "memory (largest first), unflushed (records), last_access (latest)"),
    Query("limit", int, f"Page size, 1 to {MAX_LIMIT} (default 50)."),
    Query("cursor", str, "Opaque: the next_cursor of the previous page."),
))  # fmt: skip
async def actors(request: web.Request) -> web.Response:
    require_admin(request)
    sort, limit, offset = _paging(request)
    registry = _registry(request)
    hot = [] if registry is None else list(registry.hot_actors())
    now = time.monotonic()
    listed = sorted((actor_out(request, a, t, now) for a, t in hot), key=SORTS[sort])
    page = listed[offset : offset + limit]
    more = offset + limit < len(listed)
    return json_response(ActorsOut(page, len(listed), str(offset + limit) if more else None))


@routes.get("/admin/actors/{conversation_id}")
@describe("One hot actor's figures", response=ActorOut)
async def actor(request: web.Request) -> web.Response:
    require_admin(request)
    _, found, touched = _hot(request)
    return json_response(actor_out(request, found, touched, time.monotonic()))


@routes.post("/admin/actors/{conversation_id}/flush")
@describe("Write the actor's unflushed changes to the store now", response=ActorOut)
async def flush(request: web.Request) -> web.Response:
    require_admin(request)
    _, found, touched = _hot(request)
    try:
        await request.app[FLUSHER].flush(found.id)
    except StoreError as exc:
        raise Unavailable(f"store unavailable: {exc}") from None
    return json_response(actor_out(request, found, touched, time.monotonic()))


@routes.post("/admin/actors/{conversation_id}/passivate")
@describe("Flush the actor and drop it from memory", response=PassivatedOut)
async def passivate(request: web.Request) -> web.Response:
    require_admin(request)
    registry, found, _ = _hot(request)
    return json_response(PassivatedOut(found.id, await registry.passivate(found.id)))


def add_admin(app: web.Application, settings: Settings) -> None:
    """The admin API and page, /metrics, and what they read, on the app."""
    app[REQUEST_METRICS] = RequestMetrics()
    app[SERVER] = ServerSlot()
    app[ADMIN] = AdminAccess.make(settings.admin_token, settings.metrics_public)
    app[NODE_ID] = settings.node()
    app[MEMBERSHIP] = ThisNode(settings.node(), f"http://{settings.host}:{settings.port}", app)
    add_metrics(app)
    app.router.add_routes(routes)
    app.router.add_routes(metrics_routes)
