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
from aiohttp.helpers import must_be_empty_body, rfc822_formatted_time
from aiohttp.http import HttpVersion, HttpVersion10, HttpVersion11

JSON = "application/json"


async def drop_server_header(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: no `Server` header, so no versions revealed."""
    response.headers.popall(hdrs.SERVER, None)


# The status line and Content-Type of a plain HTTP/1.1 answer, by status: most answers
# carry no other header, and these lines are the same for every one of them.
_PLAIN_HEADS: dict[tuple[int, str], str] = {}


class JSONAnswer(web.StreamResponse):
    """`body` (encoded JSON) with `status`; headers may be set until it is sent."""

    def __init__(self, body: bytes, status: int = 200) -> None:
        super().__init__(status=status, headers={hdrs.CONTENT_TYPE: JSON})
        self._json = body

    @property
    def body(self) -> bytes:
        return self._json

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        """Sends the whole answer: aiohttp's `write_eof` after it finds it sent. Done here
        rather than in `_start`, under StreamResponse's own `prepare`, which then left
        aiohttp's `write_eof` a second pass through the writer (~2 µs an answer,
        in-process; docs/decisions.md)."""
        if self._eof_sent:
            return None
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
        if version == HttpVersion11 and len(headers) == 1 and headers[hdrs.CONTENT_TYPE] == JSON:
            head = _PLAIN_HEADS.get((self.status, self.reason)) or self._plain_head()
        else:
            head = self._head(version)
        if hdrs.DATE not in headers:
            head += f"Date: {rfc822_formatted_time()}\r\n"
        head += f"Content-Length: {len(self._json)}\r\n\r\n"
        empty = must_be_empty_body(request.method, self.status)
        data = head.encode("latin-1") if empty else head.encode("latin-1") + self._json
        writer = request._payload_writer
        await writer.write_eof(data)
        self._eof_sent = True
        self._req = None
        self._body_length = writer.output_size
        poke = getattr(request.protocol, "poke", None)  # an EdgeHandler's busy poll
        if poke is not None:  # the client's next request is likely soon
            poke()
        return None

    def _plain_head(self) -> str:
        head = _PLAIN_HEADS[self.status, self.reason] = (
            f"HTTP/1.1 {self.status} {self.reason}\r\n{hdrs.CONTENT_TYPE}: {JSON}\r\n"
        )
        return head

    def _head(self, version: HttpVersion) -> str:
        lines = [f"HTTP/{version.major}.{version.minor} {self.status} {self.reason}\r\n"]
        for name, value in self.headers.items():
            if "\n" in value or "\r" in value:
                raise ValueError(f"header {name} has a line break in its value")
            lines.append(f"{name}: {value}\r\n")
        return "".join(lines)
