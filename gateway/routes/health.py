from __future__ import annotations

from datetime import UTC, datetime

from aiohttp import web

from gateway.codec import json_response
from gateway.openapi import describe
from gateway.schemas import Health

routes = web.RouteTableDef()


@routes.get("/health")
@describe("Liveness", response=Health)
async def health(request: web.Request) -> web.StreamResponse:
    return json_response(Health("ok", datetime.now(UTC)))
