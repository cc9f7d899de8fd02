"""The admin API across the workers of one `canopy serve --workers N` (no cluster):
the siblings' own actors and figures, asked of their admin routes over their handover
sockets (gateway/worker_peers.py) as the caller (its headers: each worker checks the
admin token itself, one for the node) with `scope=node`, so nothing fans out twice. A
worker that does not answer (being restarted) is named in the answer rather than
failing it. With `--cluster redis` each worker is a node of the cluster, and
gateway/admin_peers.py asks them like any other.
"""

from __future__ import annotations

from urllib.parse import urlencode

import msgspec
from aiohttp import web

from engine.membership_workers import worker_id
from gateway.admin_schemas import ActorsOut, NodeOut, NodesOut
from gateway.worker_peers import PEERS, WorkerPeers


def siblings(request: web.Request) -> WorkerPeers | None:
    """The sibling workers a node-wide call asks; None alone or asked by a sibling."""
    peers = request.app.get(PEERS)
    if peers is None or request.query.get("scope", "cluster") == "node":
        return None
    return peers


async def sibling_actors(
    request: web.Request, peers: WorkerPeers, query: dict[str, str]
) -> tuple[list[ActorsOut], list[str]]:
    """Each sibling's first page of its own actors; and the siblings that did not answer."""
    pages, missing = [], []
    for k, body in (await _ask(request, peers, "/admin/actors", query)).items():
        if body is None:
            missing.append(_node_id(request, k))
        else:
            pages.append(msgspec.json.decode(body, type=ActorsOut))
    return pages, missing


async def sibling_nodes(request: web.Request, peers: WorkerPeers) -> list[NodeOut]:
    """Each sibling that answers, with its figures now."""
    answers = await _ask(request, peers, "/admin/nodes", {})
    found = [msgspec.json.decode(body, type=NodesOut).nodes for body in answers.values() if body]
    return [node for nodes in found for node in nodes]


async def _ask(
    request: web.Request, peers: WorkerPeers, path: str, query: dict[str, str]
) -> dict[int, bytes | None]:
    target = f"{path}?{urlencode({**query, 'scope': 'node'})}"
    paths = {k: target for k in range(peers.count) if k != peers.index}
    answers = await peers.ask_all(request, paths)
    return {k: a.body if a.status == 200 else None for k, a in answers.items()}


def _node_id(request: web.Request, index: int) -> str:
    from gateway.admin import NODE_ID  # admin -> here

    node = request.app[NODE_ID].rsplit("/", 1)[0]  # "<node>/worker-K": every worker's node
    return f"{node}/{worker_id(index)}"
