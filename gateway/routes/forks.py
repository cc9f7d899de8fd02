"""Forks: a whole conversation, a branch (up to its leaf), or up to one message."""

from __future__ import annotations

from datetime import datetime

from aiohttp import web

from engine.access import FORK
from engine.actor import ConversationActor, NewConversation
from gateway.codec import json_response, path_id, read_body
from gateway.keys import CONVERSATIONS, DEFAULT_TTL, PRINCIPAL
from gateway.openapi import describe
from gateway.routes.sessions import expiry
from gateway.schemas import ConversationOut, Fork, conversation_out
from persistence.records import Message

routes = web.RouteTableDef()
BASE = "/api/v1/conversations/{conversation_id}"


async def _fork(
    request: web.Request, *, branch: bool = False, message: bool = False
) -> web.StreamResponse:
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
    async def copy(source: ConversationActor) -> tuple[str | None, list[Message], datetime | None]:
        point, copied = await source.fork_copy(
            principal, branch_id=branch_id, message_id=message_id
        )
        return point, copied, source.meta.expires_at

    point, copied, source_expiry = await registry.run(principal, source_id, copy)
    # The copies are the source's messages: they expire no later than it does.
    expiries = [expiry(None, None, request.app[DEFAULT_TTL]), source_expiry]
    forked = await registry.create(
        principal,
        NewConversation(
            title=body.title,
            created_by=author,
            description=f"Forked from conversation {source_id}",
            fork_from=(source_id, point),
            copied=copied,
            expires_at=min((at for at in expiries if at is not None), default=None),
        ),
    )
    return json_response(conversation_out(forked.meta))


@routes.post(BASE + "/fork")
@describe("Fork the whole conversation", body=Fork, response=ConversationOut)
async def fork_conversation(request: web.Request) -> web.StreamResponse:
    return await _fork(request)


@routes.post(BASE + "/branches/{branch_id}/fork")
@describe("Fork a branch, up to its leaf", body=Fork, response=ConversationOut)
async def fork_branch(request: web.Request) -> web.StreamResponse:
    return await _fork(request, branch=True)


@routes.post(BASE + "/messages/{message_id}/fork")
@describe("Fork up to a message", body=Fork, response=ConversationOut)
async def fork_message(request: web.Request) -> web.StreamResponse:
    return await _fork(request, message=True)
