"""HTTP routes, one module per resource of seed 000's API."""

from __future__ import annotations

from aiohttp import web

from gateway.routes import branches, conversations, forks, health, messages, shares


def add_routes(app: web.Application) -> None:
    for module in (health, conversations, messages, branches, forks, shares):
        app.router.add_routes(module.routes)
