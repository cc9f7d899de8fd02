"""Raw HTTP/1.1 over a socket, for what aiohttp's client will not send: stalls, lies
about lengths, malformed framing, aborted bodies."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

ANSWER_WITHIN = 30.0  # a liveness bound (an answer at all), not a latency assertion


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def head(method: str, path: str, port: int, *lines: str, host: str | None = None) -> bytes:
    """A request head; `lines` are extra header lines."""
    host_line = f"Host: {host or f'127.0.0.1:{port}'}"
    return "\r\n".join([f"{method} {path} HTTP/1.1", host_line, *lines, "", ""]).encode()


async def read_response(reader: asyncio.StreamReader) -> RawResponse:
    async with asyncio.timeout(ANSWER_WITHIN):
        raw_head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = raw_head.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return RawResponse(int(status_line.split()[1]), headers, body)


async def exchange(port: int, data: bytes) -> RawResponse:
    """Send `data` on a fresh connection and read one response."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await read_response(reader)
    finally:
        writer.close()
