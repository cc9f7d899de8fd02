"""Authentication: one `Principal` per request, made here and nowhere else.

The middleware asks each configured authenticator in turn (`--auth jwt,api-key`). One
that finds its kind of credential either verifies it (the caller) or refuses it (401);
one that finds none passes to the next. With `--auth none` a request without a
credential is anonymous: nothing is checked and `X-Canopy-User` names the user, as in
seed 000. Routes read `request[PRINCIPAL]` and hand it to the engine.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from engine.access import ANONYMOUS, Principal
from engine.errors import Unauthorized
from gateway.auth_failures import AuthFailures
from gateway.config import Settings
from gateway.guards import USER_HEADER
from gateway.keys import PRINCIPAL

# Reachable without a credential: health, the API's description, and getting one.
PUBLIC_PATHS = frozenset(
    {"/health", "/openapi.json", "/docs", "/api/auth/register", "/api/auth/login"}
)
PUBLIC_PREFIXES = ("/docs/",)  # the docs page's scripts and styles


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


# Checked against the admin token by their handlers (gateway/admin_token.py): their
# bearer is no user's, so the user authentication lets them by.
ADMIN_PATHS = frozenset({"/admin", "/metrics"})
ADMIN_PREFIX = "/admin/"


def is_admin(path: str) -> bool:
    return path in ADMIN_PATHS or path.startswith(ADMIN_PREFIX)


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


class ApiKeys:
    """`--auth api-key`: trusted backends send `X-API-Key: <key>`.

    Only SHA-256 digests of the keys are kept (a leaked keys file grants nothing); the
    presented key's digest is compared with every stored one in constant time. The
    caller is a service: unrestricted, or acting for the user `X-Canopy-User` names.
    """

    HEADER = "X-API-Key"

    def __init__(self, digests: dict[str, str]) -> None:
        self._digests = [(name, bytes.fromhex(digest)) for name, digest in digests.items()]

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiKeys:
        return cls(load_api_keys(settings.api_keys_file, settings.api_keys))

    def authenticate(self, request: web.Request) -> Principal | None:
        key = request.headers.get(self.HEADER)
        if key is None:
            return None
        digest = hashlib.sha256(key.encode()).digest()
        found = False
        for _, stored in self._digests:  # no early exit: the time does not tell which
            found |= hmac.compare_digest(digest, stored)
        if not found:
            raise Unauthorized("the API key is not valid", "invalid_api_key")
        user = request.headers.get(USER_HEADER)
        return Principal(user or None, "service")


def api_key_digest(key: str) -> str:
    """What a keys file holds for `key`: its SHA-256, hex."""
    return hashlib.sha256(key.encode()).hexdigest()


def load_api_keys(path: Path | None, inline: str) -> dict[str, str]:
    """Key digests by name, from a file of `name sha256-hex` lines (# comments) and from
    `name:sha256-hex,...` (the environment); ValueError on a malformed line."""
    entries: list[tuple[str, str]] = []
    if path is not None:
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            line = line.split("#", 1)[0].strip()
            if line:
                name, _, digest = line.partition(" ")
                entries.append((f"{path}:{number} {name}", digest.strip()))
    for item in filter(None, (part.strip() for part in inline.split(","))):
        name, _, digest = item.partition(":")
        entries.append((name, digest))
    digests: dict[str, str] = {}
    for name, digest in entries:
        if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest.lower()):
            raise ValueError(f"API key {name}: expected a SHA-256 digest in hex (64 characters)")
        digests[name.rsplit(" ", 1)[-1]] = digest.lower()
    return digests


def authenticators(settings: Settings) -> list[Authenticator]:
    """The configured authenticators, in the order they are asked."""
    chain: list[Authenticator] = []
    modes = settings.auth_modes()
    if "jwt" in modes:
        from gateway.jwt_auth import JwtAuth  # PyJWT and cryptography load only when used

        chain.append(JwtAuth.from_settings(settings))
    if "api-key" in modes:
        chain.append(ApiKeys.from_settings(settings))
    if "none" in modes:  # last: it takes every request that gets to it
        chain.append(Anonymous())
    return chain


def auth_middleware(
    authenticators: Sequence[Authenticator], failures: AuthFailures | None = None
) -> Middleware:
    """`failures`: with `--rate-limit`, refused requests spend their address's budget."""
    chain = tuple(authenticators)

    def caller(request: web.Request) -> Principal | None:
        try:
            for authenticator in chain:
                principal = authenticator.authenticate(request)
                if principal is not None:
                    return principal
        except Unauthorized:
            # The admin token is no user's credential: its handlers check it. Asked only
            # once a credential was refused, so other requests pay nothing for it.
            if is_admin(request.path):
                return None
            raise
        path = request.path
        if is_public(path) or is_admin(path):  # their handlers never ask for a caller
            return None
        raise Unauthorized("a credential is required (Authorization: Bearer <token>)")

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if failures is None:
            principal = caller(request)
        else:
            failures.check(request)  # an address out of budget: nothing more is verified
            try:
                principal = caller(request)
            except Unauthorized:
                await failures.refused(request)  # raises 429 once the budget is spent
                raise
        if principal is not None:
            request[PRINCIPAL] = principal
        return await handler(request)

    return authenticate
