"""HTTP routes, one module per resource of seed 000's API.

The conversation API resolves through one segment trie (gateway.router); the few
routes outside it have literal prefixes of their own, which aiohttp's index finds
directly.
"""

from __future__ import annotations

from aiohttp import web

from gateway.router import SegmentRouter
from gateway.routes import (
    auth,
    branches,
    conversations,
    docs,
    forks,
    health,
    messages,
    sessions,
    shares,
)

CONVERSATIONS = "/api/v1/conversations"


def add_routes(app: web.Application) -> None:
    api = SegmentRouter(CONVERSATIONS)
    for module in (messages, conversations, sessions, branches, forks, shares, health, docs, auth):
        for route in module.routes:
            assert isinstance(route, web.RouteDef), route
            add = api.add if api.covers(route.path) else app.router.add_route
            add(route.method, route.path, route.handler)
            if route.method == "GET" and route.kwargs.get("allow_head", True):
                add("HEAD", route.path, route.handler)  # as aiohttp's add_get does
    app.router.register_resource(api)
    docs.add_assets(app)
