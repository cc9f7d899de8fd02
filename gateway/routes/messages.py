"""Messages: append, get, children, lineage."""

from __future__ import annotations

from aiohttp import web

from engine import content
from engine.actor import ConversationActor
from gateway.codec import json_response, path_id, read_body, uuid_str
from gateway.keys import REGISTRY
from gateway.schemas import CreateMessage, children_out, message_out, path_out

routes = web.RouteTableDef()
BASE = "/api/v1/conversations/{conversation_id}/messages"


@routes.post(BASE)
async def create(request: web.Request) -> web.Response:
    conversation_id = path_id(request, "conversation_id")
    body = await read_body(request, CreateMessage)
    normalized = content.normalize(body.content)

    async def append(actor: ConversationActor) -> web.Response:
        node = await actor.append(
            parent_id=uuid_str(body.parent_message_id),
            role=body.role,
            content=normalized,
            content_metadata=body.content_metadata,
            created_by=body.created_by,
            branch_id=uuid_str(body.branch_id),
        )
        lineage = [n.message_id for n in actor.lineage(node.message_id)]
        return json_response(message_out(actor.id, node, lineage))

    return await request.app[REGISTRY].run(conversation_id, append)


@routes.get(BASE + "/{message_id}")
async def get(request: web.Request) -> web.Response:
    actor = await request.app[REGISTRY].get(path_id(request, "conversation_id"))
    path = actor.lineage(path_id(request, "message_id"))
    return json_response(message_out(actor.id, path[-1], [n.message_id for n in path]))


@routes.get(BASE + "/{message_id}/children")
async def children(request: web.Request) -> web.Response:
    actor = await request.app[REGISTRY].get(path_id(request, "conversation_id"))
    message_id = path_id(request, "message_id")
    lineage = [n.message_id for n in actor.lineage(message_id)]
    return json_response(children_out(actor.id, lineage, actor.children(message_id)))


@routes.get(BASE + "/{message_id}/lineage")
async def lineage(request: web.Request) -> web.Response:
    actor = await request.app[REGISTRY].get(path_id(request, "conversation_id"))
    return json_response(path_out(actor.id, actor.lineage(path_id(request, "message_id"))))
