"""The admin bearer token: `--admin-token` / CANOPY_ADMIN_TOKEN, or one made at start.

/admin/... and /metrics check it themselves (gateway/auth.py lets them through the
user authentication: their bearer is not a user's), compared in constant time.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from dataclasses import dataclass

from aiohttp import web

from engine.errors import Unauthorized

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdminAccess:
    token: str
    metrics_public: bool = False  # /metrics without the token (a private scrape port)

    @classmethod
    def make(cls, token: str, metrics_public: bool) -> AdminAccess:
        if not token:
            token = secrets.token_urlsafe(32)
            log.info("admin token (generated at start; set --admin-token to keep one): %s",
                     token)  # fmt: skip
        return cls(token, metrics_public)

    def check(self, authorization: str | None) -> None:
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            presented.strip().encode(), self.token.encode()
        ):
            raise Unauthorized(
                "the admin API needs Authorization: Bearer <admin token>", "invalid_admin_token"
            )


ADMIN = web.AppKey("admin_access", AdminAccess)


def require_admin(request: web.Request) -> None:
    """401 unless the request carries the admin token."""
    request.app[ADMIN].check(request.headers.get("Authorization"))
