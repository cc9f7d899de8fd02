"""Forwarding: a cluster node relays a request for a conversation it does not own to the
owner, so any node gives the owner's answer.

Who owns a conversation: the node that holds it hot (and its lease) serves it without
any lookup; otherwise the placement target (rendezvous over the live nodes), except
that a live node already holding the lease stays the owner until it lets go (the target
asks Redis for the holder before activating it: one GET per activation, none after).
The relayed request is the client's, method, path, query, headers and body unchanged,
plus `X-Canopy-Hop: 1`: a request that has hopped once is served where it arrived, or
answered 421 `not_owner` (with `X-Canopy-Owner`, the node the answering one believes
owns it) when that node cannot; the sender re-resolves with that hint (twice at most:
during a move the second answer may come from the old owner that let go meanwhile).
Nodes whose views of the members differ (a leave or join is read at each one's next
heartbeat) can name each other round and round: the sender then waits for its view to
change, a heartbeat at most, and asks afresh, a few times before it gives up with a 503
and `Retry-After`. A retry names the node that answered
not_owner (`X-Canopy-Named-By`): a node whose view still deems that one the owner (its
membership lags a leave by up to a heartbeat) serves the request rather than sending
it back. Authentication is the owner's: relaying comes before
the middleware chain. Every conversation response names its owner in `X-Canopy-Node`.

Moves (engine/rebalance.py): a request for a conversation this node is handing over
waits for the move to end, then goes to the new owner; a not_owner answer that names
this node (the old owner has let go meanwhile) is served here, not refused. A leaving
node never serves a conversation it no longer holds (it would hold it again when it
stops answering, and its peers' requests for it would fail there): it names the new
owner, and its own relays carry its name in `X-Canopy-Named-By`, so a peer whose view
has not read the leave yet serves the request rather than sending it back.

A creation picks its conversation id on the receiving node and goes to that id's
placement target (`X-Canopy-Conversation-Id`, honoured only with the hop header, and
only for an id never acquired before), so placement and the creator's lease agree.

Connections: one pool of keep-alive connections per peer node (gateway/peer_http.py),
kept while the node is live; the relaying itself is gateway/relay.py's, the one relay
`--workers N` uses too. Large responses stream through chunk by chunk, never whole.

Listings: a user's listing on any node asks every live peer for its unflushed entries
for that user (`GET /internal/v1/hot-listing/{user}`, msgpack, the cluster's token in
`X-Canopy-Cluster-Token`) and merges them (engine/peer_listing.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import quote, unquote

from aiohttp import hdrs, web
from aiohttp.streams import StreamReader
from aiohttp.web_urldispatcher import UrlMappingMatchInfo

from engine import peer_listing
from engine.ids import new_id
from engine.peer_listing import HotEntries
from engine.rebalance import Rebalancer
from engine.sidebar import cursor_maker
from gateway.cluster_member import ClusterMember
from gateway.errors import HELD_BY, RELAYS_HELD, count_held, error_response
from gateway.peer_http import PeerPool, PeerUnavailable, PeerUnreachable
from gateway.relay import continue_if_expected, pass_through, send, whole_body
from persistence.background import Throttled

log = logging.getLogger(__name__)
throttled = Throttled(log)

HOP = "X-Canopy-Hop"
NODE = "X-Canopy-Node"  # on every conversation response: the node that answered it
OWNER = "X-Canopy-Owner"  # on a 421 not_owner: who the answering node believes owns it
OWNER_URL = "X-Canopy-Owner-Url"  # and where it answers: the asker may not know it yet
ASSIGNED_ID = "X-Canopy-Conversation-Id"  # a creation's id, picked by the node it reached
NAMED_BY = "X-Canopy-Named-By"  # on a retry after not_owner: the node that answered it
ASSIGNED = web.RequestKey("assigned_conversation_id", str)  # for the creation route
CREATION = "/api/v1/conversations"
HOT_LISTING = "/internal/v1/hot-listing/"  # + user id: this node's unflushed entries
TOKEN = "X-Canopy-Cluster-Token"
NOT_OWNER = 421
# Owners asked per request: a stale answer re-resolves, and during a move the answer
# after it may be the old owner's, which let go meanwhile (engine/rebalance.py).
ASKS = 3
# Rounds of asks after the first, each once this node's view changed or a heartbeat
# passed: by then a leave or join has reached the node that named the wrong owner.
SETTLE_ROUNDS = 3
HINTS = 10_000  # conversations whose owner a stale answer named, remembered (LRU)


class Forwarder:
    """This node's side of forwarding; an async context manager (closes its sessions)."""

    def __init__(
        self,
        member: ClusterMember,
        serves: Callable[[str], bool],
        hot_entries: Callable[[str], HotEntries],
        *,
        connect_timeout: float = 1.0,
        read_timeout: float = 60.0,
        connections_per_node: int = 256,
        moves: Rebalancer | None = None,
        settle_seconds: float = 0.5,
    ) -> None:
        assert member.directory is not None, "forwarding is for cluster members"
        self._member = member
        self._node_id = member.node_id
        self._serves = serves  # hot here and its lease held: no lookup at all
        self._hot_entries = hot_entries
        self._moves = moves
        self._connect_timeout = connect_timeout  # and a peer's whole listing answer
        self._read_timeout = read_timeout
        self._per_node = connections_per_node  # idle connections kept per peer
        self._settle_seconds = settle_seconds  # a heartbeat: views differ this long
        self._view = 0  # counts this node's changes of the live members
        self._view_changed: asyncio.Future[None] | None = None  # awaited by a settle
        self._sessions: dict[str, PeerPool] = {}  # by node URL
        self._urls: dict[str, str] = {}  # live node id -> URL
        self._departed: set[str] = set()  # nodes seen live that are not any more
        self._leaving: set[str] = set()  # live nodes handing their conversations over
        self._hints: OrderedDict[str, str] = OrderedDict()  # conversation -> owner named
        member.membership.watch(self._members_changed)
        self._members_changed(frozenset())
        self.forwarded = 0
        self.forward_failures = 0
        self.stale_retries = 0  # re-resolutions after a not_owner answer
        self.settle_waits = 0  # rounds of not_owner answers ended by waiting for views
        self.not_owner = 0  # not_owner answers this node gave
        self.held_elsewhere = 0  # served by the node whose lease kept this one from it
        self.listing_calls = 0  # peers asked for their hot entries
        self.listing_failures = 0  # peers that did not answer (their entries missing)

    async def __aenter__(self) -> Forwarder:
        return self

    async def __aexit__(self, *exc: object) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            session.close()

    def stats(self) -> dict[str, Any]:
        return {
            "forwarded": self.forwarded,
            "forward_failures": self.forward_failures,
            "stale_retries": self.stale_retries,
            "settle_waits": self.settle_waits,
            "not_owner_answers": self.not_owner,
            "held_elsewhere": self.held_elsewhere,
            "listing_calls": self.listing_calls,
            "listing_failures": self.listing_failures,
            "peer_sessions": len(self._sessions),
        }

    # -- what the dispatcher asks --------------------------------------------------------

    async def route(
        self, request: web.Request, match: UrlMappingMatchInfo
    ) -> web.StreamResponse | None:
        """The owner's answer if another node owns the request's conversation; None to
        serve it here."""
        conversation_id = match.get("conversation_id")
        if conversation_id is None:
            if request.rel_url.path == CREATION:
                if request.method == hdrs.METH_POST:
                    return await self._creation(request)
                return await self._page_of(request)
            return None  # listings: answered here (engine/listing.py)
        if self._moves is not None and self._moves.moving(conversation_id):
            await self._moves.wait(conversation_id)  # then the new owner answers
            if self._serves(conversation_id):
                return None  # the move kept it here (its flush failed)
        elif self._serves(conversation_id):
            return None
        owner = await self._owner(conversation_id)
        if owner == self._node_id:
            return None
        if self._hopped(request):
            if request.headers.get(NAMED_BY) == owner and not self._left():
                return None  # who this node deems the owner let go and named it: it is newer
            # A leaving node never takes a conversation up again: it would hold it when
            # it stops answering (the sender asks the node named with this one's name).
            return self._not_owner(owner)
        return await self._relay(request, conversation_id, owner)

    def _left(self) -> bool:
        """Whether this node is leaving: marked so, it hands everything over."""
        return self._node_id in self._leaving

    async def serve_here(
        self,
        request: web.Request,
        match: UrlMappingMatchInfo,
        chain: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        """Serve the request here (`route` said so), counted while a move may wait on it."""
        conversation_id = match.get("conversation_id")
        if conversation_id is None:
            return await chain(request)
        request[RELAYS_HELD] = True
        if self._moves is None:
            response = await chain(request)
        else:
            with self._moves.serving(conversation_id):
                response = await chain(request)
        holder = request.get(HELD_BY)
        if holder is None or holder == self._node_id:
            count_held(request)
            return response
        # Another live node took the lease while this one deemed itself the owner (their
        # views of the members differ for up to a heartbeat, e.g. as a node joins): that
        # node serves it. Nothing was done here: the lease comes before any change. The
        # 503 is counted only if it is the answer (the holder counts what it answers).
        url = self._urls.get(holder)
        if url is None:
            try:
                url = await self._member.membership.url_of(holder)
            except Exception as exc:  # noqa: BLE001 - Redis unreachable: the 503 stands
                throttled.warning("holder", "looking up %s failed: %s", holder, exc)
            if url is None:
                count_held(request)
                return response
        self.held_elsewhere += 1
        self._hint(conversation_id, holder)
        if self._hopped(request):
            return self._not_owner(holder, url)  # the sender asks it (within its asks)
        request[_NAMED_URL] = url
        relayed = await self._relay(request, conversation_id, holder)
        if relayed is None:
            count_held(request)
            return response
        return relayed

    # -- listings across nodes ------------------------------------------------------------

    async def _page_of(self, request: web.Request) -> web.StreamResponse | None:
        """A sidebar page after the first goes to the node that pinned its cursor (its
        order is that node's moment: elsewhere the cursor would be expired); a first
        page, or one whose node is gone, is answered here."""
        cursor = request.query.get("cursor")
        if not cursor or self._hopped(request) or request.method != hdrs.METH_GET:
            return None
        maker = cursor_maker(cursor)
        url = self._urls.get(maker) if maker != self._node_id else None
        if url is None:
            return None  # gone: its cursor is expired here, the client lists again
        try:
            answer = await self._send(request, url, None, None)
        except PeerUnavailable as exc:
            throttled.warning("forward", "relaying a sidebar page to %s failed: %s", maker, exc)
            return None
        if answer is not None:
            self.forwarded += 1
        return answer

    async def internal(self, request: web.Request) -> web.StreamResponse:
        """A peer's call (the dispatcher sends /internal/ here, before any middleware)."""
        if not hmac.compare_digest(request.headers.get(TOKEN, ""), self._member.token):
            return error_response(403, "forbidden", "cluster-internal route")
        path = request.rel_url.raw_path
        if request.method != hdrs.METH_GET or not path.startswith(HOT_LISTING):
            return error_response(404, "not_found", "no such internal route")
        user_id = unquote(path[len(HOT_LISTING) :])
        body = peer_listing.encode(self._hot_entries(user_id))
        return web.Response(body=body, content_type="application/msgpack")

    async def peer_entries(self, user_id: str) -> Sequence[HotEntries]:
        """Every live peer's unflushed entries for the user, asked in parallel; a peer
        that does not answer within the connect timeout is left out (and counted)."""
        peers = [url for node, url in self._urls.items() if node != self._node_id]
        if not peers:
            return ()
        path = HOT_LISTING + quote(user_id, safe="")
        answers = await asyncio.gather(
            *(self._peer_entries(url + path) for url in peers), return_exceptions=True
        )
        found = []
        for answer in answers:
            if isinstance(answer, HotEntries):
                found.append(answer)
            else:
                self.listing_failures += 1
                throttled.warning("listing", "a peer's hot listing is missing: %s", answer)
        return found

    async def _peer_entries(self, url: str) -> HotEntries:
        self.listing_calls += 1
        base, path = url.split("/internal/", 1)
        session = self._session(base)
        head = f"GET /internal/{path} HTTP/1.1\r\nHost: {base.split('://', 1)[-1]}\r\n"
        head += f"{TOKEN}: {self._member.token}\r\n\r\n"
        async with asyncio.timeout(self._connect_timeout):
            answer = await session.request(head.encode("latin-1"), None, method=hdrs.METH_GET)
            body = await answer.read()
        if answer.status != 200:
            raise PeerUnavailable(f"{url} answered {answer.status}")
        return peer_listing.decode(body)

    # -- ownership -----------------------------------------------------------------------

    async def _owner(self, conversation_id: str) -> str:
        target = self._member.placement.owner_of(conversation_id)
        if target != self._node_id:
            hint = self._hints.get(conversation_id)
            return hint if hint is not None and hint in self._urls else target
        # Placed here: Redis says who holds it, not a hint. A hint named the holder that
        # kept it from this node; once that one let go, the hint would send every
        # request back to it, and it took the conversation up again (a join's move).
        self._hints.pop(conversation_id, None)
        directory = self._member.directory
        assert directory is not None
        try:
            holder = await directory.holder(conversation_id)
        except Exception as exc:  # noqa: BLE001 - Redis unreachable: activation will say
            throttled.warning("holder", "lease lookup failed: %s", exc)
            return self._node_id
        if holder is not None and holder != self._node_id and holder in self._urls:
            return holder  # a live node holds it: it stays the owner until it lets go
        return self._node_id

    async def _other_holder(self, conversation_id: str) -> str | None:
        """Another live node holding the lease that is not leaving (one letting go
        releases it in a moment), if any; None also when Redis does not say."""
        directory = self._member.directory
        assert directory is not None
        try:
            holder = await directory.holder(conversation_id)
        except Exception as exc:  # noqa: BLE001 - the activation here will say
            throttled.warning("holder", "lease lookup failed: %s", exc)
            return None
        if holder is None or holder == self._node_id or holder in self._leaving:
            return None
        return holder if holder in self._urls else None

    def _hopped(self, request: web.Request) -> bool:
        """Whether another node relayed the request here. The hop header alone is not
        trusted: a client sending it (and X-Canopy-Named-By, or a creation's id) would
        pick where its request is served; a peer's relay carries the cluster token."""
        return HOP in request.headers and hmac.compare_digest(
            request.headers.get(TOKEN, ""), self._member.token
        )

    def _members_changed(self, _: frozenset[str]) -> None:
        live = self._member.membership.live()
        self._leaving = {m.node_id for m in live if m.leaving}
        urls = {m.node_id: m.url for m in live}
        # Seen leave: a not_owner answer naming one (a peer that has not noticed yet)
        # must not send a request to its open sockets, where it would wait for the
        # read timeout. A node never seen may have joined a moment ago: asked by URL.
        self._departed = (self._departed | (self._urls.keys() - urls.keys())) - urls.keys()
        self._urls = urls
        self._hints.clear()  # placement moved: what a stale answer named may be wrong now
        self._view += 1
        changed, self._view_changed = self._view_changed, None
        if changed is not None and not changed.done():
            changed.set_result(None)
        # A node declared dead may be paused, its sockets open: end what waits on it now
        # (a 503 its client retries, to the new owner) rather than at the read timeout.
        answering = set(self._urls.values())
        for url in [url for url in self._sessions if url not in answering]:
            self._sessions.pop(url).close()

    def _not_owner(self, owner: str, url: str | None = None) -> web.StreamResponse:
        self.not_owner += 1
        response = error_response(
            NOT_OWNER, "not_owner", f"this node does not own the conversation; {owner} does"
        )
        response.headers[OWNER] = owner
        url = url or self._urls.get(owner)
        if url is not None:  # a node that joined a moment ago may be unknown to the asker
            response.headers[OWNER_URL] = url
        return response

    def _hint(self, conversation_id: str, owner: str) -> None:
        self._hints[conversation_id] = owner
        self._hints.move_to_end(conversation_id)
        if len(self._hints) > HINTS:
            self._hints.popitem(last=False)

    # -- creation ------------------------------------------------------------------------

    async def _creation(self, request: web.Request) -> web.StreamResponse | None:
        if self._hopped(request):
            assigned = request.headers.get(ASSIGNED_ID)
            if assigned is not None:
                try:
                    request[ASSIGNED] = str(uuid.UUID(assigned))
                except ValueError:
                    return error_response(400, "bad_request", f"{ASSIGNED_ID} is not a UUID")
            return None
        conversation_id = new_id()
        owner = self._member.placement.owner_of(conversation_id)
        if owner == self._node_id:
            request[ASSIGNED] = conversation_id
            return None
        relayed = await self._relay(request, conversation_id, owner, {ASSIGNED_ID: conversation_id})
        if relayed is None:
            request[ASSIGNED] = conversation_id
        return relayed

    # -- relaying ------------------------------------------------------------------------

    async def _relay(
        self,
        request: web.Request,
        conversation_id: str,
        owner: str,
        extra: dict[str, str] | None = None,
    ) -> web.StreamResponse | None:
        """The owner's answer; None to serve the request here (an owner that let go
        named this node)."""
        await continue_if_expected(request)  # before the body is read: the client waits
        body = await whole_body(request)  # sent ASKS times a round at most
        if self._left():  # a peer that has not seen the leave yet deems this node the owner:
            extra = {**(extra or {}), NAMED_BY: self._node_id}  # it serves rather than name it
        for settle in range(SETTLE_ROUNDS + 1):
            view = self._view
            answer = await self._ask(request, conversation_id, owner, extra, body)
            if not isinstance(answer, _NamedRound):
                return answer
            if settle == SETTLE_ROUNDS:
                break
            self.settle_waits += 1
            await self._settled(view, conversation_id)
            request.pop(_NAMED, None)  # what the round's answers named is of before
            request.pop(_NAMED_URL, None)
            owner = await self._owner(conversation_id)
            if owner == self._node_id:
                _refill(request, body)
                return None
        self.forward_failures += 1
        return _unavailable("the conversation's owner is moving")

    async def _settled(self, view: int, conversation_id: str) -> None:
        """Until this node's view changed since `view`, a heartbeat at most (the view
        that named the wrong owner may be another node's); asked afresh after it."""
        if self._view == view:
            if self._view_changed is None:
                self._view_changed = asyncio.get_running_loop().create_future()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._settle_seconds):
                    await asyncio.shield(self._view_changed)
        self._hints.pop(conversation_id, None)  # a change cleared them all already

    async def _ask(
        self,
        request: web.Request,
        conversation_id: str,
        owner: str,
        extra: dict[str, str] | None,
        body: bytes | None,
    ) -> web.StreamResponse | None | _NamedRound:
        """One round of asks: the owner's answer, None to serve here, or _NAMED_ROUND
        when each node asked named another (or had gone, the placement naming another)."""
        for attempt in range(ASKS):
            url = self._urls.get(owner)
            if url is None and owner not in self._departed:
                url = request.get(_NAMED_URL)
            if url is None:
                break  # not live (any more): nobody to ask
            try:
                answer = await self._send(request, url, extra, body)
            except PeerUnreachable as exc:  # nothing reached it: the placement's turn
                throttled.warning("forward", "forwarding to %s failed: %s", owner, exc)
                self._hints.pop(conversation_id, None)
                target = self._member.placement.owner_of(conversation_id)
                if target == owner:
                    # Dead, and this node's view has not dropped it yet (up to a
                    # heartbeat deadline): a node that took its lease meanwhile serves.
                    target = await self._other_holder(conversation_id) or owner
                if target == owner:
                    self.forward_failures += 1
                    return _unavailable(f"the owner ({owner}) did not answer")
                if attempt == ASKS - 1:
                    return _NAMED_ROUND  # the placement names another: asked afresh
                self.stale_retries += 1
                owner = target  # a holder or hint that has gone (a node that left)
                if owner == self._node_id:
                    _refill(request, body)
                    return None
                continue
            except PeerUnavailable as exc:
                self.forward_failures += 1
                throttled.warning("forward", "forwarding to %s failed: %s", owner, exc)
                return _unavailable(f"the owner ({owner}) did not answer")
            if answer is not None:
                self.forwarded += 1
                return answer
            self._hints.pop(conversation_id, None)  # the owner said "not mine"
            extra = {**(extra or {}), NAMED_BY: owner}  # and named the next one to ask
            if attempt < ASKS - 1:
                self.stale_retries += 1
                answered, owner = owner, self._retarget(conversation_id, request)
                if owner == self._node_id and self._left():  # named by a peer that lags
                    owner, extra = answered, {**extra, NAMED_BY: self._node_id}  # (above)
                elif owner == self._node_id:  # the old owner handed it over to this node
                    holder = await self._other_holder(conversation_id)
                    # Free, or held by the node that just named this one (it is letting
                    # go): served here, its activation waiting for the release.
                    if holder is None or holder == answered:
                        _refill(request, body)
                        return None
                    owner = holder  # a node whose view placed it there took it meanwhile
        return _NAMED_ROUND

    def _retarget(self, conversation_id: str, request: web.Request) -> str:
        """Whom to ask next: the node the not_owner answer named (remembered for the
        conversation's next requests)."""
        owner = request.get(_NAMED) or self._member.placement.owner_of(conversation_id)
        self._hint(conversation_id, owner)
        return owner

    async def _send(
        self, request: web.Request, url: str, extra: dict[str, str] | None, body: bytes | None
    ) -> web.StreamResponse | None:
        """The owner's answer relayed; None if it answered not_owner (its hint noted)."""
        extra = {TOKEN: self._member.token, **(extra or {})}  # the owner trusts the hop
        answer = await send(request, self._session(url), hop_header=HOP, extra=extra, body=body)
        if answer.status == NOT_OWNER:
            named = answer.header(OWNER)
            if named is not None:
                named_url = answer.header(OWNER_URL)
                try:
                    await answer.read()  # the connection goes back to the pool
                except OSError as exc:
                    raise PeerUnavailable(str(exc)) from exc
                request[_NAMED] = named
                if named_url is not None:
                    request[_NAMED_URL] = named_url
                return None
        return await pass_through(request, answer)

    def _session(self, url: str) -> PeerPool:
        session = self._sessions.get(url)
        if session is None:
            session = PeerPool.tcp(
                url,
                connect_timeout=self._connect_timeout,
                read_timeout=self._read_timeout,
                keep_idle=self._per_node,
            )
            self._sessions[url] = session
        return session


