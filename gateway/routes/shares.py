"""Shares (create, list, revoke) and a user's conversations."""

from __future__ import annotations

from typing import Annotated

import msgspec
from aiohttp import web

from engine.actor import ConversationActor
from engine.errors import InvalidInput
from gateway.codec import json_response, path_id, read_body
from gateway.keys import CONVERSATIONS, PRINCIPAL
from gateway.openapi import Query, describe
from gateway.schemas import CreateShare, Deleted, ShareOut, share_out
from gateway.shard_listings import user_ids

routes = web.RouteTableDef()
BASE = "/api/v1/conversations/{conversation_id}"
DEFAULT_LIMIT, MAX_LIMIT = 50, 1000
LIMIT = Query("limit", Annotated[int, msgspec.Meta(ge=1, le=MAX_LIMIT)], f"default {DEFAULT_LIMIT}")


@routes.post(BASE + "/share")
@describe("Share a conversation", body=CreateShare, response=ShareOut)
async def create(request: web.Request) -> web.StreamResponse:
    conversation_id = path_id(request, "conversation_id")
    body = await read_body(request, CreateShare)
    principal = request[PRINCIPAL]
    shared_by = principal.author(body.shared_by, "shared_by")

    async def apply(actor: ConversationActor) -> web.StreamResponse:
        share = await actor.share(
            principal, shared_with=body.shared_with, permission=body.permission,
            shared_by=shared_by,
        )  # fmt: skip
        return json_response(share_out(actor.id, share))

    return await request.app[CONVERSATIONS].run(principal, conversation_id, apply)


@routes.get(BASE + "/shares")
@describe("List a conversation's shares", response=list[ShareOut])
async def list_(request: web.Request) -> web.StreamResponse:
    conversation_id = path_id(request, "conversation_id")
    principal = request[PRINCIPAL]
    actor = await request.app[CONVERSATIONS].get(principal, conversation_id)
    return json_response([share_out(actor.id, s) for s in actor.shares_seen_by(principal)])


@routes.delete(BASE + "/shares/{user_id}")
@describe("Revoke a share", response=Deleted)
async def revoke(request: web.Request) -> web.StreamResponse:
    conversation_id = path_id(request, "conversation_id")
    user_id = request.match_info["user_id"]
    principal = request[PRINCIPAL]
    await request.app[CONVERSATIONS].run(
        principal, conversation_id, lambda actor: actor.revoke(principal, user_id)
    )
    return json_response(Deleted("Share revoked successfully"))


@routes.get("/api/v1/users/{user_id}/conversations")
@describe("A user's conversation ids (seed 000)", response=list[str], query=[LIMIT])
async def user_conversations(request: web.Request) -> web.StreamResponse:
    raw = request.query.get("limit", str(DEFAULT_LIMIT))
    # the length first: int() refuses strings over 4,300 digits with a ValueError
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 9) or not 1 <= int(raw) <= MAX_LIMIT:
        raise InvalidInput(f"limit must be an integer from 1 to {MAX_LIMIT}")
    ids = await user_ids(request, request.match_info["user_id"], int(raw))
    return json_response(ids)
