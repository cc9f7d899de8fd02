"""Authentication: one `Principal` per request, made here and nowhere else.

The middleware asks each configured authenticator in turn (`--auth jwt,api-key`). One
that finds its kind of credential either verifies it (the caller) or refuses it (401);
one that finds none passes to the next. With `--auth none` a request without a
credential is anonymous: nothing is checked and `X-Canopy-User` names the user, as in
seed 000. Routes read `request[PRINCIPAL]` and hand it to the engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from engine.access import ANONYMOUS, Principal
from engine.errors import Unauthorized
from gateway.config import Settings
from gateway.keys import PRINCIPAL

USER_HEADER = "X-Canopy-User"
# Reachable without a credential: health, the API's description, and getting one.
PUBLIC_PATHS = frozenset(
    {"/health", "/openapi.json", "/docs", "/api/auth/register", "/api/auth/login"}
)


class Authenticator(Protocol):
    def authenticate(self, request: web.Request) -> Principal | None:
        """The caller, if the request carries this kind of credential; raises
        Unauthorized if it carries one that does not verify; None if it carries none."""
        ...


class Anonymous:
    """`--auth none`: the caller is whoever `X-Canopy-User` says, unchecked."""

    def authenticate(self, request: web.Request) -> Principal:
        user = request.headers.get(USER_HEADER)
        return Principal(user, "anonymous") if user else ANONYMOUS


def authenticators(settings: Settings) -> list[Authenticator]:
    """The configured authenticators, in the order they are asked."""
    chain: list[Authenticator] = []
    if "none" in settings.auth_modes():  # last: it takes every request that gets to it
        chain.append(Anonymous())
    return chain


def auth_middleware(authenticators: Sequence[Authenticator]) -> Middleware:
    chain = tuple(authenticators)

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        for authenticator in chain:
            principal = authenticator.authenticate(request)
            if principal is not None:
                request[PRINCIPAL] = principal
                return await handler(request)
        if request.path in PUBLIC_PATHS:  # their handlers never ask for a caller
            return await handler(request)
        raise Unauthorized("a credential is required (Authorization: Bearer <token>)")

    return authenticate