_NAMED = web.RequestKey("owner_named", str)  # the owner a not_owner answer named
_NAMED_URL = web.RequestKey("owner_named_url", str)  # and its URL, if the answer gave it


class _NamedRound:
    """A round of asks in which every node asked named another."""


_NAMED_ROUND = _NamedRound()


def _refill(request: web.Request, body: bytes | None) -> None:
    """Give back the body relaying read, for the handler that serves it here after all
    (the body reader reads `request.content`, not read()'s cache); none, nothing."""
    if body is None:
        return
    payload = StreamReader(request.protocol, 2**16, loop=asyncio.get_running_loop())
    payload.feed_data(body)
    payload.feed_eof()
    request._payload = payload  # noqa: SLF001 - aiohttp has no public way to set it
    # `content` is reified: once read (by whole_body) it would go on naming the drained
    # stream, and the handler would read an empty body ("Input data was truncated").
    request._cache.pop("content", None)  # noqa: SLF001


def _unavailable(message: str) -> web.StreamResponse:
    response = error_response(503, "unavailable", message)
    response.headers[hdrs.RETRY_AFTER] = "1"
    return response


def node_header(node_id: str) -> Callable[[web.Request, web.StreamResponse], Any]:
    """An on_response_prepare callback: name this node on responses that name no other
    (a relayed answer keeps its owner's)."""

    async def name(request: web.Request, response: web.StreamResponse) -> None:
        response.headers.setdefault(NODE, node_id)

    return name
