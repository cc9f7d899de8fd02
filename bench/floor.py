"""The floor under the HTTP stack: a bare uvloop Protocol answering bench.ceiling's bodies.

    python -m bench.floor --port P

No framework: each request's head is found by its blank line and its body by
Content-Length, and the answer is one constant write (GET on a message path gets
get_message's body, POST on a messages path an append's; anything else 404). It keeps
connections alive and serves pipelined requests in order, which is all bench/client.py
needs. What bench.ceiling costs above this is what aiohttp costs per request; it is the
measure behind the HTTP server decision in docs/decisions.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import sys
from typing import cast

import uvloop

from bench.ceiling import APPENDED, BODY

_MESSAGE = re.compile(rb"GET /api/v1/conversations/[^/ ]+/messages/[^/ ]+ HTTP/1\.1")
_MESSAGES = re.compile(rb"POST /api/v1/conversations/[^/ ]+/messages HTTP/1\.1")
_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)


def _answer(status: bytes, body: bytes) -> bytes:
    head = b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    return head % (status, len(body)) + body


_GOT, _APPENDED = _answer(b"200 OK", BODY), _answer(b"200 OK", APPENDED)
_MISSING = _answer(b"404 Not Found", b'{"error":"not found"}')


class Floor(asyncio.Protocol):
    def __init__(self) -> None:
        self._buffer = b""
        self._transport: asyncio.WriteTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.WriteTransport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        answers = []
        while (end := buffer.find(b"\r\n\r\n")) >= 0:
            head = buffer[:end]
            length = _LENGTH.search(head)
            size = end + 4 + (int(length.group(1)) if length else 0)
            if len(buffer) < size:
                break  # the body is still arriving
            line = head.split(b"\r\n", 1)[0]  # the request line
            if _MESSAGE.fullmatch(line):
                answers.append(_GOT)
            elif _MESSAGES.fullmatch(line):
                answers.append(_APPENDED)
            else:
                answers.append(_MISSING)
            buffer = buffer[size:]
        self._buffer = buffer
        if answers and self._transport is not None:
            self._transport.write(b"".join(answers))


async def serve(host: str, port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Floor, host, port)
    print(f"======== Running on http://{host}:{port} ========", flush=True)  # as aiohttp says
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
