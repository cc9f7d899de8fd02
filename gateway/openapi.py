"""The OpenAPI 3.1 document, generated from the routes the app registers.

Each handler carries a one-line description (`@describe(...)`: summary, body type,
response type, query parameters, the errors peculiar to it); every schema comes from
msgspec (`msgspec.json.schema_components`) over the same Structs that decode requests
and encode responses, so the document cannot drift from the wire. The errors every
route shares follow from what it has: a body (400, 408, 413, 415, 422), path or query
parameters (404, 422), a caller (401 with WWW-Authenticate, 403, and the X-Canopy-User
header: whom a service acts for, or who an --auth none caller is), and the edge (421,
429, 503). The document is built once, at startup, from the frozen router: a route
without a description is left out, and tests/gateway/test_openapi.py fails on it.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import msgspec
from aiohttp import web

from gateway.auth import is_admin, is_public
from gateway.guards import USER_HEADER
from gateway.paging import MAX_LIMIT
from gateway.router import SegmentRouter
from gateway.schemas import CompactMessageOut, ErrorOut, MessageOut, Name, UserId

H = TypeVar("H", bound=Callable[..., Any])

JSON = "application/json"
_REF = "#/components/schemas/{name}"
_PARAMETER = re.compile(r"\{([^}]+)\}")


@dataclass(frozen=True)
class Query:
    """A query parameter: its name, and a type whose msgspec schema describes its value."""

    name: str
    kind: Any
    description: str = ""


@dataclass(frozen=True)
class Operation:
    summary: str
    body: Any = None  # the request body's type
    response: Any | tuple[Any, ...] = None  # the 200 body's type, or alternatives (anyOf)
    query: tuple[Query, ...] = ()
    errors: frozenset[int] = frozenset()  # besides those every route of its kind has
    media: str = JSON  # the 200 body's media type
    headers: tuple[str, ...] = ()  # response headers it may send (see HEADERS)


_DESCRIBED: dict[Callable[..., Any], Operation] = {}


def describe(
    summary: str,
    *,
    body: Any = None,
    response: Any | tuple[Any, ...] = None,
    query: Sequence[Query] = (),
    errors: Sequence[int] = (),
    media: str = JSON,
    headers: Sequence[str] = (),
    paged: bool = False,
) -> Callable[[H], H]:
    """Describe a handler for the document: `@describe("Get a branch", response=BranchOut)`
    under its `@routes.get(...)`. `paged`: a message list (gateway.listings), with the
    paging parameters and headers, that may be too large (413) or wait too long (503)."""
    if paged:
        query, headers, errors = (*PAGE, *query), (*PAGE_HEADERS, *headers), (413, 503, *errors)
    operation = Operation(
        summary, body, response, tuple(query), frozenset(errors), media, tuple(headers)
    )

    def mark(handler: H) -> H:
        _DESCRIBED[handler] = operation
        return handler

    return mark


def description(handler: Callable[..., Any]) -> Operation | None:
    return _DESCRIBED.get(handler)


# -- shared parameters ---------------------------------------------------------------------

PAGE = (
    Query("limit", Annotated[int, msgspec.Meta(ge=1, le=MAX_LIMIT)],
          "Page size; without limit or cursor the whole list is answered (seed 000)."),
    Query("cursor", Annotated[str, msgspec.Meta(pattern="^[0-9]{1,18}$")],
          "Opaque: the X-Next-Cursor of the previous page."),
    Query("compact", bool, "Drop each message's lineage (depth and parent rebuild it)."),
)  # fmt: skip
PAGE_HEADERS = ("X-Next-Cursor", "Link")  # on a page that has a next one
MESSAGES = (list[MessageOut], list[CompactMessageOut])  # a message list, full or compact
HEADERS = {
    "X-Next-Cursor": "The cursor of the next page, when there is one.",
    "Link": 'The next page\'s URL, rel="next".',
    "Retry-After": "Seconds to wait before retrying.",
    "WWW-Authenticate": "The scheme to authenticate with (RFC 9110): Bearer, with"
    ' error="invalid_token" and a description when a bearer token was refused.',
}
USER_PARAMETER = "CanopyUser"  # components/parameters: X-Canopy-User on every non-public route
# What X-Canopy-User means under each auth mode, in the order the modes are asked.
USER_HEADER_MEANING = {
    "jwt": "Ignored with a bearer token: the token's subject is the caller.",
    "api-key": "With an API key: the user the service acts for, with exactly that user's"
    " permissions; absent, the service itself (unrestricted), which may also name any"
    " created_by / shared_by.",
    "none": "With --auth none (no credential): names the caller, unchecked; absent, an"
    " anonymous caller.",
}

# Path parameters by name; any other is a string.
PATH_PARAMETERS: dict[str, Any] = {
    "conversation_id": uuid.UUID,
    "message_id": uuid.UUID,
    "branch_id": uuid.UUID,
    "user_id": Name,
}

_REASONS = {
    400: "Malformed JSON, or the client hung up mid-body",
    401: "No credential, or one that does not verify",
    403: "Seen but not allowed, or a body naming someone other than the caller",
    404: "Unknown, or not visible to the caller",
    408: "The body did not arrive in time",
    409: "Conflict",
    413: "The request body or the response is too large",
    415: "The body is not application/json",
    421: "The Host header names another site",
    422: "A field, path or query parameter, or X-Canopy-User, is invalid",
    429: "Rate limited (see Retry-After)",
    503: "Overloaded or a dependency is down (see Retry-After)",
}


# -- the document ------------------------------------------------------------------------


def routes(app: web.Application) -> Iterator[tuple[str, str, Callable[..., Any]]]:
    """(method, path pattern, handler) of every route the app registers, HEAD excluded
    (aiohttp answers it for each GET), static files excluded."""
    for resource in app.router.resources():
        if isinstance(resource, web.StaticResource):
            continue
        table = (
            resource.table()
            if isinstance(resource, SegmentRouter)
            else ((resource.canonical, route) for route in resource)
        )
        for pattern, route in table:
            if route.method != "HEAD":
                yield route.method, pattern, route.handler


def document(app: web.Application, auth_modes: frozenset[str]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the app's described routes, for these auth modes."""
    described = [(m, p, op) for m, p, h in routes(app) if (op := description(h)) is not None]
    types = _types(described)
    schemas, components = msgspec.json.schema_components(types, ref_template=_REF)
    schema_of = dict(zip(types, schemas, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for method, pattern, operation in sorted(described, key=lambda d: d[1]):
        paths.setdefault(pattern, {})[method.lower()] = _operation(
            method, pattern, operation, schema_of
        )
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "Canopy",
            "version": "0.1.0",
            "description": "The hot tier for AI chat history: conversation trees in memory.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "parameters": {USER_PARAMETER: _user_parameter(auth_modes, schema_of)},
            **_security_schemes(auth_modes),
        },
    }
    security = _security(auth_modes)
    if security is not None:
        doc["security"] = security
    # As served: JSON values only (a default of () is [] on the wire)
    return msgspec.json.decode(msgspec.json.encode(doc))  # type: ignore[no-any-return]


