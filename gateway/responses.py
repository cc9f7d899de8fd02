"""Writing message-list responses: small ones in one piece, large ones in slices.

Seed 000's wire puts each message's whole lineage in it, so a list grows with depth²:
the lineage at depth 1000 is 19.9 MB, 50 ms of encoding in one call, and 10,000
children of a deep message made 393 MB and held the loop 1.3 s. A list estimated
over `STREAM_BYTES` is therefore encoded about `SLICE_BYTES` at a time, a chunk each,
and written chunk by chunk (a cached body by views of it, never copied) with
backpressure: each `write` waits for the client to drain, and a client that has not
taken a chunk within the write timeout is cut. Slices (encoding or writing) take
turns node-wide, one per pass of the event loop (`Turns`): yielding alone was not
enough, as 4 clients looping on a depth-1000 lineage put 4 slices in every pass and
other clients' get_message p50 went 0.2 -> 35 ms.

Memory held for such responses is bounded per response (`max_response_bytes`: a
list estimated or encoded past it answers 413 with a hint, before anything is sent)
and per node (`budget_bytes` of large responses being encoded or sent at once: past
it a response waits for room, and answers 503 if none frees within the write
timeout). Small responses, the common case, pay for none of this.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice

import msgspec
from aiohttp import web

from engine.errors import CanopyError, Unavailable
from gateway.json_answer import JSON, JSONAnswer
from gateway.paging import Page
from persistence.records import Message

log = logging.getLogger(__name__)

STREAM_BYTES = 512 * 1024  # lists estimated over this are encoded and sent in slices
SLICE_BYTES = 256 * 1024  # encoded, or written, in one turn: about 0.5 ms
ESTIMATE_NODES = 2000  # nodes sized in one turn
_MESSAGE_BYTES = 320  # a message's keys, ids and timestamp, besides its variable parts
_ID_BYTES = 39  # one lineage entry: a quoted 36-character id and its comma

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

    def adjust(self, reserved: int, actual: int) -> int:
        """Count what a response turned out to hold instead of its estimate; `actual`."""
        self.in_flight += actual - reserved
        self._wake()
        return actual

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


class Turns:
    """Large-response work goes one slice per pass of the event loop, node-wide, in
    FIFO order: however many large responses are under way, each step of a small
    request waits for at most one slice."""

    def __init__(self) -> None:
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._scheduled = False

    async def take(self) -> None:
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._waiting.append(waiter)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._next)
        await waiter

    def _next(self) -> None:
        # The woken task runs in the next pass; so does this, waking the one after it.
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():  # a cancelled waiter passes its turn on
                waiter.set_result(None)
                break
        if self._waiting:
            asyncio.get_running_loop().call_soon(self._next)
        else:
            self._scheduled = False


def too_large(budget: ResponseBudget, nbytes: int) -> ResponseTooLarge:
    budget.too_large += 1
    return ResponseTooLarge(
        f"the response would be over {nbytes} bytes, past this node's limit of "
        f"{budget.limits.max_response_bytes} (max_response_bytes): ask for pages with "
        "?limit=N and then ?cursor= from the X-Next-Cursor header (the tree's next_cursor), "
        "or for ?compact=true, which leaves out each message's lineage"
    )


Chunks = list[bytearray]  # one response body, in the order written


def encode_now(listing: Listing) -> bytes:
    """The whole listing encoded in one go: for small ones."""
    return b"".join(_chunks(listing))


async def estimate(listing: Listing, turns: Turns) -> int:
    """About the encoded size, lineages included: a list's cost before it is paid.
    A long list is sized ESTIMATE_NODES at a time, a turn each."""
    sizes, total = listing.sizes(), len(listing.wrap[0]) + len(listing.wrap[1]) + 2
    for start in range(0, len(listing.nodes), ESTIMATE_NODES):
        if start:
            await turns.take()
        total += sum(islice(sizes, ESTIMATE_NODES))
    return total


async def encode_sliced(listing: Listing, budget: ResponseBudget, turns: Turns) -> Chunks:
    """The listing encoded a slice per turn; 413 as soon as it grows past the
    per-response limit."""
    chunks: Chunks = []
    size, limit = 0, budget.limits.max_response_bytes
    await turns.take()
    for chunk in _chunks(listing):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise too_large(budget, size)
        await turns.take()
    return chunks


def _chunks(listing: Listing) -> Iterator[bytearray]:
    """The listing encoded about SLICE_BYTES at a time, a chunk per slice. Each chunk is
    a buffer of its own: growing one buffer for a whole 20 MB list copied it over and
    over once the allocator kept such sizes off mmap, 20 ms at a time. The slices'
    arrays are spliced: the chunks join into exactly what encoding the list at once
    gives."""
    head, tail = listing.wrap
    nodes, render, sizes = listing.nodes, listing.render, listing.sizes()
    start, total = 0, len(nodes)
    if not total:
        yield bytearray(head + b"[]" + tail)
    while start < total:
        stop, size = start, 0
        while stop < total and size < SLICE_BYTES:
            size += next(sizes)
            stop += 1
        chunk = bytearray(head if start == 0 else b"")
        at = len(chunk)
        _encoder.encode_into([render(i) for i in range(start, stop)], chunk, at)
        if start:
            chunk[at] = 0x2C  # this slice's "[" becomes the separator ","
        if stop < total:
            del chunk[-1]  # and only the last slice's "]" closes the array
        else:
            chunk += tail
        start = stop
        yield chunk


class Sender:
    """Answers encoded bodies: small ones as they are, large ones streamed."""

    def __init__(self, budget: ResponseBudget) -> None:
        self.budget = budget
        self.turns = Turns()

    async def listing(
        self, request: web.Request, listing: Listing, headers: dict[str, str]
    ) -> tuple[web.StreamResponse, Sequence[bytes | bytearray]]:
        """Encode and send a listing; the response and the body it sent, in chunks."""
        limit = self.budget.limits.max_response_bytes
        size = await estimate(listing, self.turns)
        if size > limit:
            raise too_large(self.budget, size)
        if size <= STREAM_BYTES:
            body = encode_now(listing)
            if len(body) > limit:
                raise too_large(self.budget, len(body))
            return _whole(body, headers), (body,)
        await self.budget.reserve(size)
        reserved = size
        try:
            chunks = await encode_sliced(listing, self.budget, self.turns)
            reserved = self.budget.adjust(reserved, sum(map(len, chunks)))
            return await self._stream(request, chunks, headers), chunks
        finally:
            self.budget.release(reserved)

    async def body(
        self, request: web.Request, body: bytes, headers: dict[str, str]
    ) -> web.StreamResponse:
        """Send an encoded body (a cached one): by views of it, never copied."""
        if len(body) <= STREAM_BYTES:
            return _whole(body, headers)
        view = memoryview(body)
        views = [view[start : start + SLICE_BYTES] for start in range(0, len(body), SLICE_BYTES)]
        await self.budget.reserve(len(body))
        try:
            return await self._stream(request, views, headers)
        finally:
            self.budget.release(len(body))

    async def _stream(
        self,
        request: web.Request,
        chunks: Sequence[bytes | bytearray | memoryview],
        headers: dict[str, str],
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers=headers)
        response.content_type = JSON
        response.content_length = sum(map(len, chunks))
        timeout = self.budget.limits.write_timeout
        try:
            async with asyncio.timeout(timeout):
                await response.prepare(request)
            if request.method != "HEAD":
                for chunk in chunks:
                    # A write is work too: on loopback the kernel delivers it inside the
                    # send, and a fast reader never makes `write` wait.
                    await self.turns.take()
                    async with asyncio.timeout(timeout):
                        await response.write(chunk)
            self.budget.streamed += 1
        except TimeoutError:
            self.budget.cut += 1
            log.info("cut a client that read nothing for %.1f s: %s", timeout, request.path)
            if request.transport is not None:
                request.transport.abort()  # drops what the transport still buffers
        except ConnectionError:
            self.budget.gone += 1  # the client hung up: not an error
        return response


def _whole(body: bytes, headers: dict[str, str]) -> web.StreamResponse:
    answer = JSONAnswer(body)  # head and body in one write (gateway/json_answer.py)
    if headers:
        answer.headers.update(headers)
    return answer
