"""Authentication over real HTTP: `--auth jwt` (HS256, RS256/ES256 keys, a JWKS file) and
`--auth api-key`; every refusal is a 401 in the JSON error shape with a Bearer challenge."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt
import pytest
from aiohttp.test_utils import make_mocked_request
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.auth import api_key_digest
from gateway.jwt_auth import JwtAuth
from gateway.token_cache import TokenCache

if TYPE_CHECKING:
    from conftest import Node, NodeFactory

SECRET = "test-secret-of-at-least-thirty-two-bytes!"
API = "/api/v1/conversations"
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "alice", "exp": now + 300, **overrides}


def token(key: Any = SECRET, algorithm: str = "HS256", **overrides: Any) -> str:
    headers = {"kid": overrides.pop("kid")} if "kid" in overrides else None
    body = {k: v for k, v in claims(**overrides).items() if v is not None}
    return jwt.encode(body, key, algorithm=algorithm, headers=headers)


def _segment(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def unsigned_token() -> str:
    """`alg: none`, which PyJWT would accept only if asked to."""
    return f"{_segment({'alg': 'none', 'typ': 'JWT'})}.{_segment(claims())}."


def hs256_with(key_bytes: bytes) -> str:
    """An HS256 token whose "secret" is a public key's PEM: the algorithm-confusion attack."""
    signing_input = f"{_segment({'alg': 'HS256', 'typ': 'JWT'})}.{_segment(claims())}"
    mac = hmac.new(key_bytes, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


async def listing(node: Node, headers: dict[str, str], user: str = "alice") -> tuple[int, Any]:
    async with node.session.get(
        f"{node.base}/api/v1/users/{user}/conversations", headers=headers
    ) as response:
        body = await response.json()
        if response.status == 401:
            assert response.headers["WWW-Authenticate"].startswith("Bearer"), response.headers
        return response.status, body


async def refused(node: Node, headers: dict[str, str], code: str) -> None:
    status, body = await listing(node, headers)
    assert status == 401, body
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body


def private_key(algorithm: str) -> PrivateKey:
    if algorithm.startswith("RS"):
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# Verifying a credential does not touch storage: these run on the embedded backend only
# (the tests that act on conversations, below, run on every backend).
embedded_only = pytest.mark.parametrize("backend", [{}], ids=["embedded"])


@embedded_only
async def test_hs256_accepts_a_valid_token_and_refuses_every_bad_one(
    start_node: NodeFactory,
) -> None:
    node = await start_node(auth="jwt", jwt_secret=SECRET)
    assert (await listing(node, bearer(token())))[0] == 200
    await refused(node, {}, "unauthorized")  # no credential at all
    now = int(time.time())
    cases = {
        "token_expired": token(exp=now - 10),
        "token_not_yet_valid": token(nbf=now + 600),
        "invalid_signature": token(key="another-secret-of-at-least-thirty-two-bytes"),
        "invalid_algorithm": unsigned_token(),
        "missing_claim": token(exp=None),
        "invalid_audience": token(aud="someone-else"),  # no audience configured
        "invalid_token": "not.a.token",
    }
    for code, value in cases.items():
        await refused(node, bearer(value), code)
    await refused(node, bearer(token(sub=None)), "missing_claim")
    await refused(node, {"Authorization": "Bearer "}, "invalid_token")


@embedded_only
async def test_audience_and_issuer_are_checked_when_configured(start_node: NodeFactory) -> None:
    node = await start_node(
        auth="jwt", jwt_secret=SECRET, jwt_audience="canopy", jwt_issuer="https://idp.example"
    )
    good = {"aud": "canopy", "iss": "https://idp.example"}
    assert (await listing(node, bearer(token(**good))))[0] == 200
    await refused(node, bearer(token(**{**good, "aud": "other"})), "invalid_audience")
    await refused(node, bearer(token(**{**good, "iss": "https://evil.example"})), "invalid_issuer")
    await refused(node, bearer(token(iss="https://idp.example")), "missing_claim")  # no aud


@embedded_only
@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
async def test_a_public_key_verifies_its_tokens_and_never_hs256(
    start_node: NodeFactory, tmp_path: Path, algorithm: str
) -> None:
    key = private_key(algorithm)
    pem = tmp_path / "public.pem"
    pem.write_bytes(public_pem(key))
    node = await start_node(auth="jwt", jwt_public_key=pem)
    assert (await listing(node, bearer(token(key, algorithm))))[0] == 200
    await refused(node, bearer(token(private_key(algorithm), algorithm)), "invalid_signature")
    await refused(node, bearer(hs256_with(pem.read_bytes())), "invalid_algorithm")
    await refused(node, bearer(token()), "invalid_algorithm")  # HS256, no secret here
    await refused(node, bearer(unsigned_token()), "invalid_algorithm")


@embedded_only
async def test_with_a_secret_too_an_hs256_token_is_checked_against_the_secret_only(
    start_node: NodeFactory, tmp_path: Path
) -> None:
    key = private_key("RS256")
    pem = tmp_path / "public.pem"
    pem.write_bytes(public_pem(key))
    node = await start_node(auth="jwt", jwt_secret=SECRET, jwt_public_key=pem)
    assert (await listing(node, bearer(token(key, "RS256"))))[0] == 200
    assert (await listing(node, bearer(token())))[0] == 200
    await refused(node, bearer(hs256_with(pem.read_bytes())), "invalid_signature")


@embedded_only
async def test_a_jwks_file_chooses_the_key_by_kid(start_node: NodeFactory, tmp_path: Path) -> None:
    rsa_key, ec_key = private_key("RS256"), private_key("ES256")
    jwks = {
        "keys": [
            {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key())), "kid": "r1"},
            {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key())), "kid": "e1",
             "alg": "ES256"},
        ]
    }  # fmt: skip
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks))
    node = await start_node(auth="jwt", jwks_file=path)
    assert (await listing(node, bearer(token(rsa_key, "RS256", kid="r1"))))[0] == 200
    assert (await listing(node, bearer(token(ec_key, "ES256", kid="e1"))))[0] == 200
    await refused(node, bearer(token(rsa_key, "RS256", kid="e1")), "invalid_algorithm")
    await refused(node, bearer(token(rsa_key, "RS256", kid="r9")), "unknown_key")
    await refused(node, bearer(token(rsa_key, "RS256")), "unknown_key")  # two keys: kid needed


