"""CORS: preflights answered before authentication for listed origins (403 for others),
and every response to a listed origin, errors included, readable by its page."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from gateway_helpers import API, assert_error, conv_path, random_id

from gateway.auth import api_key_digest
from gateway.cors import parse_origins

if TYPE_CHECKING:
    from conftest import Node, NodeFactory
    from multidict import CIMultiDictProxy

embedded = pytest.mark.parametrize("backend", ["embedded"], indirect=True)  # storage-blind

ALLOWED = "https://app.example"
OTHER = "https://evil.example"
ORIGINS = f"{ALLOWED},https://admin.example:8443"
KEY = "secret"


async def preflight(node: Node, origin: str, **headers: str) -> tuple[int, CIMultiDictProxy[str]]:
    asked = {"Origin": origin, "Access-Control-Request-Method": "POST", **headers}
    async with node.session.options(f"{node.base}{API}/conversations", headers=asked) as response:
        await response.read()
        return response.status, response.headers


async def cors_node(start_node: NodeFactory, origins: str = ORIGINS) -> Node:
    """A node that needs an API key, so that a preflight reaching auth would get 401."""
    return await start_node(
        cors_origins=origins, auth="api-key", api_keys=f"b:{api_key_digest(KEY)}"
    )


@embedded
async def test_a_listed_origin_s_preflight_is_answered_before_auth(start_node: NodeFactory) -> None:
    node = await cors_node(start_node)
    status, headers = await preflight(
        node, ALLOWED, **{"Access-Control-Request-Headers": "content-type, x-request-id, bad name"}
    )
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == ALLOWED
    assert headers["Vary"] == "Origin"
    assert {"POST", "PATCH", "DELETE"} <= set(headers["Access-Control-Allow-Methods"].split(", "))
    allowed = headers["Access-Control-Allow-Headers"].split(", ")
    assert {"Authorization", "Content-Type", "X-API-Key", "X-Canopy-User", "x-request-id"} <= set(
        allowed
    )
    assert "bad name" not in allowed
    assert int(headers["Access-Control-Max-Age"]) > 0


@embedded
async def test_another_origin_s_preflight_is_refused_without_cors_headers(
    start_node: NodeFactory,
) -> None:
    node = await cors_node(start_node)
    asked = {"Origin": OTHER, "Access-Control-Request-Method": "POST"}
    async with node.session.options(f"{node.base}{API}/conversations", headers=asked) as response:
        assert_error(response.status, await response.json(), 403, "cors_origin_not_allowed")
        assert "Access-Control-Allow-Origin" not in response.headers


@embedded
@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        ("POST", f"{API}/conversations", {}, 401),
        ("GET", f"{API}/conversations/{random_id()}", {"X-API-Key": KEY}, 404),
        ("GET", "/health", {}, 200),
    ],
)
async def test_responses_to_a_listed_origin_carry_cors_headers(
    start_node: NodeFactory, method: str, path: str, headers: dict[str, str], status: int
) -> None:
    node = await cors_node(start_node)
    sent = {"Origin": "https://admin.example:8443", **headers}
    async with node.session.request(method, node.base + path, headers=sent) as response:
        assert response.status == status
        assert response.headers["Access-Control-Allow-Origin"] == "https://admin.example:8443"
        exposed = set(response.headers["Access-Control-Expose-Headers"].split(", "))
        assert {"Retry-After", "X-Next-Cursor", "Link"} <= exposed
        assert response.headers["Vary"] == "Origin"
    async with node.session.request(method, node.base + path, headers=headers) as response:
        assert "Access-Control-Allow-Origin" not in response.headers  # no Origin: same-origin
        assert response.headers["Vary"] == "Origin"


@embedded
async def test_a_rate_limited_answer_is_readable_by_the_page(start_node: NodeFactory) -> None:
    node = await start_node(cors_origins=ALLOWED, rate_limit="1/h,burst=1")
    path = f"{node.base}{API}/users/alice/conversations"
    for expected in (200, 429):
        async with node.session.get(path, headers={"Origin": ALLOWED}) as response:
            assert response.status == expected
            assert response.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "Retry-After" in response.headers


@embedded
async def test_another_origin_gets_no_cors_headers(start_node: NodeFactory) -> None:
    node = await cors_node(start_node)
    sent = {"Origin": OTHER, "X-API-Key": KEY}
    async with node.session.get(f"{node.base}{conv_path(random_id())}", headers=sent) as response:
        assert response.status == 404
        assert "Access-Control-Allow-Origin" not in response.headers


@embedded
async def test_any_origin(start_node: NodeFactory) -> None:
    node = await cors_node(start_node, "*")
    status, headers = await preflight(node, OTHER)
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert "Vary" not in headers


@embedded
async def test_without_cors_origins_a_preflight_is_not_answered(node: Node) -> None:
    status, body = await node.request(
        "OPTIONS",
        f"{API}/conversations",
        headers={"Origin": ALLOWED, "Access-Control-Request-Method": "POST"},
    )
    assert_error(status, body, 405, "method_not_allowed")


@pytest.mark.parametrize("raw", ["https://app.example/", "app.example", "https://a.example/x"])
def test_a_malformed_origin_is_refused(raw: str) -> None:
    with pytest.raises(ValueError, match="cors_origins"):
        parse_origins(raw)


def test_origins_are_parsed() -> None:
    assert parse_origins(" https://a.example , http://[::1]:5173") == {
        "https://a.example",
        "http://[::1]:5173",
    }
