"""CORS: which other origins' pages may call this node (`--cors-origins`).

A browser asks first (a preflight: `OPTIONS` with `Origin` and
`Access-Control-Request-Method`, never with credentials), so the preflight is answered
before authentication: 204 with what is allowed, or 403 (the JSON error shape, no CORS
header) for an origin that is not listed. Every actual response to a listed origin,
errors included (a page must be able to read a 401 or a 429), carries
`Access-Control-Allow-Origin` and exposes the headers the API sets (`Retry-After`, the
paging headers). Listed origins are echoed with `Vary: Origin`; `*` answers any origin
with `*`. No credentials mode: callers authenticate with headers, not cookies.

Without `--cors-origins` nothing here runs: `OPTIONS` answers 405 as before.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from gateway.errors import error_response

METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE"
HEADERS = ("Authorization", "Content-Type", "X-API-Key", "X-Canopy-User")
EXPOSED = "Retry-After, X-Next-Cursor, Link"
MAX_AGE = "600"  # seconds a browser may reuse a preflight: an origin removed is honoured soon
_ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(:\d{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:\d{1,5})?")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP header name (RFC 9110 token)


def parse_origins(raw: str) -> frozenset[str]:
    """`https://a.example,https://b.example:8443` or `*`; ValueError for a malformed
    origin (a path, a trailing slash: browsers send neither, so it would never match)."""
    origins = frozenset(o.strip() for o in raw.split(",") if o.strip())
    for origin in origins - {"*"}:
        if not _ORIGIN.fullmatch(origin):
            raise ValueError(
                f"cors_origins: {origin!r} is not an origin (scheme://host[:port], no path)"
            )
    return origins


@dataclass(frozen=True)
class Cors:
    origins: frozenset[str]  # exact origins, or {"*"}

    def allow(self, origin: str) -> str | None:
        """The `Access-Control-Allow-Origin` value for `origin`, None if not allowed."""
        if "*" in self.origins:
            return "*"
        return origin if origin in self.origins else None

    def preflight(self, request: web.Request, origin: str) -> web.StreamResponse:
        """204 with what a listed origin may send; 403 for another."""
        if self.allow(origin) is None:
            return error_response(
                403, "cors_origin_not_allowed", f"origin {origin!r} may not call this API"
            )
        response = web.Response(status=204)
        response.headers["Access-Control-Allow-Methods"] = METHODS
        response.headers["Access-Control-Allow-Headers"] = allow_headers(request)
        response.headers["Access-Control-Max-Age"] = MAX_AGE
        return response  # the origin is added with every other response's (on_prepare)

    async def on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """Every response, errors and preflights included (an `on_response_prepare`
        signal, so that the error middleware's answers get it too): the origin allowed,
        if the request came from a listed one."""
        origin = request.headers.get("Origin")
        allowed = None if origin is None else self.allow(origin)
        if allowed is not None:
            response.headers["Access-Control-Allow-Origin"] = allowed
            response.headers["Access-Control-Expose-Headers"] = EXPOSED
        self._vary(response)

    def _vary(self, response: web.StreamResponse) -> None:
        if "*" not in self.origins:  # the answer depends on Origin: caches must know
            vary = response.headers.get("Vary")
            response.headers["Vary"] = f"{vary}, Origin" if vary else "Origin"


def allow_headers(request: web.Request) -> str:
    """The headers the API reads, plus the well-formed ones the preflight asks for
    (headers the API does not read are harmless to allow)."""
    asked = request.headers.get("Access-Control-Request-Headers", "")
    names = list(HEADERS)
    known = {name.lower() for name in names}
    for name in (part.strip() for part in asked.split(",")):
        if _TOKEN.fullmatch(name) and name.lower() not in known:
            known.add(name.lower())
            names.append(name)
    return ", ".join(names)


def is_preflight(request: web.Request) -> bool:
    return request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers


def cors_middleware(cors: Cors) -> Middleware:
    """Answers preflights; placed before authentication (a preflight has no credential)."""

    @web.middleware
    async def preflight(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is not None and is_preflight(request):
            return cors.preflight(request, origin)
        return await handler(request)

    return preflight
