"""Writing message-list responses: small ones in one piece, large ones in slices.

Seed 000's wire puts each message's whole lineage in it, so a list grows with depth²:
the lineage at depth 1000 is 19.9 MB, 50 ms of encoding in one call, and 10,000
children of a deep message made 393 MB and held the loop 1.3 s. A list estimated
over `STREAM_BYTES` is therefore encoded about `SLICE_BYTES` at a time into one
growing buffer, yielding to the loop between slices, and written by slices of it
(never copied) with backpressure: each `write` waits for the client to drain, and a
client that has not taken a slice within the write timeout is cut.

Memory held for such responses is bounded per response (`max_response_bytes`: a
list estimated or encoded past it answers 413 with a hint, before anything is sent)
and per node (`budget_bytes` of large responses being encoded or sent at once: past
it a response waits for room, and answers 503 if none frees within the write
timeout). Small responses, the common case, pay for none of this.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import msgspec
from aiohttp import web

from engine.errors import CanopyError, Unavailable
from gateway.paging import Page
from persistence.records import Message

log = logging.getLogger(__name__)

STREAM_BYTES = 1024 * 1024  # lists estimated over this are encoded and sent in slices
SLICE_BYTES = 1024 * 1024  # encoded between two yields to the loop: about 2 ms
WRITE_BYTES = 256 * 1024  # one write, awaited until the client drained it
_MESSAGE_BYTES = 320  # a message's keys, ids and timestamp, besides its variable parts
_ID_BYTES = 39  # one lineage entry: a quoted 36-character id and its comma
_JSON = "application/json"

_encoder = msgspec.json.Encoder()


class ResponseTooLarge(CanopyError):
    status = 413
    code = "response_too_large"


@dataclass(frozen=True)
class ResponseLimits:
    max_response_bytes: int  # one response; 413 past it
    budget_bytes: int  # large responses in flight, node-wide
    write_timeout: float  # seconds a client may take to drain one write


@dataclass
class Listing:
    """A message list to answer: seed 000's array, or the tree object around it."""

    nodes: Sequence[Message]  # a snapshot: appends meanwhile do not change it
    render: Callable[[int], msgspec.Struct]  # the i-th node as it goes on the wire
    page: Page
    next_cursor: str | None = None
    wrap: tuple[bytes, bytes] = (b"", b"")  # bytes before and after the array

    def estimate(self) -> int:
        """About the encoded size, lineages included: a list's cost before it is paid."""
        return sum(self.sizes()) + len(self.wrap[0]) + len(self.wrap[1]) + 2

    def sizes(self) -> Iterator[int]:
        """Each node's estimated encoded size, in order."""
        lineage = 0 if self.page.compact else _ID_BYTES
        for node in self.nodes:
            metadata = node.content_metadata
            extra = sum(len(k) + len(v) + 6 for k, v in metadata.items()) if metadata else 0
            yield (
                _MESSAGE_BYTES
                + len(node.content)
                + len(node.created_by)
                + extra
                + (lineage * node.depth)
            )


class ResponseBudget:
    """Bytes of large responses being encoded or sent at once, node-wide, and counters."""

    def __init__(self, limits: ResponseLimits) -> None:
        self.limits = limits
        self.in_flight = 0
        self.streamed = 0  # large responses sent whole
        self.too_large = 0  # answered 413
        self.refused = 0  # answered 503: no room within the write timeout
        self.cut = 0  # clients that stopped reading, cut after the write timeout
        self.gone = 0  # clients that hung up mid-response
        self._waiters: list[asyncio.Future[None]] = []

    def stats(self) -> dict[str, int]:
        return {
            "in_flight_bytes": self.in_flight,
            "budget_bytes": self.limits.budget_bytes,
            "streamed": self.streamed,
            "too_large": self.too_large,
            "refused": self.refused,
            "cut": self.cut,
            "gone": self.gone,
        }

    async def reserve(self, nbytes: int) -> None:
        """Wait for room for `nbytes` (always room when nothing is in flight); 503 if
        none frees within the write timeout, the longest a stalled client holds any."""
        try:
            async with asyncio.timeout(self.limits.write_timeout):
                await self.until(lambda: self._fits(nbytes))
        except TimeoutError:
            self.refused += 1
            log.info("refused a response of about %d bytes: %d in flight", nbytes, self.in_flight)
            raise Unavailable("too many large responses in flight", retry_after=1) from None
        self.in_flight += nbytes

    def adjust(self, reserved: int, actual: int) -> None:
        """Count what a response turned out to hold instead of its estimate."""
        self.in_flight += actual - reserved
        self._wake()

    def release(self, nbytes: int) -> None:
        self.in_flight -= nbytes
        self._wake()

    async def until(self, condition: Callable[[], bool]) -> None:
        """Wait until `condition` holds, re-checked whenever the budget changes."""
        while not condition():
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter

    def _fits(self, nbytes: int) -> bool:
        return self.in_flight == 0 or self.in_flight + nbytes <= self.limits.budget_bytes

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


