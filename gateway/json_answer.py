"""A JSON answer written as one piece: its head built here, then head and body in one write.

aiohttp's `web.Response` goes through `prepare`: a content-type parse, `_prepare_headers`
(Date, Content-Length, the Connection rules), the headers serialized from their
multidict, then the body. For the small JSON bodies of this API that is most of what a
request costs above the socket write: get_message cost 84-87 µs of CPU at concurrency
32 with it, 68.5-73 µs with the head built here (bench.compare, alternated; see
docs/decisions.md). What the regular path does that matters is kept:
- the `on_response_prepare` signals (CORS, `X-Canopy-Node`) run on this response's
  headers, called in turn as aiohttp's `_prepare_hook` sends them, less its aiosignal
  layer and `drop_server_header`: this head has no `Server` line to drop, as no handler
  sets one (get_message 31.3 -> 29.2 µs in-process, medians of seven alternations;
  docs/decisions.md);
- the Connection rules (close, or HTTP/1.0 keep-alive);
- HEAD answers and bodiless statuses get the head alone;
- a header value with a line break is refused, as aiohttp refuses one.
"""

from __future__ import annotations

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import HttpVersion10, HttpVersion11

JSON = "application/json"


async def drop_server_header(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: no `Server` header, so no versions revealed."""
    response.headers.popall(hdrs.SERVER, None)


class JSONAnswer(web.StreamResponse):
    """`body` (encoded JSON) with `status`; headers may be set until it is sent."""

    def __init__(self, body: bytes, status: int = 200) -> None:
        super().__init__(status=status, headers={hdrs.CONTENT_TYPE: JSON})
        self._json = body

    @property
    def body(self) -> bytes:
        return self._json

    async def _start(self, request: web.BaseRequest) -> AbstractStreamWriter:
        self._req = request
        # as Request._prepare_hook: none without a match (a BaseRequest has none either)
        if isinstance(request, web.Request) and (match := request._match_info) is not None:
            for app in match.apps:
                for callback in app.on_response_prepare:
                    if callback is not drop_server_header:
                        await callback(request, self)
        version = request.version
        keep_alive = self._keep_alive if self._keep_alive is not None else request.keep_alive
        self._keep_alive = keep_alive
        headers = self.headers
        if keep_alive:
            if version == HttpVersion10:
                headers[hdrs.CONNECTION] = "keep-alive"
        elif version == HttpVersion11:
            headers[hdrs.CONNECTION] = "close"
        lines = [f"HTTP/{version.major}.{version.minor} {self.status} {self.reason}\r\n"]
        for name, value in headers.items():
            if "\n" in value or "\r" in value:
                raise ValueError(f"header {name} has a line break in its value")
            lines.append(f"{name}: {value}\r\n")
        if hdrs.DATE not in headers:
            lines.append(f"Date: {rfc822_formatted_time()}\r\n")
        lines.append(f"Content-Length: {len(self._json)}\r\n\r\n")
        head = "".join(lines).encode("latin-1")
        writer = self._payload_writer = request._payload_writer
        await writer.write_eof(head if self._must_be_empty_body else head + self._json)
        return writer  # the write_eof that aiohttp calls next finds it done
