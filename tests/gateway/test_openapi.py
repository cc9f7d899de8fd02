"""The OpenAPI document: valid 3.1, every registered route in it; /docs offline."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

import pytest
from aiohttp import web
from openapi_spec_validator import validate
from yarl import URL

from gateway.auth import api_key_digest
from gateway.config import Settings
from gateway.openapi import describe, document, routes

EMBEDDED = pytest.mark.parametrize("backend", ["embedded"], indirect=True)  # one document


def registered(app: web.Application) -> set[tuple[str, str]]:
    """(method, path) of every route the app answers, as the document names them."""
    return {(method.lower(), pattern) for method, pattern, _ in routes(app)}


def documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method, path) for path, item in doc["paths"].items() for method in item}


def parameters(doc: dict[str, Any], operation: dict[str, Any]) -> list[dict[str, Any]]:
    """An operation's parameters, references to components/parameters resolved."""
    prefix = "#/components/parameters/"
    return [
        doc["components"]["parameters"][p["$ref"].removeprefix(prefix)] if "$ref" in p else p
        for p in operation.get("parameters", [])
    ]


async def fetch(node: Any, path: str, **kwargs: Any) -> tuple[int, str, bytes]:
    async with node.session.get(node.base + path, **kwargs) as response:
        return response.status, response.content_type, await response.read()


@EMBEDDED
async def test_the_document_is_valid_openapi_3_1(start_node: Any) -> None:
    node = await start_node()
    status, doc = await node.request("GET", "/openapi.json")
    assert status == 200 and doc["openapi"] == "3.1.0"
    validate(doc)  # raises on any violation of the 3.1 schema


@EMBEDDED
async def test_every_route_the_app_registers_is_documented(start_node: Any) -> None:
    node = await start_node()
    _, doc = await node.request("GET", "/openapi.json")
    assert registered(node.app) == documented(doc)
    # routes() misses none of what aiohttp itself holds (HEAD and static files aside)
    held = [
        r
        for r in node.app.router.routes()
        if r.method != "HEAD" and not isinstance(r.resource, web.StaticResource)
    ]
    assert len(held) == len(documented(doc)) > 20


def test_a_route_without_a_description_is_left_out_and_so_caught() -> None:
    app = web.Application()

    @describe("Described", response=str)
    async def described(request: web.Request) -> web.Response:
        return web.Response()

    async def forgotten(request: web.Request) -> web.Response:
        return web.Response()

    app.router.add_get("/described", described)
    app.router.add_post("/forgotten", forgotten)
    doc = document(app, frozenset({"none"}))
    assert registered(app) - documented(doc) == {("post", "/forgotten")}


@EMBEDDED
async def test_routes_carry_their_parameters_bodies_and_errors(start_node: Any) -> None:
    node = await start_node()
    _, doc = await node.request("GET", "/openapi.json")
    lineage = doc["paths"]["/api/v1/conversations/{conversation_id}/messages/{message_id}/lineage"]
    names = {p["name"]: p for p in parameters(doc, lineage["get"])}
    assert names.keys() == {
        "conversation_id", "message_id", "limit", "cursor", "compact", "X-Canopy-User",
    }  # fmt: skip
    assert names["limit"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 1000}
    assert names["conversation_id"]["schema"] == {"type": "string", "format": "uuid"}
    assert "X-Next-Cursor" in lineage["get"]["responses"]["200"]["headers"]
    append = doc["paths"]["/api/v1/conversations/{conversation_id}/messages"]["post"]
    body = append["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/CreateMessage"}
    error = {"$ref": "#/components/schemas/ErrorOut"}
    for status in ("400", "403", "404", "413", "415", "422", "503"):
        assert append["responses"][status]["content"]["application/json"]["schema"] == error
    assert "security" not in doc  # --auth none: no credential needed
    health = doc["paths"]["/health"]["get"]
    assert health["security"] == [] and "401" not in health["responses"]


