"""Conversations: create, get, tree, update, delete."""

from __future__ import annotations

from aiohttp import web

from engine.actor import ConversationActor, NewConversation
from gateway.codec import json_response, path_id, read_body
from gateway.forwarding import ASSIGNED
from gateway.keys import CONVERSATIONS, DEFAULT_TTL, PRINCIPAL
from gateway.listings import answer_cached, tree_listing
from gateway.openapi import describe
from gateway.paging import page_of
from gateway.responses import Listing
from gateway.routes.sessions import expiry
from gateway.schemas import (
    CompactTreeOut,
    ConversationOut,
    Deleted,
    TreeOut,
    UpdateConversation,
    conversation_out,
)
from gateway.session_schemas import CreateSession

routes = web.RouteTableDef()
BASE = "/api/v1/conversations"


@routes.post(BASE)
@describe("Create a conversation", body=CreateSession, response=ConversationOut)
async def create(request: web.Request) -> web.StreamResponse:
    principal = request[PRINCIPAL]
    body = await read_body(request, CreateSession)
    author = principal.author(body.created_by)
    new = NewConversation(
        body.title, author, body.description, body.is_public,
        is_favorite=body.is_favorite, tags=body.tags,
        expires_at=expiry(body.expires_at, body.ttl_seconds, request.app[DEFAULT_TTL]),
        conversation_id=request.get(ASSIGNED),  # in a cluster (gateway/forwarding.py)
    )  # fmt: skip
    actor = await request.app[CONVERSATIONS].create(principal, new)
    return json_response(conversation_out(actor.meta))


@routes.get(BASE + "/{conversation_id}")
@describe("Get a conversation", response=ConversationOut)
async def get(request: web.Request) -> web.StreamResponse:
    conversation_id = path_id(request, "conversation_id")
    actor = await request.app[CONVERSATIONS].get(request[PRINCIPAL], conversation_id)
    return json_response(conversation_out(actor.meta))


@routes.get(BASE + "/{conversation_id}/tree")
@describe("Every message, oldest first", response=(TreeOut, CompactTreeOut), paged=True)
async def tree(request: web.Request) -> web.StreamResponse:
    conversation_id = path_id(request, "conversation_id")
    page = page_of(request)

    async def build() -> Listing:
        actor = await request.app[CONVERSATIONS].get(request[PRINCIPAL], conversation_id)
        if page.limit is None:
            nodes, more = list(actor.messages()), False
        else:
            nodes = actor.messages_after(page.after, page.limit + 1)
            nodes, more = nodes[: page.limit], len(nodes) > page.limit
        return tree_listing(actor.id, nodes, len(actor), more, actor.lineage, page)

    return await answer_cached(request, conversation_id, page, build)


@routes.put(BASE + "/{conversation_id}")
@describe("Update a conversation", body=UpdateConversation, response=ConversationOut)
async def update(request: web.Request) -> web.StreamResponse:
    conversation_id = path_id(request, "conversation_id")
    body = await read_body(request, UpdateConversation)
    principal = request[PRINCIPAL]

    async def apply(actor: ConversationActor) -> web.StreamResponse:
        meta = await actor.update(
            principal, title=body.title, description=body.description, is_public=body.is_public
        )
        return json_response(conversation_out(meta))

    return await request.app[CONVERSATIONS].run(principal, conversation_id, apply)


@routes.delete(BASE + "/{conversation_id}")
@describe("Delete a conversation", response=Deleted)
async def delete(request: web.Request) -> web.StreamResponse:
    conversation_id = path_id(request, "conversation_id")
    principal = request[PRINCIPAL]
    await request.app[CONVERSATIONS].run(
        principal, conversation_id, lambda actor: actor.delete(principal)
    )
    return json_response(Deleted("Conversation deleted successfully"))
