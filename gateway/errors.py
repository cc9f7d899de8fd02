"""Turning every failure into the JSON error shape: `{"error": {"code", "message"}}`.

Domain errors carry their status; aiohttp's own (unknown route, wrong method, body
too large) are mapped by status; anything else is logged and answered as a plain
500 without a traceback. Every request passes here, so its latency and error code are
counted here too (gateway/request_metrics.py), rather than in a middleware of their own.
"""

from __future__ import annotations

import logging
import math
import time

from aiohttp import web
from aiohttp.typedefs import Handler

from engine.errors import CanopyError, HeldElsewhere, RateLimited, Unauthorized, Unavailable
from gateway.codec import json_response
from gateway.request_metrics import observe
from gateway.schemas import ErrorDetail, ErrorOut

log = logging.getLogger(__name__)

# The live node whose lease kept this one from serving the request (a cluster relays the
# request there rather than answering this 503: gateway/forwarding.py).
HELD_BY = web.RequestKey("held_by", str)
# Set by the forwarder on a request it serves here: that 503 is counted only if the
# forwarder answers it (`count_held`), not when it relays the request to the holder,
# whose answer is the client's (and the holder counts it).
RELAYS_HELD = web.RequestKey("relays_held", bool)
_UNCOUNTED = web.RequestKey("uncounted_held", tuple)

_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def error_response(status: int, code: str, message: str) -> web.StreamResponse:
    return json_response(ErrorOut(ErrorDetail(code, message)), status=status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    code: str | None = None  # the error's, counted by the metrics
    try:
        response = await handler(request)
    except CanopyError as exc:
        code = exc.code
        response = error_response(exc.status, code, exc.message)
        if isinstance(exc, Unauthorized):  # RFC 9110 11.6.1: a 401 names its scheme
            response.headers["WWW-Authenticate"] = getattr(exc, "challenge", "Bearer")
        if isinstance(exc, Unavailable | RateLimited):
            response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
        if isinstance(exc, HeldElsewhere):
            request[HELD_BY] = exc.holder
            if request.get(RELAYS_HELD):
                request[_UNCOUNTED] = (response.status, time.perf_counter() - started, code)
                return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        response = error_response(exc.status, code, exc.reason)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        code = "internal"
        response = error_response(500, code, "internal error")
    observe(request, response.status, time.perf_counter() - started, code)
    return response


def count_held(request: web.Request) -> None:
    """Count the HeldElsewhere 503 the forwarder answers after all (it did not relay)."""
    uncounted = request.pop(_UNCOUNTED, None)
    if uncounted is not None:
        observe(request, *uncounted)
