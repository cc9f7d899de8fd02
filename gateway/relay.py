"""Relaying one request to another server as it came, and its answer back as it goes.

The one relay under a worker's handover (gateway/worker_peers.py) and HTTP forwarding
between nodes (gateway/forwarding.py), over a peer's pooled connections
(gateway/peer_http.py): method, target, headers and body unchanged but for the
hop-by-hop headers (RFC 9110 7.6.1), plus a hop header so the receiver never relays it
again. `Host` is passed as the client sent it: the receiver's allowed-hosts check
(gateway/guards.py) must judge the client's host, not the relay's. A small body is sent
and answered in one write each; a large one is streamed both ways, never buffered whole.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import HttpVersion11
from multidict import CIMultiDict

from gateway.peer_http import Answer, PeerPool, PeerUnavailable

HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        hdrs.CONNECTION, hdrs.KEEP_ALIVE, hdrs.TRANSFER_ENCODING, hdrs.TE, hdrs.UPGRADE,
        hdrs.PROXY_AUTHENTICATE, hdrs.PROXY_AUTHORIZATION, hdrs.TRAILER,
    )
)  # fmt: skip
_NOT_SENT = frozenset({*HOP_BY_HOP, "expect", "content-length", "content-encoding"})
_NOT_SENT_BYTES = frozenset(h.encode() for h in _NOT_SENT)
_NOT_ANSWERED = frozenset({*HOP_BY_HOP, "content-length"})  # aiohttp frames the answer
CHUNK = 64 * 1024
WHOLE = 64 * 1024  # a body up to this size is read at once, larger ones streamed


def request_head(
    request: web.BaseRequest,
    hop_header: str,
    extra: Mapping[str, str] | None = None,
    *,
    get: str | None = None,
) -> tuple[bytes, bool]:
    """The request's head as the peer is to get it, and whether its body goes chunked
    (a length unknown, or a body aiohttp decoded: it goes on as it now is). With `get`,
    a GET of that path and query instead, with the request's headers and no body."""
    if get is None:
        line = b"%s %s HTTP/1.1\r\n" % (request.method.encode(), request.raw_path.encode())
    else:
        line = b"GET %s HTTP/1.1\r\n" % get.encode()
    parts = [line]
    ours = {hop_header.lower().encode(), *(n.lower().encode() for n in extra or ())}
    for name, value in request.raw_headers:
        lowered = name.lower()
        if lowered not in _NOT_SENT_BYTES and lowered not in ours:  # ours are set below
            parts += (name, b": ", value, b"\r\n")
    parts.append(b"%s: 1\r\n" % hop_header.encode())
    for key, text in (extra or {}).items():
        parts.append(f"{key}: {text}\r\n".encode("latin-1"))
    chunked = False
    if request.body_exists and get is None:
        length = request.content_length
        if length is None or hdrs.CONTENT_ENCODING in request.headers:
            chunked = True
            parts.append(b"Transfer-Encoding: chunked\r\n")
        else:
            parts.append(b"Content-Length: %d\r\n" % length)
    parts.append(b"\r\n")
    return b"".join(parts), chunked


async def send(
    request: web.BaseRequest,
    pool: PeerPool,
    *,
    hop_header: str,
    extra: Mapping[str, str] | None = None,
    body: bytes | None = None,
) -> Answer:
    """Send `request` to the pool's peer (with `body` when the caller read it already)
    and return the answer's head; PeerUnavailable if none came."""
    head, chunked = request_head(request, hop_header, extra)
    await continue_if_expected(request)
    if body is None and request.body_exists:
        body = request.get(BODY_READ)
        length = request.content_length
        if body is None and not chunked and length is not None and length <= WHOLE:
            body = await whole_body(request)
        elif body is None:
            return await pool.request(head, _framed(request, chunked), method=request.method)
    if body is not None and chunked:  # read whole already, framed as the head says
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body) if body else b"0\r\n\r\n"
    return await pool.request(head, body, method=request.method)


# A body already taken from the request's stream, which is left empty: by a handler's
# read_limited (gateway/guards.py), or by a connection move that did not happen
# (gateway/migration.py). A relay after it sends this.
BODY_READ = web.RequestKey("body_read", bytes)