def too_large(budget: ResponseBudget, nbytes: int) -> ResponseTooLarge:
    budget.too_large += 1
    return ResponseTooLarge(
        f"the response would be over {nbytes} bytes, past this node's limit of "
        f"{budget.limits.max_response_bytes} (max_response_bytes): ask for pages with "
        "?limit=N and then ?cursor= from the X-Next-Cursor header (the tree's next_cursor), "
        "or for ?compact=true, which leaves out each message's lineage"
    )


def encode_now(listing: Listing) -> bytearray:
    """The whole listing encoded in one go: for small ones."""
    body = bytearray()
    for _ in _slices(listing, body):
        pass
    return body


async def encode_sliced(listing: Listing, budget: ResponseBudget) -> bytearray:
    """The listing encoded a slice at a time, yielding to the loop between slices; 413
    as soon as it grows past the per-response limit."""
    body = bytearray()
    limit = budget.limits.max_response_bytes
    for _ in _slices(listing, body):
        if len(body) > limit:
            raise too_large(budget, len(body))
        await asyncio.sleep(0)
    return body


def _slices(listing: Listing, body: bytearray) -> Iterator[None]:
    """Encode the listing into `body` about SLICE_BYTES at a time; yields after each
    slice but the last. The slices' arrays are spliced into one: byte for byte what
    encoding the whole list at once gives."""
    head, tail = listing.wrap
    body += head
    nodes, render = listing.nodes, listing.render
    sizes = listing.sizes()
    start, total = 0, len(nodes)
    if not total:
        body += b"[]"
    while start < total:
        stop, size = start, 0
        while stop < total and size < SLICE_BYTES:
            size += next(sizes)
            stop += 1
        at = len(body) if start == 0 else len(body) - 1  # over the previous slice's "]"
        _encoder.encode_into([render(i) for i in range(start, stop)], body, at)
        if start:
            body[at] = 0x2C  # this slice's "[" becomes the separator ","
        start = stop
        if start < total:
            yield
    body += tail


class Sender:
    """Answers encoded bodies: small ones as they are, large ones streamed."""

    def __init__(self, budget: ResponseBudget) -> None:
        self.budget = budget

    async def listing(
        self, request: web.Request, listing: Listing, headers: dict[str, str]
    ) -> tuple[web.StreamResponse, bytes | bytearray]:
        """Encode and send a listing; the response and the body it sent."""
        estimate, limit = listing.estimate(), self.budget.limits.max_response_bytes
        if estimate > limit:
            raise too_large(self.budget, estimate)
        if estimate <= STREAM_BYTES:
            body = encode_now(listing)
            if len(body) > limit:
                raise too_large(self.budget, len(body))
            return _whole(body, headers), body
        await self.budget.reserve(estimate)
        reserved = estimate
        try:
            body = await encode_sliced(listing, self.budget)
            self.budget.adjust(reserved, len(body))
            reserved = len(body)
            return await self._stream(request, body, headers), body
        finally:
            self.budget.release(reserved)

    async def body(
        self, request: web.Request, body: bytes, headers: dict[str, str]
    ) -> web.StreamResponse:
        """Send an encoded body (a cached one): sliced by views, never copied."""
        if len(body) <= STREAM_BYTES:
            return _whole(body, headers)
        await self.budget.reserve(len(body))
        try:
            return await self._stream(request, body, headers)
        finally:
            self.budget.release(len(body))

    async def _stream(
        self, request: web.Request, body: bytes | bytearray, headers: dict[str, str]
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers=headers)
        response.content_type = _JSON
        response.content_length = len(body)
        timeout = self.budget.limits.write_timeout
        try:
            async with asyncio.timeout(timeout):
                await response.prepare(request)
            if request.method != "HEAD":
                view = memoryview(body)
                for start in range(0, len(body), WRITE_BYTES):
                    async with asyncio.timeout(timeout):
                        await response.write(view[start : start + WRITE_BYTES])
            self.budget.streamed += 1
        except TimeoutError:
            self.budget.cut += 1
            log.info("cut a client that read nothing for %.1f s: %s", timeout, request.path)
            if request.transport is not None:
                request.transport.abort()  # drops what the transport still buffers
        except ConnectionError:
            self.budget.gone += 1  # the client hung up: not an error
        return response


def _whole(body: bytes | bytearray, headers: dict[str, str]) -> web.Response:
    return web.Response(body=body, content_type=_JSON, headers=headers or None)
