"""Shares (create, list, revoke) and a user's conversations."""

from __future__ import annotations

from aiohttp import web

from engine.actor import ConversationActor
from engine.errors import InvalidInput
from gateway.codec import json_response, path_id, read_body
from gateway.keys import CONVERSATIONS, PRINCIPAL
from gateway.schemas import CreateShare, Deleted, share_out

routes = web.RouteTableDef()
BASE = "/api/v1/conversations/{conversation_id}"
DEFAULT_LIMIT, MAX_LIMIT = 50, 1000


@routes.post(BASE + "/share")
async def create(request: web.Request) -> web.Response:
    conversation_id = path_id(request, "conversation_id")
    body = await read_body(request, CreateShare)
    principal = request[PRINCIPAL]
    shared_by = principal.author(body.shared_by, "shared_by")

    async def apply(actor: ConversationActor) -> web.Response:
        share = await actor.share(
            principal, shared_with=body.shared_with, permission=body.permission,
            shared_by=shared_by,
        )  # fmt: skip
        return json_response(share_out(actor.id, share))

    return await request.app[CONVERSATIONS].run(principal, conversation_id, apply)


@routes.get(BASE + "/shares")
async def list_(request: web.Request) -> web.Response:
    conversation_id = path_id(request, "conversation_id")
    actor = await request.app[CONVERSATIONS].get(request[PRINCIPAL], conversation_id)
    return json_response([share_out(actor.id, s) for s in actor.shares()])


@routes.delete(BASE + "/shares/{user_id}")
async def revoke(request: web.Request) -> web.Response:
    conversation_id = path_id(request, "conversation_id")
    user_id = request.match_info["user_id"]
    principal = request[PRINCIPAL]
    await request.app[CONVERSATIONS].run(
        principal, conversation_id, lambda actor: actor.revoke(principal, user_id)
    )
    return json_response(Deleted("Share revoked successfully"))


@routes.get("/api/v1/users/{user_id}/conversations")
async def user_conversations(request: web.Request) -> web.Response:
    raw = request.query.get("limit", str(DEFAULT_LIMIT))
    # the length first: int() refuses strings over 4,300 digits with a ValueError
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 9) or not 1 <= int(raw) <= MAX_LIMIT:
        raise InvalidInput(f"limit must be an integer from 1 to {MAX_LIMIT}")
    ids = await request.app[CONVERSATIONS].user_conversations(
        request[PRINCIPAL], request.match_info["user_id"], int(raw)
    )
    return json_response(ids)
