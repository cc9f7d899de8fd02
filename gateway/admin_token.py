"""The admin bearer token: `--admin-token` / CANOPY_ADMIN_TOKEN, or one made at start.

/admin/... and /metrics check it themselves (gateway/auth.py lets them through the
user authentication: their bearer is not a user's), compared in constant time. In a
cluster another node's admin calls (gateway/admin_peers.py) carry the cluster's token
instead, in `X-Canopy-Cluster-Token` (the header of gateway/forwarding.py's internal
calls): the nodes need not share an admin token.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from dataclasses import dataclass

from aiohttp import web

from engine.errors import Unauthorized

PEER_TOKEN = "X-Canopy-Cluster-Token"
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

    def check(self, authorization: str | None, peer: str | None = None,
              cluster_token: str = "") -> None:  # fmt: skip
        """Pass the admin bearer, or (a peer's call) the cluster's token if it has one."""
        if (
            peer is not None
            and cluster_token
            and hmac.compare_digest(peer.encode(), cluster_token.encode())
        ):
            return
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            presented.strip().encode(), self.token.encode()
        ):
            raise Unauthorized(
                "the admin API needs Authorization: Bearer <admin token>", "invalid_admin_token"
            )


ADMIN = web.AppKey("admin_access", AdminAccess)


def require_admin(request: web.Request) -> None:
    """401 unless the request carries the admin token (or a peer's, the cluster's)."""
    from gateway.keys import CLUSTER  # keys -> ... -> forwarding -> errors -> here

    member = request.app.get(CLUSTER)
    headers = request.headers
    cluster_token = member.token if member is not None else ""
    request.app[ADMIN].check(headers.get("Authorization"), headers.get(PEER_TOKEN), cluster_token)