async def whole_body(request: web.BaseRequest) -> bytes | None:
    """The request's whole body: one taken already (BODY_READ), or one all arrived taken
    without awaiting (two `readany`s and a copy were a tenth of a forwarded append's
    CPU), or else read to its end."""
    if not request.body_exists:
        return None
    taken: bytes | None = request.get(BODY_READ)
    if taken is not None:
        return taken
    if request.content.is_eof():
        arrived: bytes = request.content.read_nowait()
        return arrived
    return await request.read()


async def continue_if_expected(request: web.BaseRequest) -> None:
    """Answer `Expect: 100-continue` once, before the body is read (the client waits for
    it to send the body), as aiohttp would before a handler; the peer gets no Expect."""
    if request.headers.get(hdrs.EXPECT, "").lower() == "100-continue" and not request.get(
        _CONTINUED
    ):
        request[_CONTINUED] = True
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")


_CONTINUED = web.RequestKey("continue_sent", bool)


async def _framed(request: web.BaseRequest, chunked: bool) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_chunked(CHUNK):
        yield b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk
    if chunked:
        yield b"0\r\n\r\n"


class AnswerAsIs(web.StreamResponse):
    """A peer's whole answer, head and body, written to the client as the peer sent it.

    Rebuilding it as a `web.Response` (a header multidict, `prepare`, the response
    signals, the headers serialized again) is work the owner did already
    (docs/decisions.md has what it saves). The owner built the head for this
    very request already: its CORS headers, `X-Canopy-Node`, no `Server`, the body's
    length. `_passes_as_is` keeps the cases where the head would differ on the
    regular path."""

    def __init__(self, status: int, data: bytes) -> None:
        super().__init__(status=status)
        self._data = data

    async def _start(self, request: web.BaseRequest) -> AbstractStreamWriter:
        self._req = request
        self._keep_alive = True  # _passes_as_is: the client's connection stays open
        writer = self._payload_writer = request._payload_writer
        await writer.write_eof(self._data)  # one write; write_eof after it is a no-op
        return writer


def _passes_as_is(request: web.BaseRequest, answer: Answer) -> bool:
    """Whether the peer's head is what this node would send the client: an HTTP/1.1
    keep-alive exchange on both sides and no hop-by-hop header in the answer (the
    client's Connection header never reached the peer)."""
    if request.version != HttpVersion11 or not request.keep_alive:
        return False
    if not answer.keeps_connection:
        return False
    return not any(name.lower() in HOP_BY_HOP for name, _ in answer.headers)


async def pass_through(request: web.BaseRequest, answer: Answer) -> web.StreamResponse:
    """The peer's answer to the client: a small body in one write, a large one (or one
    of unknown length) chunk by chunk as it arrives."""
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in answer.headers:
        if name.lower() not in _NOT_ANSWERED:
            headers.add(name, value)
    length = answer.length
    if length is not None and length <= WHOLE:
        try:
            body = await answer.read()
        except OSError as exc:  # nothing sent to the client yet: the caller's 503
            raise PeerUnavailable(f"the answer was cut short: {exc}") from exc
        if _passes_as_is(request, answer):
            return AnswerAsIs(answer.status, answer.head + body)
        return web.Response(status=answer.status, reason=answer.reason, body=body,
                            headers=headers)  # fmt: skip
    response = web.StreamResponse(status=answer.status, reason=answer.reason, headers=headers)
    if length is not None:
        response.content_length = length
    try:
        await response.prepare(request)
        try:
            async for chunk in answer.chunks():
                await response.write(chunk)
        except OSError as exc:  # the answer is under way: cut the client's connection
            raise ConnectionResetError(f"relayed answer cut short: {exc}") from exc
        await response.write_eof()
    finally:
        answer.release()  # closed unless read whole (then already back in the pool)
    return response


async def relay(
    request: web.BaseRequest,
    pool: PeerPool,
    *,
    hop_header: str,
    extra: Mapping[str, str] | None = None,
) -> web.StreamResponse:
    """Send `request` to the pool's peer and stream the answer back to its client."""
    answer = await send(request, pool, hop_header=hop_header, extra=extra)
    return await pass_through(request, answer)