def _types(described: list[tuple[str, str, Operation]]) -> list[Any]:
    """Every type the document names, each once, in a stable order."""
    found: dict[Any, None] = {ErrorOut: None, UserId: None}
    for _, pattern, op in described:
        found.update(dict.fromkeys(_alternatives(op.response)))
        if op.body is not None:
            found[op.body] = None
        found.update(dict.fromkeys(q.kind for q in op.query))
        found.update(dict.fromkeys(_path_kind(n) for n in _PARAMETER.findall(pattern)))
    return list(found)


def _alternatives(response: Any) -> tuple[Any, ...]:
    if response is None:
        return ()
    return response if isinstance(response, tuple) else (response,)


def _path_kind(name: str) -> Any:
    return PATH_PARAMETERS.get(name, str)


def _operation(
    method: str, pattern: str, op: Operation, schema_of: dict[Any, Any]
) -> dict[str, Any]:
    names = _PARAMETER.findall(pattern)
    parameters = [
        {"name": n, "in": "path", "required": True, "schema": schema_of[_path_kind(n)]}
        for n in names
    ] + [
        {"name": q.name, "in": "query", "required": False, "schema": schema_of[q.kind]}
        | ({"description": q.description} if q.description else {})
        for q in op.query
    ]
    page = pattern == "/admin"  # the admin page asks for the token itself
    public, admin = is_public(pattern) or page, is_admin(pattern) and not page
    if not (public or admin):
        parameters.append({"$ref": f"#/components/parameters/{USER_PARAMETER}"})
    result: dict[str, Any] = {
        "summary": op.summary,
        "operationId": _operation_id(method, pattern),
        "responses": _responses(op, _errors(op, bool(names), public or admin, admin), schema_of),
    }
    if parameters:
        result["parameters"] = parameters
    if op.body is not None:
        result["requestBody"] = {
            "required": True,
            "content": {JSON: {"schema": schema_of[op.body]}},
        }
    if public:
        result["security"] = []  # reachable without a credential
    elif admin:
        result["security"] = [{ADMIN_SCHEME: []}]
    return result