@embedded_only
async def test_a_read_scope_may_read_but_not_write(start_node: NodeFactory) -> None:
    node = await start_node(auth="jwt", jwt_secret=SECRET)
    writer = bearer(token(scope="read write"))
    status, created = await node.request("POST", API, json={"title": "t"}, headers=writer)
    assert status == 200 and created["created_by"] == "alice", created
    reader = bearer(token(scope="read"))
    cid = created["conversation_id"]
    assert (await node.request("GET", f"{API}/{cid}", headers=reader))[0] == 200
    status, body = await node.request("PUT", f"{API}/{cid}", json={"title": "x"}, headers=reader)
    assert (status, body["error"]["code"]) == (403, "insufficient_scope"), body
    status, body = await node.request("POST", API, json={"title": "t"}, headers=reader)
    assert (status, body["error"]["code"]) == (403, "insufficient_scope"), body
    fork = await node.request("POST", f"{API}/{cid}/fork", json={"title": "f"}, headers=reader)
    assert fork[0] == 403
    status, mine = await node.request("GET", "/api/v1/conversations", headers=reader)
    assert status == 200 and [c["conversation_id"] for c in mine["conversations"]] == [cid]


def test_a_verified_token_is_cached_and_not_verified_again() -> None:
    auth = JwtAuth(SECRET.encode())
    calls = []
    verify = auth.verify
    auth.verify = lambda value: calls.append(value) or verify(value)  # type: ignore[method-assign]
    request = make_mocked_request("GET", "/", headers=bearer(token()))
    first = auth.authenticate(request)
    assert auth.authenticate(request) is first and len(calls) == 1
    assert first is not None and (first.user_id, first.kind) == ("alice", "user")


