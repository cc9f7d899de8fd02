"""Serving the conversation API without `Application._handle`.

aiohttp's `Application._handle` resolves a request through the URL dispatcher's index,
attaches the application to the match, checks `Expect` and looks up the middleware chain
in an LRU cache, for every request. A bare POST handler on uvloop cost 66-75 µs of CPU
a request through it and 42-53 µs with the match set directly (one run, alternated,
/tmp figures in docs/decisions.md). This dispatcher does the same work for routes
under the conversation prefix with one trie walk and a chain built once per route;
with `--workers N` it is also where a request for another worker's conversation is
handed to it (gateway/worker_peers.py), and in a cluster where a request for another
node's is forwarded (gateway/forwarding.py), both before any middleware. Everything
else (other routes, 404 and 405, `Expect: 100-continue`) goes to
`Application._handle` unchanged, so the answers are the same either way.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from gateway.router import SegmentRouter
from gateway.worker_peers import PEERS

Chain = Callable[[web.Request], Awaitable[web.StreamResponse]]
INTERNAL = "/internal/"  # cluster nodes' calls to each other (gateway/forwarding.py)


class Dispatcher:
    """The request handler of a frozen application's server."""

    def __init__(self, app: web.Application) -> None:
        assert app.frozen, "middlewares and routes are fixed once the app is frozen"
        from gateway.keys import FORWARDER  # keys -> guards -> connections -> here

        self._app = app
        self._general = app._handle
        self._routers = [r for r in app.router.resources() if isinstance(r, SegmentRouter)]
        self._chains: dict[Handler, Chain] = {}
        # the other workers of `--workers N`, to hand another's conversation to; None
        # for a node alone (then no placement is asked per request)
        self._peers = app.get(PEERS)
        self._forwarder = app.get(FORWARDER)  # None alone: no ownership check at all
        self.direct = 0  # requests served through a trie's chain
        self.general = 0  # requests handed to Application._handle

    def stats(self) -> dict[str, int]:
        return {"direct": self.direct, "general": self.general}

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        assert isinstance(request, web.Request)  # the server's factory is the app's
        path = request.rel_url.path_safe
        for router in self._routers:
            if router.covers(path):
                match, _ = router.match(request.method, path)
                if match is not None and self._peers is not None:  # --workers N only
                    owner = self._peers.owner_elsewhere(request, match)
                    if owner is not None:
                        return await self._peers.hand_over(request, owner)
                if match is None:
                    break  # 404 and 405 as aiohttp answers them
                if hdrs.EXPECT in request.headers:
                    if self._forwarder is not None:  # the owner's answer all the same
                        relayed = await self._forwarder.route(request, match)
                        if relayed is not None:
                            return relayed
                    break  # 100-continue as aiohttp answers it
                match.add_app(self._app)
                match.freeze()
                request._match_info = match
                self.direct += 1
                if self._forwarder is not None:  # before the chain: the owner authenticates
                    relayed = await self._forwarder.route(request, match)
                    if relayed is not None:
                        return relayed
                    return await self._forwarder.serve_here(
                        request, match, self._chain(match.handler)
                    )
                return await self._chain(match.handler)(request)
        if self._forwarder is not None and path.startswith(INTERNAL):
            return await self._forwarder.internal(request)  # a peer's call
        if self._peers is not None and path.startswith(INTERNAL):
            answered = self._peers.internal(request)  # a sibling worker's call
            if answered is not None:
                return answered
        self.general += 1
        return await self._general(request)

    def _chain(self, handler: Handler) -> Chain:
        chain = self._chains.get(handler)
        if chain is None:
            chain = handler
            for middleware in reversed(self._app.middlewares):
                chain = functools.partial(middleware, handler=chain)
            self._chains[handler] = chain
        return chain
