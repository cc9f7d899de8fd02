"""The ceiling of the HTTP stack: a bare aiohttp app on uvloop, run the way `canopy serve` runs.

    python -m bench.ceiling --port P

A GET route shaped like get_message (`/api/v1/conversations/{cid}/messages/{mid}`)
answers a constant JSON body the size and shape of a real message (a 200-character
text, a lineage of two), encoded once; a POST to `.../{cid}/messages`, shaped like an
append, reads its body and answers the same message a level deeper. No middleware, no
validation, no store: what Canopy's get_message and append cost above this is the cost
of Canopy (and what aiohttp costs above a bare protocol, bench/floor.py).
"""

from __future__ import annotations

import argparse
import logging
import sys

import msgspec
import uvloop
from aiohttp import web

_CID = "00000000-0000-4000-8000-000000000000"
_ROOT = "00000000-0000-4000-8000-000000000001"
_MID = "00000000-0000-4000-8000-000000000002"
_CHILD = "00000000-0000-4000-8000-000000000003"


def answer(parent: str, message: str, lineage: list[str]) -> bytes:
    return msgspec.json.encode(
        {
            "conversation_id": _CID,
            "message_id": message,
            "parent_message_id": parent,
            "role": "human",
            "content": {"type": "text", "text": "x" * 200},
            "content_metadata": {},
            "lineage": lineage,
            "depth": len(lineage),
            "created_at": "2026-01-01T00:00:00Z",
            "created_by": "bench",
        }
    )


BODY = answer(_ROOT, _MID, [_ROOT, _MID])  # get_message's
APPENDED = answer(_MID, _CHILD, [_ROOT, _MID, _CHILD])  # an append's
MESSAGE = "/api/v1/conversations/{conversation_id}/messages/{message_id}"
MESSAGES = "/api/v1/conversations/{conversation_id}/messages"


async def get_message(request: web.Request) -> web.Response:
    return web.Response(body=BODY, content_type="application/json")


async def append(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=APPENDED, content_type="application/json")


def create_app() -> web.Application:
    app = web.Application()
    app.router.add_get(MESSAGE, get_message)
    app.router.add_post(MESSAGES, append)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    web.run_app(
        create_app(),
        host=args.host,
        port=args.port,
        access_log=None,
        loop=uvloop.new_event_loop(),
        print=lambda message: print(message, flush=True),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