def test_a_cached_token_lives_until_its_exp_or_a_minute_at_most() -> None:
    now = [1_000_000.0]
    cache = TokenCache(max_entries=3, max_seconds=60, clock=lambda: now[0])
    alice, bob = object(), object()
    cache.put("soon", alice, expires_at=now[0] + 30)  # type: ignore[arg-type]
    cache.put("later", bob, expires_at=now[0] + 3600)  # type: ignore[arg-type]
    now[0] += 29
    assert cache.get("soon") is alice and cache.get("later") is bob
    now[0] += 1  # the token's exp
    assert cache.get("soon") is None and cache.get("later") is bob
    now[0] += 30  # a minute after it was verified
    assert cache.get("later") is None and len(cache) == 0


def test_the_token_cache_is_bounded_and_drops_the_oldest() -> None:
    cache = TokenCache(max_entries=3, clock=lambda: 0.0)
    for name in ("a", "b", "c", "d"):
        cache.put(name, name, expires_at=100)  # type: ignore[arg-type]
    assert len(cache) == 3 and cache.get("a") is None and cache.get("d") == "d"


# -- api keys, and callers acting on conversations: every backend ---------------------------

KEY = "backend-key-0123456789"
KEYED = {"auth": "jwt,api-key", "jwt_secret": SECRET, "api_keys": f"app:{api_key_digest(KEY)}"}


def service(user: str | None = None) -> dict[str, str]:
    return {"X-API-Key": KEY, **({"X-Canopy-User": user} if user else {})}


async def test_a_bad_api_key_is_refused(start_node: NodeFactory) -> None:
    node = await start_node(**KEYED)
    await refused(node, {"X-API-Key": "not-the-key"}, "invalid_api_key")
    assert (await listing(node, service()))[0] == 200


async def test_a_service_acting_for_a_user_has_that_users_permissions(
    start_node: NodeFactory,
) -> None:
    node = await start_node(**KEYED)
    # A service names any author; acting for nobody it may do everything.
    status, created = await node.request(
        "POST", API, json={"title": "t", "created_by": "alice"}, headers=service()
    )
    assert status == 200 and created["created_by"] == "alice", created
    cid = created["conversation_id"]
    assert (await node.request("GET", f"{API}/{cid}", headers=service("bob")))[0] == 404
    share = {"shared_with": "bob", "permission": "read"}
    status, body = await node.request(
        "POST", f"{API}/{cid}/share", json=share, headers=service("alice")
    )
    assert status == 200 and body["shared_by"] == "alice", body
    assert (await node.request("GET", f"{API}/{cid}", headers=service("bob")))[0] == 200
    status, body = await node.request(
        "PUT", f"{API}/{cid}", json={"title": "mine now"}, headers=service("bob")
    )
    assert (status, body["error"]["code"]) == (403, "permission_denied"), body
    _, after = await node.request("GET", f"{API}/{cid}", headers=service())
    assert after["title"] == "t"
    # Acting for bob, the service still names its author freely.
    status, other = await node.request(
        "POST", API, json={"title": "u", "created_by": "carol"}, headers=service("bob")
    )
    assert status == 200 and other["created_by"] == "carol", other


async def test_a_user_may_not_write_as_someone_else(start_node: NodeFactory) -> None:
    node = await start_node(**KEYED)
    alice = bearer(token())
    status, body = await node.request(
        "POST", API, json={"title": "t", "created_by": "bob"}, headers=alice
    )
    assert (status, body["error"]["code"]) == (403, "author_mismatch"), body
    assert (await listing(node, service(), "bob"))[1] == []
    status, created = await node.request("POST", API, json={"title": "t"}, headers=alice)
    assert status == 200 and created["created_by"] == "alice", created
    assert (await listing(node, alice))[1] == [created["conversation_id"]]
