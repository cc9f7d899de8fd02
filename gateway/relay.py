"""Relaying one request to another server as it came, and its answer back as it goes.

The primitive under a worker's handover (gateway/worker_peers.py) and HTTP forwarding
between nodes: method, path, query, headers and body unchanged but for the hop-by-hop
headers (RFC 9110 7.6.1), plus a hop header so the receiver never relays it again.
`Host` is passed as the client sent it: the receiver's allowed-hosts check
(gateway/guards.py) must judge the client's host, not the relay's. The body is streamed
both ways, never buffered whole.

The session should be made with `auto_decompress=False` (the answer's bytes go back as
they were encoded); an `aiohttp.UnixConnector` session relays to a Unix socket.
"""

from __future__ import annotations

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict, CIMultiDictProxy

HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        hdrs.CONNECTION, hdrs.KEEP_ALIVE, hdrs.TRANSFER_ENCODING, hdrs.TE, hdrs.UPGRADE,
        hdrs.PROXY_AUTHENTICATE, hdrs.PROXY_AUTHORIZATION, hdrs.TRAILER,
    )
)  # fmt: skip
CHUNK = 64 * 1024


def _forwarded(headers: CIMultiDictProxy[str], drop: frozenset[str]) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        if name.lower() not in drop:
            out.add(name, value)
    return out


def request_headers(request: web.BaseRequest, hop_header: str) -> CIMultiDict[str]:
    headers = _forwarded(request.headers, HOP_BY_HOP)
    if hdrs.CONTENT_ENCODING in headers:
        # aiohttp's parser decoded the body already: send it as it now is
        del headers[hdrs.CONTENT_ENCODING]
        headers.popall(hdrs.CONTENT_LENGTH, None)
    headers[hop_header] = "1"
    return headers


async def relay(
    request: web.Request, session: aiohttp.ClientSession, base_url: str, *, hop_header: str
) -> web.StreamResponse:
    """Send `request` to `base_url` (scheme and authority; the path and query are the
    request's) and stream the answer back to its client."""
    headers = request_headers(request, hop_header)
    if headers.get(hdrs.EXPECT, "").lower() == "100-continue":
        # answered here, as aiohttp would before a handler reads the body
        del headers[hdrs.EXPECT]
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    body = request.content.iter_chunked(CHUNK) if request.body_exists else None
    async with session.request(
        request.method,
        base_url + request.rel_url.raw_path_qs,
        headers=headers,
        data=body,
        allow_redirects=False,
        skip_auto_headers=(hdrs.USER_AGENT, hdrs.ACCEPT, hdrs.ACCEPT_ENCODING, hdrs.CONTENT_TYPE),
    ) as upstream:
        response = web.StreamResponse(
            status=upstream.status,
            reason=upstream.reason,
            headers=_forwarded(upstream.headers, HOP_BY_HOP),
        )
        await response.prepare(request)
        try:
            async for chunk in upstream.content.iter_chunked(CHUNK):
                await response.write(chunk)
        except aiohttp.ClientError as exc:  # the answer is under way: cut the connection
            raise ConnectionResetError(f"relayed answer cut short: {exc}") from exc
        await response.write_eof()
        return response
