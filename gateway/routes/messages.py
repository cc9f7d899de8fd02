"""Messages: append, get, children, lineage."""

from __future__ import annotations

from aiohttp import web

from engine import content
from engine.actor import NewMessage
from gateway.codec import cached_json_response, json_response, path_id, read_body, uuid_str
from gateway.keys import CONVERSATIONS
from gateway.schemas import CreateMessage, children_out, message_out, path_out

routes = web.RouteTableDef()
BASE = "/api/v1/conversations/{conversation_id}/messages"


@routes.post(BASE)
async def create(request: web.Request) -> web.Response:
    conversation_id = path_id(request, "conversation_id")
    body = await read_body(request, CreateMessage)
    new = NewMessage(
        parent_id=uuid_str(body.parent_message_id),
        role=body.role,
        content=content.normalize(body.content),
        content_metadata=body.content_metadata,
        created_by=body.created_by,
        branch_id=uuid_str(body.branch_id),
    )
    node, lineage = await request.app[CONVERSATIONS].append(conversation_id, new)
    return json_response(message_out(conversation_id, node, lineage))


@routes.get(BASE + "/{message_id}")
async def get(request: web.Request) -> web.Response:
    conversation_id = path_id(request, "conversation_id")
    node, lineage = await request.app[CONVERSATIONS].message(
        conversation_id, path_id(request, "message_id")
    )
    return json_response(message_out(conversation_id, node, lineage))


@routes.get(BASE + "/{message_id}/children")
async def children(request: web.Request) -> web.Response:
    conversation_id = path_id(request, "conversation_id")
    lineage, nodes = await request.app[CONVERSATIONS].children(
        conversation_id, path_id(request, "message_id")
    )
    return json_response(children_out(conversation_id, lineage, nodes))


@routes.get(BASE + "/{message_id}/lineage")
async def lineage(request: web.Request) -> web.Response:
    conversation_id = path_id(request, "conversation_id")
    message_id = path_id(request, "message_id")

    async def build() -> object:
        path = await request.app[CONVERSATIONS].lineage(conversation_id, message_id)
        return path_out(conversation_id, path)

    return await cached_json_response(request, conversation_id, build)
