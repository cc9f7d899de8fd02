"""HTTP routes, one module per resource of seed 000's API."""

from __future__ import annotations

from aiohttp import web

from gateway.routes import branches, conversations, forks, health, messages, shares


def add_routes(app: web.Application) -> None:
    # aiohttp tries a prefix's patterns in registration order: the hottest go first.
    for module in (messages, conversations, branches, forks, shares, health):
        app.router.add_routes(module.routes)
