"""The admin API under /admin/...: the node's figures and its hot actors, flush and
passivate. Every figure comes from a component's stats() (gateway/node_stats.py) or a
read-only look at one actor; the bearer is the admin token (gateway/admin_token.py).

Nodes come from `Membership.nodes()` (gateway/admin_nodes.py). On a cluster the actors
listing spans every live node and an actor hot on another node is looked at, flushed
and passivated there (gateway/admin_peers.py): each answer names the owner node. With
`--workers N` and no cluster the nodes and actors listings span every worker
(gateway/admin_workers.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from importlib import resources

import aiohttp
from aiohttp import web

from engine.actor import ConversationActor
from engine.errors import InvalidInput, NotFound, Unavailable
from engine.registry import Registry
from gateway.admin_nodes import MEMBERSHIP, MemberNodes, ThisNode
from gateway.admin_peers import PEER_ADMIN, PeerAdmin
from gateway.admin_schemas import ActorOut, ActorsOut, NodeOut, NodesOut, PassivatedOut
from gateway.admin_token import ADMIN, AdminAccess, require_admin
from gateway.admin_workers import sibling_actors, sibling_nodes, siblings
from gateway.cluster_member import ClusterMember
from gateway.codec import json_response, path_id
from gateway.config import Settings
from gateway.connections import SERVER, ServerSlot
from gateway.keys import CLUSTER, CONVERSATIONS, FLUSHER, JOURNAL
from gateway.metrics import add_metrics
from gateway.metrics import routes as metrics_routes
from gateway.openapi import Query, describe
from gateway.request_metrics import REQUEST_METRICS, RequestMetrics
from gateway.worker_peers import PEERS
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
    # a node asked by a peer gives it every row up to the peer's page end at once
    cap = MAX_LIMIT if _scope(request) == "cluster" else float("inf")
    if not 1 <= limit <= cap or offset < 0:
        raise InvalidInput(f"limit must be from 1 to {MAX_LIMIT}, cursor at least 0")
    return sort, limit, offset


def _scope(request: web.Request) -> str:
    scope = request.query.get("scope", "cluster")
    if scope not in ("cluster", "node"):
        raise InvalidInput(f"scope must be cluster or node; got {scope!r}")
    return scope


def _by_id(node: NodeOut) -> str:
    return node.node_id


def _peers(request: web.Request) -> ClusterMember | None:
    """The cluster member whose peers a cluster-wide call asks; None when there are
    none to ask (a node alone, --workers N, or a call a peer made: scope=node)."""
    member = request.app.get(CLUSTER)
    if member is None or member.directory is None or not member.token:
        return None
    return member if _scope(request) == "cluster" else None


@routes.get("/admin")
@describe("The admin page (HTML over the admin API)", response=str, media="text/html")
async def page(request: web.Request) -> web.StreamResponse:
    return web.Response(body=PAGE, content_type="text/html", charset="utf-8")


@routes.get("/admin/nodes")
@describe("Every live node with its figures", response=NodesOut)
async def nodes(request: web.Request) -> web.StreamResponse:
    require_admin(request)
    listed = request.app[MEMBERSHIP].nodes()
    if (workers := siblings(request)) is not None:  # --workers N: each its own figures
        listed = sorted([*listed, *await sibling_nodes(request, workers)], key=_by_id)
    return json_response(NodesOut(listed))


@routes.get("/admin/actors")
@describe("The hot actors (on a cluster, of every live node), sorted and paged",
          response=ActorsOut, query=(
    Query("sort", str, "memory (largest first), unflushed (records), last_access (latest)"),
    Query("limit", int, f"Page size, 1 to {MAX_LIMIT} (default 50)."),
    Query("cursor", str, "Opaque: the next_cursor of the previous page."),
    Query("scope", str, "cluster (default: every live node's actors) or node (this one's)"),
))  # fmt: skip
async def actors(request: web.Request) -> web.StreamResponse:
    require_admin(request)
    sort, limit, offset = _paging(request)
    registry = _registry(request)
    hot = [] if registry is None else list(registry.hot_actors())
    now = time.monotonic()
    listed = [actor_out(request, a, t, now) for a, t in hot]
    total, missing = len(listed), list[str]()
    member, pages = _peers(request), list[ActorsOut]()
    if member is not None:  # each peer's first offset + limit, merged with ours
        peers = [m for m in member.membership.live() if m.node_id != member.node_id]
        query = {"sort": sort, "limit": str(offset + limit), "cursor": "0"}
        pages, missing = await request.app[PEER_ADMIN].listings(peers, member.token, query)
    elif (workers := siblings(request)) is not None:  # --workers N without a cluster
        query = {"sort": sort, "limit": str(offset + limit), "cursor": "0"}
        pages, missing = await sibling_actors(request, workers, query)
    for answer in pages:
        listed.extend(answer.actors)
        total += answer.total
    listed.sort(key=SORTS[sort])
    page = listed[offset : offset + limit]
    cursor = str(offset + limit) if offset + limit < total else None
    return json_response(ActorsOut(page, total, cursor, missing_nodes=missing))


async def _at_owner(request: web.Request) -> web.StreamResponse | None:
    """The answer of the node holding the conversation hot, if that is another node of
    the cluster (its lease holder) or another worker (its placement); None to answer here."""
    member = _peers(request)
    conversation_id = path_id(request, "conversation_id")
    registry = _registry(request)
    workers = request.app.get(PEERS)
    if workers is not None and (registry is None or not registry.hot(conversation_id)):
        owner = workers.owner_elsewhere(request, request.match_info)
        return None if owner is None else await workers.hand_over(request, owner)
    if member is None or (registry is not None and registry.hot(conversation_id)):
        return None
    assert member.directory is not None
    try:
        holder = await member.directory.holder(conversation_id)
    except Exception as exc:  # noqa: BLE001 - Redis unreachable: say so
        raise Unavailable(f"cannot look up the conversation's owner: {exc}") from None
    urls = {m.node_id: m.url for m in member.membership.live()}
    if holder is None or holder == member.node_id or holder not in urls:
        return None  # not hot anywhere: this node's 404
    try:
        answer = await request.app[PEER_ADMIN].call(
            urls[holder], request.method, request.path, member.token, {}
        )
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise Unavailable(f"the owner ({holder}) did not answer: {exc}") from None
    return web.Response(status=answer.status, body=answer.body, content_type="application/json")


@routes.get("/admin/actors/{conversation_id}")
@describe("One hot actor's figures (on a cluster, from the node holding it)", response=ActorOut)
async def actor(request: web.Request) -> web.StreamResponse:
    require_admin(request)
    if (relayed := await _at_owner(request)) is not None:
        return relayed
    _, found, touched = _hot(request)
    return json_response(actor_out(request, found, touched, time.monotonic()))


@routes.post("/admin/actors/{conversation_id}/flush")
@describe("Write the actor's unflushed changes to the store now", response=ActorOut)
async def flush(request: web.Request) -> web.StreamResponse:
    require_admin(request)
    if (relayed := await _at_owner(request)) is not None:
        return relayed
    _, found, touched = _hot(request)
    try:
        await request.app[FLUSHER].flush_now(found.id)
    except StoreError as exc:
        raise Unavailable(f"store unavailable: {exc}") from None
    return json_response(actor_out(request, found, touched, time.monotonic()))


@routes.post("/admin/actors/{conversation_id}/passivate")
@describe("Flush the actor and drop it from memory", response=PassivatedOut)
async def passivate(request: web.Request) -> web.StreamResponse:
    require_admin(request)
    if (relayed := await _at_owner(request)) is not None:
        return relayed
    registry, found, _ = _hot(request)
    return json_response(PassivatedOut(found.id, await registry.passivate(found.id)))


def add_admin(app: web.Application, settings: Settings) -> None:
    """The admin API and page, /metrics, and what they read, on the app."""
    app[REQUEST_METRICS] = RequestMetrics()
    app[SERVER] = ServerSlot()
    app[ADMIN] = AdminAccess.make(settings.admin_token, settings.metrics_public)
    app[NODE_ID] = settings.node()
    app[MEMBERSHIP] = MemberNodes(ThisNode(settings.node(), settings.advertised(), app), app)
    peers = app[PEER_ADMIN] = PeerAdmin()
    app.on_cleanup.append(peers.close)
    add_metrics(app)
    app.router.add_routes(routes)
    app.router.add_routes(metrics_routes)
