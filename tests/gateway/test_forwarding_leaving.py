"""gateway/forwarding.py: a leaving node never takes up a conversation it handed over.

During a SIGTERM leave a peer whose view has not read the leaving mark yet still deems
the leaving node the owner. If the leaving node served such a request (the
`X-Canopy-Named-By` rule says "the owner let go and named you"), it activated the
conversation again, held it as it stopped answering, and its peers' requests for it
failed there (tests/cluster/test_rebalance.py's leave under load, a 503 "did not
answer"). Instead it names the new owner, and its own relays carry its name, so the
lagging peer serves them.

The peer is a real HTTP server on loopback that applies the real rule; this node's
membership, placement and directory are fakes.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.cluster_member import ClusterMember
from gateway.forwarding import HOP, NAMED_BY, NOT_OWNER, OWNER, TOKEN, Forwarder
from tests.gateway.cluster_fakes import HeldBy, PlacedOn, View

HERE, NEW = "n-here", "n-new"
TOKEN_VALUE = "cluster-token"


class LaggingPeer:
    """The new owner, whose view still deems this node the owner: it serves a request
    named by this node, and names this node for any other (the first `stale` of them
    whatever they carry)."""

    def __init__(self, stale: int = 0) -> None:
        self.stale = stale
        self.seen: list[str | None] = []  # each request's X-Canopy-Named-By

    async def answer(self, request: web.Request) -> web.Response:
        await request.read()
        named_by = request.headers.get(NAMED_BY)
        self.seen.append(named_by)
        if named_by == HERE and len(self.seen) > self.stale:
            return web.json_response({"served_by": NEW})
        body = {"error": {"code": "not_owner", "message": f"{HERE} owns it"}}
        return web.json_response(body, status=NOT_OWNER, headers={OWNER: HERE})


@contextlib.asynccontextmanager
async def node(
    leaving: bool, peer: LaggingPeer
) -> AsyncIterator[tuple[TestClient[Any, Any], list[str]]]:
    """This node, every conversation placed on the peer; what it served itself."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", peer.answer)
    async with TestServer(app, host="127.0.0.1") as server:
        view = View({NEW: str(server.make_url("")).rstrip("/")}, leaving=leaving)
        member = ClusterMember(HERE, view, PlacedOn(NEW), HeldBy(None), None, TOKEN_VALUE)  # type: ignore[arg-type]
        served: list[str] = []
        async with Forwarder(member, lambda _: False, lambda _: None) as forwarder:  # type: ignore[arg-type,return-value]

            async def handle(request: web.Request) -> web.StreamResponse:
                relayed = await forwarder.route(request, request.match_info)
                if relayed is not None:
                    return relayed
                served.append(request.match_info["conversation_id"])
                return web.json_response({"served_by": HERE})

            this = web.Application()
            this.router.add_post("/api/v1/conversations/{conversation_id}/messages", handle)
            async with TestClient(TestServer(this, host="127.0.0.1")) as client:
                yield client, served


def path() -> str:
    return f"/api/v1/conversations/{uuid.uuid4()}/messages"


@pytest.mark.parametrize("leaving", [True, False], ids=["leaving", "staying"])
async def test_a_relayed_request_named_by_its_new_owner_is_served_here_unless_leaving(
    leaving: bool,
) -> None:
    hop = {HOP: "1", TOKEN: TOKEN_VALUE, NAMED_BY: NEW}  # the new owner named this node
    async with (
        node(leaving, LaggingPeer()) as (client, served),
        client.post(path(), data=b"{}", headers=hop) as response,
    ):
        if leaving:
            assert response.status == NOT_OWNER, await response.text()
            assert response.headers[OWNER] == NEW
            assert served == []
        else:
            assert response.status == 200, await response.text()
            assert len(served) == 1


@pytest.mark.parametrize("leaving", [True, False], ids=["leaving", "staying"])
async def test_a_leaving_node_names_itself_on_what_it_relays(leaving: bool) -> None:
    peer = LaggingPeer()
    async with node(leaving, peer) as (client, served), client.post(path(), data=b"{}") as r:
        assert r.status == 200, await r.text()
        answer = await r.json()
    if leaving:  # the lagging peer serves it at the first ask
        assert answer == {"served_by": NEW} and peer.seen == [HERE] and served == []
    else:  # the peer named this node, which took it back (it is not leaving)
        assert answer == {"served_by": HERE} and peer.seen == [None] and len(served) == 1


async def test_a_leaving_node_named_back_asks_again_instead_of_serving() -> None:
    peer = LaggingPeer(stale=1)  # names this node once whatever the request carries
    async with node(True, peer) as (client, served), client.post(path(), data=b"{}") as r:
        assert r.status == 200, await r.text()
        assert await r.json() == {"served_by": NEW}
    assert peer.seen == [HERE, HERE] and served == []
