"""gateway/forwarding.py: two nodes whose views of the members differ name each other
as the owner (a leave or join reaches each at its own next heartbeat). The sender waits
for its view to change, or a heartbeat, and asks afresh, rather than answering 503
after its three asks (the SIGTERM leave of tests/cluster/test_workers.py, under load).

The peers are real HTTP servers on loopback; this node's membership, placement and
directory are fakes.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from engine.membership import Watcher
from gateway.cluster_member import ClusterMember
from gateway.forwarding import ASKS, NOT_OWNER, OWNER, OWNER_URL, SETTLE_ROUNDS, Forwarder
from tests.gateway.cluster_fakes import HeldBy, PlacedOn, View, closed_port

TOKEN_VALUE = "cluster-token"


@dataclass
class Views:
    """The two peers' state: they name each other until `settled_after` answers."""

    settled_after: int | None  # None: they never agree
    announce: bool  # the change reaches this node's view too (else a heartbeat passes)
    urls: dict[str, str] = field(default_factory=dict)
    dead_url: str | None = None  # n-b names a node gone from there (in no one's view)
    watchers: list[Watcher] = field(default_factory=list)
    named: int = 0  # not_owner answers given
    served: int = 0

    def settled(self) -> bool:
        return self.settled_after is not None and self.named >= self.settled_after


def peer(views: Views, node: str, names: str) -> web.Application:
    async def answer(request: web.Request) -> web.Response:
        await request.read()
        if node == "n-a" and views.settled():
            views.served += 1
            return web.json_response({"served_by": node})
        views.named += 1
        if views.settled() and views.announce:
            for watcher in views.watchers:  # this node reads the change meanwhile
                watcher(frozenset(views.urls))
        named, url = names, views.urls[names]
        if node == "n-b" and views.dead_url is not None:
            named, url = "n-gone", views.dead_url
        headers = {OWNER: named, OWNER_URL: url}
        body = {"error": {"code": "not_owner", "message": f"{named} owns it"}}
        return web.json_response(body, status=NOT_OWNER, headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


@pytest.fixture
async def servers() -> AsyncIterator[tuple[Views, TestServer, TestServer]]:
    views = Views(settled_after=None, announce=False)
    async with (
        TestServer(peer(views, "n-a", "n-b"), host="127.0.0.1") as a,
        TestServer(peer(views, "n-b", "n-a"), host="127.0.0.1") as b,
    ):
        views.urls = {node: str(server.make_url("")).rstrip("/") for node, server in
                      (("n-a", a), ("n-b", b))}  # fmt: skip
        yield views, a, b


async def ask(views: Views) -> tuple[int, Any, dict[str, Any]]:
    view = View(views.urls)  # this node's: itself and the two peers
    view.watchers = views.watchers
    member = ClusterMember(
        "n-here", view, PlacedOn("n-a"), HeldBy(None), None, TOKEN_VALUE,  # type: ignore[arg-type]
    )  # fmt: skip
    # A heartbeat of 10 ms: the round after a wait the view did not end is as correct
    # whenever it comes (nothing here depends on how long the wait is).
    forwarder = Forwarder(member, lambda _: False, lambda _: None, settle_seconds=0.01)  # type: ignore[arg-type,return-value]
    async with forwarder:

        async def handle(request: web.Request) -> web.StreamResponse:
            relayed = await forwarder.route(request, request.match_info)
            assert relayed is not None, "n-a or n-b owns it in every view"
            return relayed

        app = web.Application()
        app.router.add_post("/api/v1/conversations/{conversation_id}/messages", handle)
        async with (
            TestClient(TestServer(app, host="127.0.0.1")) as client,
            client.post(f"/api/v1/conversations/{uuid.uuid4()}/messages", data=b"{}") as r,
        ):
            return r.status, await r.json(), forwarder.stats()


@pytest.mark.parametrize("announce", [True, False], ids=["view-changes", "a-heartbeat-passes"])
async def test_nodes_naming_each_other_get_asked_again_once_the_views_settle(
    servers: tuple[Views, TestServer, TestServer], announce: bool
) -> None:
    views, _, _ = servers
    views.settled_after, views.announce = ASKS, announce  # a whole round named the other
    status, answer, stats = await ask(views)
    assert status == 200, answer
    assert answer == {"served_by": "n-a"}
    assert views.named == ASKS and views.served == 1
    assert stats["settle_waits"] == 1 and stats["forward_failures"] == 0


async def test_nodes_that_never_agree_end_in_a_503_after_the_last_round(
    servers: tuple[Views, TestServer, TestServer],
) -> None:
    views, _, _ = servers
    status, answer, stats = await ask(views)
    assert status == 503
    assert answer["error"]["message"] == "the conversation's owner is moving"
    assert views.named == ASKS * (SETTLE_ROUNDS + 1)  # bounded: no request asks forever
    assert stats["settle_waits"] == SETTLE_ROUNDS and stats["forward_failures"] == 1


async def test_a_round_ending_at_a_node_gone_is_asked_again_from_the_placement(
    servers: tuple[Views, TestServer, TestServer],
) -> None:
    """n-a names n-b, n-b names a node that has gone (it left, its port closed), and the
    placement names n-a again: not "did not answer" but the next round, once settled."""
    views, _, _ = servers
    views.dead_url = f"http://127.0.0.1:{closed_port()}"
    views.settled_after, views.announce = 2, False  # the two not_owner answers of a round
    status, answer, stats = await ask(views)
    assert status == 200, answer
    assert answer == {"served_by": "n-a"}
    assert views.named == 2 and views.served == 1
    assert stats["settle_waits"] == 1 and stats["forward_failures"] == 0
