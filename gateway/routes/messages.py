"""Messages: append, get, children, lineage."""

from __future__ import annotations

from aiohttp import web

from engine import content
from engine.actor import NewMessage
from gateway.codec import json_response, path_id, read_body, uuid_str
from gateway.keys import CONVERSATIONS, PRINCIPAL
from gateway.listings import answer, answer_cached, children_listing, path_listing
from gateway.openapi import MESSAGES, describe
from gateway.paging import page_of
from gateway.responses import Listing
from gateway.schemas import CreateMessage, MessageOut, message_out

routes = web.RouteTableDef()
BASE = "/api/v1/conversations/{conversation_id}/messages"


@routes.post(BASE)
@describe("Append a message", body=CreateMessage, response=MessageOut)
async def create(request: web.Request) -> web.StreamResponse:
    conversation_id = path_id(request, "conversation_id")
    body = await read_body(request, CreateMessage)
    principal = request[PRINCIPAL]
    new = NewMessage(
        parent_id=uuid_str(body.parent_message_id),
        role=body.role,
        content=content.normalize(body.content),
        content_metadata=body.content_metadata,
        created_by=principal.author(body.created_by),
        branch_id=uuid_str(body.branch_id),
    )
    node, lineage = await request.app[CONVERSATIONS].append(principal, conversation_id, new)
    return json_response(message_out(conversation_id, node, lineage))


@routes.get(BASE + "/{message_id}")
@describe("Get a message", response=MessageOut)
async def get(request: web.Request) -> web.StreamResponse:
    conversation_id = path_id(request, "conversation_id")
    node, lineage = await request.app[CONVERSATIONS].message(
        request[PRINCIPAL], conversation_id, path_id(request, "message_id")
    )
    return json_response(message_out(conversation_id, node, lineage))


@routes.get(BASE + "/{message_id}/children")
@describe("A message's children, oldest first", response=MESSAGES, paged=True)
async def children(request: web.Request) -> web.StreamResponse:
    conversation_id = path_id(request, "conversation_id")
    message_id = path_id(request, "message_id")
    page = page_of(request)
    lineage, nodes = await request.app[CONVERSATIONS].children(
        request[PRINCIPAL], conversation_id, message_id
    )
    return await answer(request, children_listing(conversation_id, lineage, nodes, page))


@routes.get(BASE + "/{message_id}/lineage")
@describe("A message's lineage: root..message", response=MESSAGES, paged=True)
async def lineage(request: web.Request) -> web.StreamResponse:
    conversation_id = path_id(request, "conversation_id")
    message_id = path_id(request, "message_id")
    page = page_of(request)

    async def build() -> Listing:
        path = await request.app[CONVERSATIONS].lineage(
            request[PRINCIPAL], conversation_id, message_id
        )
        return path_listing(conversation_id, path, page)

    return await answer_cached(request, conversation_id, page, build)
