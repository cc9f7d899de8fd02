"""Forks: a whole conversation, a branch (up to its leaf), or up to one message."""

from __future__ import annotations

from aiohttp import web

from engine.actor import NewConversation
from gateway.codec import json_response, path_id, read_body
from gateway.keys import CONVERSATIONS
from gateway.schemas import Fork, conversation_out

routes = web.RouteTableDef()
BASE = "/api/v1/conversations/{conversation_id}"


async def _fork(
    request: web.Request, *, branch: bool = False, message: bool = False
) -> web.Response:
    registry = request.app[CONVERSATIONS]
    source = await registry.get(path_id(request, "conversation_id"))
    body = await read_body(request, Fork)
    point: str | None = None
    if branch:
        point = source.branch(path_id(request, "branch_id")).leaf_message_id
    elif message:
        point = source.message(path_id(request, "message_id")).message_id
    copied = source.fork_source(point)
    forked = await registry.create(
        NewConversation(
            title=body.title,
            created_by=body.created_by,
            description=f"Forked from conversation {source.id}",
            fork_from=(source.id, point),
            copied=copied,
        )
    )
    return json_response(conversation_out(forked.meta))


@routes.post(BASE + "/fork")
async def fork_conversation(request: web.Request) -> web.Response:
    return await _fork(request)


@routes.post(BASE + "/branches/{branch_id}/fork")
async def fork_branch(request: web.Request) -> web.Response:
    return await _fork(request, branch=True)


@routes.post(BASE + "/messages/{message_id}/fork")
async def fork_message(request: web.Request) -> web.Response:
    return await _fork(request, message=True)
