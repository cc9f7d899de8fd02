"""The admin API across a cluster: the other live nodes' hot actors and an actor hot on
another node, asked of those nodes' own admin routes.

A peer is asked with `scope=node` (its own actors only, so nothing fans out twice) and
the cluster's token in `X-Canopy-Cluster-Token` (gateway/admin_token.py accepts it as
well as the admin bearer), so the nodes need not share an admin token. One aiohttp
session (keep-alive) for the node's life; a peer that does not answer within `timeout`
is named in the answer rather than failing it. A flush or a passivation asked of the
owner waits for its store (a flusher process's answer up to 10 s): `WRITE_TIMEOUT`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp
import msgspec
from aiohttp import web

from engine.membership import Member
from gateway.admin_schemas import ActorsOut
from gateway.admin_token import PEER_TOKEN

WRITE_TIMEOUT = aiohttp.ClientTimeout(total=15.0)  # seconds: a POST stores first


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes


class PeerAdmin:
    """Calls to the other nodes' admin routes (closed with the app)."""

    def __init__(self, timeout: float = 2.0) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self.calls = 0
        self.failures = 0

    async def close(self, _: web.Application | None = None) -> None:
        if self._session is not None:
            await self._session.close()

    def stats(self) -> dict[str, int]:
        return {"calls": self.calls, "failures": self.failures}

    async def listings(
        self, peers: list[Member], token: str, query: dict[str, str]
    ) -> tuple[list[ActorsOut], list[str]]:
        """Each peer's first page of its own actors; and the peers that did not answer."""
        answers = await asyncio.gather(
            *(self.call(peer.url, "GET", "/admin/actors", token, query) for peer in peers),
            return_exceptions=True,
        )
        pages, missing = [], []
        for peer, answer in zip(peers, answers, strict=True):
            if isinstance(answer, Answer) and answer.status == 200:
                pages.append(msgspec.json.decode(answer.body, type=ActorsOut))
            else:
                missing.append(peer.node_id)
        return pages, missing

    async def call(
        self, url: str, method: str, path: str, token: str, query: dict[str, str]
    ) -> Answer:
        """One admin call to the node at `url`, with this node's scope; raises
        aiohttp.ClientError or TimeoutError if it does not answer."""
        self.calls += 1
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.request(
                method, url + path, params={**query, "scope": "node"},
                headers={PEER_TOKEN: token},
                timeout=WRITE_TIMEOUT if method == "POST" else self._timeout,
            ) as answer:  # fmt: skip
                return Answer(answer.status, await answer.read())
        except (aiohttp.ClientError, TimeoutError):
            self.failures += 1
            raise


PEER_ADMIN = web.AppKey("peer_admin", PeerAdmin)
