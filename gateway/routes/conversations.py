"""Conversations: create, get, tree, update, delete."""

from __future__ import annotations

from aiohttp import web

from engine.actor import ConversationActor, NewConversation
from gateway.codec import cached_json_response, json_response, path_id, read_body
from gateway.keys import CONVERSATIONS
from gateway.schemas import (
    CreateConversation,
    Deleted,
    UpdateConversation,
    conversation_out,
    tree_out,
)

routes = web.RouteTableDef()
BASE = "/api/v1/conversations"


@routes.post(BASE)
async def create(request: web.Request) -> web.Response:
    body = await read_body(request, CreateConversation)
    new = NewConversation(body.title, body.created_by, body.description, body.is_public)
    actor = await request.app[CONVERSATIONS].create(new)
    return json_response(conversation_out(actor.meta))


@routes.get(BASE + "/{conversation_id}")
async def get(request: web.Request) -> web.Response:
    actor = await request.app[CONVERSATIONS].get(path_id(request, "conversation_id"))
    return json_response(conversation_out(actor.meta))


@routes.get(BASE + "/{conversation_id}/tree")
async def tree(request: web.Request) -> web.Response:
    conversation_id = path_id(request, "conversation_id")

    async def build() -> object:
        actor = await request.app[CONVERSATIONS].get(conversation_id)
        return tree_out(actor.id, actor.messages())

    return await cached_json_response(request, conversation_id, build)


@routes.put(BASE + "/{conversation_id}")
async def update(request: web.Request) -> web.Response:
    conversation_id = path_id(request, "conversation_id")
    body = await read_body(request, UpdateConversation)

    async def apply(actor: ConversationActor) -> web.Response:
        meta = await actor.update(
            title=body.title, description=body.description, is_public=body.is_public
        )
        return json_response(conversation_out(meta))

    return await request.app[CONVERSATIONS].run(conversation_id, apply)


@routes.delete(BASE + "/{conversation_id}")
async def delete(request: web.Request) -> web.Response:
    conversation_id = path_id(request, "conversation_id")
    await request.app[CONVERSATIONS].run(conversation_id, lambda actor: actor.delete())
    return json_response(Deleted("Conversation deleted successfully"))
