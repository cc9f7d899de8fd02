"""SegmentRouter on its own: which handler a path and method reach, and with what."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from aiohttp.typedefs import Handler

from gateway.router import SegmentRouter
from gateway.routes import add_routes, messages, shares


def _named(name: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        raise AssertionError("routing tests never call handlers")

    handler.__name__ = name
    return handler


@pytest.fixture
def router() -> SegmentRouter:
    router = SegmentRouter("/api/c")
    router.add("POST", "/api/c", _named("create"))
    router.add("GET", "/api/c/{cid}", _named("get"))
    router.add("DELETE", "/api/c/{cid}", _named("delete"))
    router.add("GET", "/api/c/{cid}/tree", _named("tree"))
    router.add("GET", "/api/c/{cid}/m/{mid}", _named("message"))
    router.add("GET", "/api/c/{cid}/m/{mid}/lineage", _named("lineage"))
    router.add("DELETE", "/api/c/{cid}/shares/{user}", _named("revoke"))
    return router


async def resolve(
    router: SegmentRouter, method: str, path: str
) -> tuple[str | None, dict[str, str], set[str]]:
    match, allowed = await router.resolve(make_mocked_request(method, path))
    if match is None:
        return None, {}, set(allowed)
    return match.handler.__name__, dict(match), set(allowed)


@pytest.mark.parametrize(
    ("method", "path", "handler", "parameters"),
    [
        ("POST", "/api/c", "create", {}),
        ("GET", "/api/c/c1", "get", {"cid": "c1"}),
        ("DELETE", "/api/c/c1", "delete", {"cid": "c1"}),
        ("GET", "/api/c/c1/tree", "tree", {"cid": "c1"}),
        ("GET", "/api/c/c1/m/m1", "message", {"cid": "c1", "mid": "m1"}),
        ("GET", "/api/c/c1/m/m1/lineage", "lineage", {"cid": "c1", "mid": "m1"}),
        # a literal is a literal only where a route has it
        ("GET", "/api/c/tree", "get", {"cid": "tree"}),
        ("GET", "/api/c/c1/m/lineage", "message", {"cid": "c1", "mid": "lineage"}),
        # path_safe keeps an encoded "/" encoded; the value holds it decoded
        ("DELETE", "/api/c/c1/shares/a%2Fb", "revoke", {"cid": "c1", "user": "a/b"}),
        ("DELETE", "/api/c/c1/shares/50%25", "revoke", {"cid": "c1", "user": "50%"}),
    ],
)
async def test_a_path_reaches_its_handler_with_its_parameters(
    router: SegmentRouter, method: str, path: str, handler: str, parameters: dict[str, str]
) -> None:
    found, values, allowed = await resolve(router, method, path)
    assert (found, values) == (handler, parameters)
    assert method in allowed


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/api/c/c1", {"GET", "DELETE"}),
        ("GET", "/api/c", {"POST"}),
        ("POST", "/api/c/c1/m/m1", {"GET"}),
    ],
)
async def test_a_path_without_the_method_lists_the_methods_it_has(
    router: SegmentRouter, method: str, path: str, allowed: set[str]
) -> None:
    assert await resolve(router, method, path) == (None, {}, allowed)


@pytest.mark.parametrize(
    "path",
    [
        "/api/c/",  # an empty segment is never a parameter value
        "/api/c/c1/",
        "/api/c//tree",
        "/api/c/c1/m",  # a prefix of routes is not a route
        "/api/c/c1/nope",
        "/api/c/c1/m/m1/lineage/more",
        "/api/c/c1/shares",
    ],
)
async def test_a_path_no_route_matches_is_not_found(router: SegmentRouter, path: str) -> None:
    assert await resolve(router, "GET", path) == (None, {}, set())


def test_routes_that_could_not_be_told_apart_are_refused(router: SegmentRouter) -> None:
    with pytest.raises(ValueError, match="already routed"):
        router.add("GET", "/api/c/{cid}/tree", _named("again"))
    with pytest.raises(ValueError, match="another route has"):
        router.add("GET", "/api/c/{other}/branches", _named("renamed"))
    with pytest.raises(ValueError, match="not under /api/c"):
        router.add("GET", "/elsewhere/{cid}", _named("outside"))


async def test_in_an_application_the_index_sends_only_the_prefix_here(
    router: SegmentRouter,
) -> None:
    app = web.Application()
    app.router.register_resource(router)
    app.router.add_get("/api/cx", _named("neighbour"))  # shares the prefix's first characters
    app.freeze()
    for path, handler in (("/api/c/c1/tree", "tree"), ("/api/cx", "neighbour")):
        match = await app.router.resolve(make_mocked_request("GET", path, app=app))
        assert match.handler.__name__ == handler
    assert len(router) == 7 and {route.method for route in router} == {"GET", "POST", "DELETE"}


async def test_the_api_routes_resolve_as_registered_and_get_answers_head() -> None:
    app = web.Application()
    add_routes(app)
    app.freeze()
    cid, mid = "c1", "m1"
    cases = [
        ("GET", f"/api/v1/conversations/{cid}/messages/{mid}", messages.get),
        ("HEAD", f"/api/v1/conversations/{cid}/messages/{mid}", messages.get),
        ("POST", f"/api/v1/conversations/{cid}/messages", messages.create),
        ("GET", "/api/v1/users/alice/conversations", shares.user_conversations),
    ]
    for method, path, handler in cases:
        match = await app.router.resolve(make_mocked_request(method, path, app=app))
        assert match.handler is handler, (method, path)