class _References(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [v for k, v in attrs if k in ("src", "href") and v is not None]


@EMBEDDED
async def test_docs_page_loads_everything_from_the_node(start_node: Any) -> None:
    node = await start_node()
    status, content_type, page = await fetch(node, "/docs")
    assert status == 200 and content_type == "text/html"
    parser = _References()
    parser.feed(page.decode())
    assert len(parser.urls) >= 2, parser.urls
    page_url = URL(node.base + "/docs")
    for reference in parser.urls:
        assert not URL(reference).is_absolute(), reference  # no CDN, no other host
        status, _, body = await fetch(node, str(page_url.join(URL(reference)).relative()))
        assert status == 200 and body, reference
    text = page.decode()
    assert 'url: "openapi.json"' in text  # resolves to /openapi.json from /docs
    assert "validatorUrl: null" in text  # Swagger UI's badge would call an online validator


@EMBEDDED
async def test_docs_and_document_need_no_credential(start_node: Any) -> None:
    node = await start_node(auth="api-key", api_keys="ci:" + api_key_digest("secret"))
    for path in ("/openapi.json", "/docs", "/docs/swagger-ui-bundle.js"):
        status, _, _ = await fetch(node, path)
        assert status == 200, path
    # the /docs/ prefix opens only the assets: a dot segment does not reach the API
    for path in (
        "/docs/../api/v1/users/u/conversations",
        "/docs/%2e%2e/api/v1/users/u/conversations",
    ):
        status, _, body = await fetch(node, path)
        assert status in (401, 403, 404), (path, status, body)
    status, _, _ = await fetch(node, "/api/v1/users/u/conversations")
    assert status == 401
    _, doc = await node.request("GET", "/openapi.json")
    assert doc["components"]["securitySchemes"]["apiKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
    }
    assert doc["security"] == [{"apiKey": []}]
    assert doc["paths"]["/openapi.json"]["get"]["security"] == []


def test_jwt_and_anonymous_together_make_the_credential_optional() -> None:
    from gateway.app import create_app

    doc = document(create_app(Settings()), frozenset({"jwt", "none"}))
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert doc["security"] == [{"bearer": []}, {}]


def documents() -> dict[str, dict[str, Any]]:
    from gateway.app import create_app

    app = create_app(Settings())
    modes = ("none", "api-key", "jwt", "jwt,api-key")
    return {m: document(app, frozenset(m.split(","))) for m in modes}


def test_every_non_public_route_takes_x_canopy_user_as_its_modes_mean_it() -> None:
    for modes, doc in documents().items():
        for path, item in doc["paths"].items():
            for method, operation in item.items():
                names = [p["name"] for p in parameters(doc, operation)]
                if operation.get("security") == [{"adminToken": []}]:  # no user's route
                    assert path.startswith("/admin/") or path == "/metrics", path
                    assert "X-Canopy-User" not in names and "401" in operation["responses"]
                    continue
                public = operation.get("security") == []
                assert ("X-Canopy-User" in names) != public, (modes, method, path)
                assert public or "422" in operation["responses"]  # the header's length
        header = doc["components"]["parameters"]["CanopyUser"]
        assert header["in"] == "header" and header["required"] is False
        assert header["schema"] == {"type": "string", "minLength": 1, "maxLength": 256}
        text = header["description"]
        assert ("acts for" in text) == ("api-key" in modes), modes
        assert ("--auth none" in text) == ("none" in modes), modes
        assert ("subject" in text) == ("jwt" in modes), modes


def test_the_admin_routes_name_the_admin_token_in_every_mode() -> None:
    for doc in documents().values():
        scheme = doc["components"]["securitySchemes"]["adminToken"]
        assert scheme == {"type": "http", "scheme": "bearer", "description": "--admin-token"}
        admin = {p for p in doc["paths"] if p.startswith("/admin/") or p == "/metrics"}
        assert {"/admin/nodes", "/admin/actors", "/metrics"} <= admin
        for path in admin:
            for operation in doc["paths"][path].values():
                assert operation["security"] == [{"adminToken": []}], path
        assert doc["paths"]["/admin"]["get"]["security"] == []  # the page asks for it
        assert {"adminToken": []} not in doc.get("security", [])


def test_a_401_names_its_www_authenticate_header() -> None:
    doc = documents()["jwt"]
    answers = [
        operation["responses"]["401"]
        for item in doc["paths"].values()
        for operation in item.values()
        if "401" in operation["responses"]
    ]
    assert len(answers) > 20
    for answer in answers:
        assert answer["headers"]["WWW-Authenticate"]["required"] is True
    validate(doc)


@EMBEDDED
async def test_a_401_carries_the_header_the_document_promises(start_node: Any) -> None:
    node = await start_node(auth="api-key", api_keys="ci:" + api_key_digest("secret"))
    async with node.session.get(f"{node.base}/api/v1/users/u/conversations") as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
