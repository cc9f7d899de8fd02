"""Session features (seed 002): PATCH a conversation, and the sidebar listing."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, TypeVar

import msgspec
from aiohttp import web
from multidict import MultiMapping

from engine.actor import ConversationActor, Patch, now
from engine.errors import InvalidInput
from engine.sidebar import Filters
from gateway.codec import json_response, path_id, read_body
from gateway.keys import CONVERSATIONS, PRINCIPAL
from gateway.openapi import Query, describe
from gateway.session_schemas import (
    PatchConversation,
    SessionOut,
    SidebarOut,
    session_out,
    sidebar_item,
)
from gateway.shard_listings import sidebar_page

T = TypeVar("T")
routes = web.RouteTableDef()
BASE = "/api/v1/conversations"
DEFAULT_LIMIT, MAX_LIMIT = 30, 100
_BOOLEANS = {"true": True, "1": True, "false": False, "0": False}
SIDEBAR_QUERY = [
    Query("limit", Annotated[int, msgspec.Meta(ge=1, le=MAX_LIMIT)], f"default {DEFAULT_LIMIT}"),
    Query("cursor", str, "next_cursor of the page before (opaque; 400 cursor_expired if too old)"),
    Query("favorite", bool, "only favorites"),
    Query("archived", bool, "archived ones instead of the others (default false)"),
    Query("tag", str, "only those with this tag"),
    Query("q", str, "title contains this, case-insensitively"),
]


@routes.patch(BASE + "/{conversation_id}")
@describe("Set session fields (owner only)", body=PatchConversation, response=SessionOut)
async def patch(request: web.Request) -> web.StreamResponse:
    conversation_id = path_id(request, "conversation_id")
    body = await read_body(request, PatchConversation)
    principal = request[PRINCIPAL]
    change = patch_of(body)

    async def apply(actor: ConversationActor) -> web.StreamResponse:
        return json_response(session_out(await actor.patch(principal, change)))

    return await request.app[CONVERSATIONS].run(principal, conversation_id, apply)


def patch_of(body: PatchConversation) -> Patch:
    ttl_seconds = _given(body.ttl_seconds)
    expires_at = _given(body.expires_at)
    if ttl_seconds is not None:
        expires_at = now() + timedelta(seconds=ttl_seconds)
    return Patch(
        title=_given(body.title),
        description=_given(body.description),
        is_favorite=_given(body.is_favorite),
        archived=_given(body.archived),
        tags=_given(body.tags),
        expires_at=expires_at,
        clears_expiry=body.expires_at is None or body.ttl_seconds is None,
    )


def _given(value: T | msgspec.UnsetType) -> T | None:
    return None if isinstance(value, msgspec.UnsetType) else value


def expiry(expires_at: datetime | None, ttl_seconds: int | None, default: int) -> datetime | None:
    """When a new conversation expires: at `expires_at`, `ttl_seconds` from now, or the
    node's default TTL from now (0: never)."""
    ttl_seconds = ttl_seconds or (None if expires_at else default or None)
    if ttl_seconds is not None:
        return now() + timedelta(seconds=ttl_seconds)
    return expires_at


@routes.get(BASE)
@describe("The caller's sidebar: own and shared conversations, newest activity first",
          response=SidebarOut, query=SIDEBAR_QUERY, errors=[400])  # fmt: skip
async def sidebar(request: web.Request) -> web.StreamResponse:
    query = request.query
    filters = Filters(
        favorite=_boolean(query, "favorite") or False,
        archived=_boolean(query, "archived") or False,
        tag=query.get("tag"),
        q=query.get("q") or None,
    )
    page = await sidebar_page(request, filters, _limit(query.get("limit")), query.get("cursor"))
    items = [sidebar_item(item.meta, item.permission) for item in page.items]
    return json_response(SidebarOut(items, page.next_cursor))


def _limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 4) or not 1 <= int(raw) <= MAX_LIMIT:
        raise InvalidInput(f"limit must be an integer from 1 to {MAX_LIMIT}")
    return int(raw)


def _boolean(query: MultiMapping[str], name: str) -> bool | None:
    raw = query.get(name)
    if raw is None:
        return None
    value = _BOOLEANS.get(raw.lower())
    if value is None:
        raise InvalidInput(f"{name} must be true or false; got {raw!r}")
    return value
