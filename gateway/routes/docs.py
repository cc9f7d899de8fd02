"""The API's description: `/openapi.json`, and Swagger UI at `/docs`, served offline.

Swagger UI's scripts and styles come from the swagger-ui-bundle package (under
`/docs/`); the page names nothing outside this node, and Swagger UI's online validator
badge is turned off (`validatorUrl: null`).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from swagger_ui_bundle import swagger_ui_path

from gateway.openapi import OPENAPI, describe

routes = web.RouteTableDef()
ASSETS = "/docs"

# Relative URLs: the page works behind a proxy that mounts the node under a prefix.
PAGE = b"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Canopy API</title>
<link rel="stylesheet" href="docs/swagger-ui.css">
<link rel="icon" type="image/png" href="docs/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="docs/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({
  url: "openapi.json", dom_id: "#swagger-ui", deepLinking: true, validatorUrl: null
});
</script>
</body>
</html>
"""


@routes.get("/openapi.json")
@describe("This API's OpenAPI 3.1 document", response=dict[str, Any])
async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI].body, content_type="application/json")


@routes.get("/docs")
@describe("Swagger UI over /openapi.json", response=str, media="text/html")
async def docs(request: web.Request) -> web.Response:
    return web.Response(body=PAGE, content_type="text/html", charset="utf-8")


def add_assets(app: web.Application) -> None:
    """Swagger UI's files under /docs/ (after the page's own route, which aiohttp tries
    first for the exact path)."""
    app.router.add_static(ASSETS, swagger_ui_path)
