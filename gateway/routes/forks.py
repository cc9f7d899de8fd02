"""Forks: a whole conversation, a branch (up to its leaf), or up to one message."""

from __future__ import annotations

from aiohttp import web

from engine.access import FORK
from engine.actor import NewConversation
from gateway.codec import json_response, path_id, read_body
from gateway.keys import CONVERSATIONS, PRINCIPAL
from gateway.openapi import describe
from gateway.schemas import ConversationOut, Fork, conversation_out

routes = web.RouteTableDef()
BASE = "/api/v1/conversations/{conversation_id}"


async def _fork(
    request: web.Request, *, branch: bool = False, message: bool = False
) -> web.Response:
    registry = request.app[CONVERSATIONS]
    principal = request[PRINCIPAL]
    source_id = path_id(request, "conversation_id")
    # an unknown (or invisible) source answers 404 before its body is read
    (await registry.get(principal, source_id)).require(principal, FORK, "forking")
    body = await read_body(request, Fork)
    author = principal.author(body.created_by)
    branch_id = path_id(request, "branch_id") if branch else None
    message_id = path_id(request, "message_id") if message else None
    # The source again, now that the body is in: it may have been deleted meanwhile.
    point, copied = await registry.run(
        principal,
        source_id,
        lambda source: source.fork_copy(principal, branch_id=branch_id, message_id=message_id),
    )
    forked = await registry.create(
        principal,
        NewConversation(
            title=body.title,
            created_by=author,
            description=f"Forked from conversation {source_id}",
            fork_from=(source_id, point),
            copied=copied,
        ),
    )
    return json_response(conversation_out(forked.meta))


@routes.post(BASE + "/fork")
@describe("Fork the whole conversation", body=Fork, response=ConversationOut)
async def fork_conversation(request: web.Request) -> web.Response:
    return await _fork(request)


@routes.post(BASE + "/branches/{branch_id}/fork")
@describe("Fork a branch, up to its leaf", body=Fork, response=ConversationOut)
async def fork_branch(request: web.Request) -> web.Response:
    return await _fork(request, branch=True)


@routes.post(BASE + "/messages/{message_id}/fork")
@describe("Fork up to a message", body=Fork, response=ConversationOut)
async def fork_message(request: web.Request) -> web.Response:
    return await _fork(request, message=True)
