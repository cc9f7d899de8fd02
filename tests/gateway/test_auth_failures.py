"""Refused credentials spend their address's budget: past it 429 + Retry-After, and the
address's next credentials are not even verified until a token is back."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

import jwt
import pytest
from aiohttp import web
from gateway_helpers import API, assert_error

from engine.errors import RateLimited
from gateway.auth import api_key_digest
from gateway.auth_failures import AuthFailures
from gateway.jwt_auth import JwtAuth
from gateway.ratelimit import MemoryBuckets, RateLimit

if TYPE_CHECKING:
    from conftest import Node, NodeFactory

embedded = pytest.mark.parametrize("backend", ["embedded"], indirect=True)  # storage-blind
SECRET = "a-secret-of-thirty-two-bytes-at-least!"
KEY = "the-backends-key"
NODE = {
    "rate_limit": "1/h,burst=3",
    "auth": "jwt,api-key",
    "jwt_secret": SECRET,
    "api_keys": f"app:{api_key_digest(KEY)}",
}
BAD_TOKEN = jwt.encode({"sub": "eve", "exp": time.time() + 600}, "not-the-secret" * 3)


async def statuses(node: Node, n: int, **headers: str) -> list[int]:
    found = []
    for _ in range(n):
        status, body = await node.request(
            "GET", f"{API}/users/alice/conversations", headers=headers
        )
        if status == 429:
            assert_error(status, body, 429, "rate_limited")
        found.append(status)
    return found


@embedded
async def test_bad_tokens_get_429_once_the_address_spent_its_budget(
    start_node: NodeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    verified = []
    verify = JwtAuth.verify

    def counted(self: JwtAuth, token: str) -> Any:
        verified.append(token)
        return verify(self, token)

    monkeypatch.setattr(JwtAuth, "verify", counted)
    node = await start_node(**NODE)
    bad = {"Authorization": f"Bearer {BAD_TOKEN}"}
    assert await statuses(node, 5, **bad) == [401, 401, 401, 429, 429]
    assert len(verified) == 4  # the fifth was refused before its signature was checked
    status, _ = await node.request("GET", "/health")
    assert status == 200  # a liveness probe is never refused unheard
    async with node.session.get(f"{node.base}{API}/users/alice/conversations") as response:
        assert response.status == 429  # no credential at all: still this address
        assert 1 <= int(response.headers["Retry-After"]) <= 3600


@embedded
async def test_valid_callers_spend_only_their_own_budget(start_node: NodeFactory) -> None:
    node = await start_node(**NODE)
    valid = {"X-API-Key": KEY, "X-Canopy-User": "alice"}
    assert await statuses(node, 2, **{"X-API-Key": "a-guess"}) == [401, 401]
    assert await statuses(node, 3, **valid) == [200, 200, 200]  # alice's bucket is full
    assert await statuses(node, 1, **{"X-API-Key": "a-guess"}) == [401]  # nor spent the address's
    assert await statuses(node, 1, **{"X-API-Key": "another"}) == [429]
    # The address is refused unheard now, whoever it is: no answer tells a right guess.
    assert await statuses(node, 1, **{"X-API-Key": KEY, "X-Canopy-User": "bob"}) == [429]


async def test_an_address_is_heard_again_once_a_token_is_back() -> None:
    now = [100.0]

    def clock() -> float:
        return now[0]

    failures = AuthFailures(MemoryBuckets(RateLimit(1.0, 1), clock=clock), clock=clock)
    eve = cast(web.Request, SimpleNamespace(remote="10.0.0.6", path="/api/v1/x"))
    bob = cast(web.Request, SimpleNamespace(remote="10.0.0.7", path="/api/v1/x"))
    await failures.refused(eve)  # the burst's one token
    with pytest.raises(RateLimited) as refused:
        await failures.refused(eve)
    assert refused.value.retry_after == pytest.approx(1.0)
    with pytest.raises(RateLimited):
        failures.check(eve)
    failures.check(bob)  # another address is heard
    now[0] += 1.0
    failures.check(eve)
    await failures.refused(eve)  # the token that came back
