"""The ceiling of the HTTP stack: a bare aiohttp app on uvloop, run the way `canopy serve` runs.

    python -m bench.ceiling --port P

One GET route shaped like get_message (`/api/v1/conversations/{cid}/messages/{mid}`)
answers a constant JSON body the size and shape of a real message (a 200-character
text, a lineage of two), encoded once. No middleware, no validation, no store: what
Canopy's get_message costs above this is the cost of Canopy.
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
BODY = msgspec.json.encode(
    {
        "conversation_id": _CID,
        "message_id": _MID,
        "parent_message_id": _ROOT,
        "role": "human",
        "content": {"type": "text", "text": "x" * 200},
        "content_metadata": {},
        "lineage": [_ROOT, _MID],
        "depth": 2,
        "created_at": "2026-01-01T00:00:00Z",
        "created_by": "bench",
    }
)


async def get_message(request: web.Request) -> web.Response:
    return web.Response(body=BODY, content_type="application/json")


def create_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/api/v1/conversations/{conversation_id}/messages/{message_id}", get_message)
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