def _errors(op: Operation, has_path: bool, public: bool, admin: bool = False) -> set[int]:
    errors = {421, 429} | set(op.errors) | ({401} if admin else set())
    if op.body is not None:
        errors |= {400, 408, 413, 415, 422, 503}
    if has_path:
        errors |= {404, 422}
    if op.query:
        errors |= {422}
    if not public:
        errors |= {401, 403, 422, 503}  # 422: an X-Canopy-User over its length
    return errors


def _responses(op: Operation, errors: set[int], schema_of: dict[Any, Any]) -> dict[str, Any]:
    alternatives = [schema_of[t] for t in _alternatives(op.response)]
    body: dict[str, Any] = {}
    if len(alternatives) == 1:
        body = alternatives[0]
    elif alternatives:
        body = {"anyOf": alternatives}
    ok: dict[str, Any] = {"description": "OK", "content": {op.media: {"schema": body}}}
    if op.headers:
        ok["headers"] = {name: _header(name) for name in op.headers}
    responses: dict[str, Any] = {"200": ok}
    error_body = {"content": {JSON: {"schema": schema_of[ErrorOut]}}}
    for status in sorted(errors):
        responses[str(status)] = {"description": _REASONS[status], **error_body}
        if status in (429, 503):
            responses[str(status)]["headers"] = {"Retry-After": _header("Retry-After")}
        if status == 401:
            responses["401"]["headers"] = {"WWW-Authenticate": _header("WWW-Authenticate", True)}
    return responses


def _header(name: str, required: bool = False) -> dict[str, Any]:
    header = {"description": HEADERS[name], "schema": {"type": "string"}}
    return header | ({"required": True} if required else {})


def _user_parameter(modes: frozenset[str], schema_of: dict[Any, Any]) -> dict[str, Any]:
    """X-Canopy-User, described for the configured auth modes."""
    meaning = " ".join(text for mode, text in USER_HEADER_MEANING.items() if mode in modes)
    return {
        "name": USER_HEADER,
        "in": "header",
        "required": False,
        "description": f"The user a request is made for. {meaning}",
        "schema": schema_of[UserId],
    }


def _operation_id(method: str, pattern: str) -> str:
    words = [w for w in re.split(r"[^A-Za-z0-9]+", pattern) if w and w not in ("api", "v1")]
    return "_".join([method.lower(), *words])


ADMIN_SCHEME = "adminToken"  # /admin/... and /metrics (gateway/admin_token.py)


def _security_schemes(modes: frozenset[str]) -> dict[str, Any]:
    schemes: dict[str, Any] = {
        ADMIN_SCHEME: {"type": "http", "scheme": "bearer", "description": "--admin-token"}
    }
    if "jwt" in modes:
        schemes["bearer"] = {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    if "api-key" in modes:
        schemes["apiKey"] = {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    return {"securitySchemes": schemes}


def _security(modes: frozenset[str]) -> list[dict[str, list[str]]] | None:
    """Any configured scheme will do; with `none` among the modes, none is needed."""
    requirements: list[dict[str, list[str]]] = [
        {name: []} for name in _security_schemes(modes)["securitySchemes"] if name != ADMIN_SCHEME
    ]
    if not requirements:
        return None
    if "none" in modes:
        requirements.append({})
    return requirements


class Encoded:
    """The document, encoded once at startup (the app's state is frozen by then)."""

    body = b""


OPENAPI = web.AppKey("openapi", Encoded)


def build_on_startup(app: web.Application, auth_modes: frozenset[str]) -> None:
    """Encode the document once the router is frozen: every route is in by then."""
    app[OPENAPI] = encoded = Encoded()

    async def build(app: web.Application) -> None:
        encoded.body = msgspec.json.encode(document(app, auth_modes))

    app.on_startup.append(build)
