"""A cluster node's part in serving's start and end (gateway/connections.py `serve`):
it becomes a member once it listens, so nobody forwards to it before it can answer, and
on SIGTERM it leaves before it stops answering: marked leaving (nothing is placed on it
any more), it hands every hot conversation over (engine/rebalance.py) while requests
for them are forwarded to their new owners, then the usual shutdown runs.

The workers of one `--workers N --cluster redis` node are members each, and SIGTERM
reaches them all at once: each waits (a few heartbeats at most) until it has seen its
siblings marked leaving before it hands anything over, or it would name a sibling that
is leaving too as a conversation's new owner, and requests would bounce between them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection

from aiohttp import web

from engine.membership_redis import RedisMembership
from gateway.keys import ADOPTER, CLUSTER, REBALANCER

log = logging.getLogger(__name__)


SIBLINGS_WAIT = 3  # heartbeats a leaving worker waits for its siblings' leaving marks


class ClusterLifecycle:
    def __init__(
        self, app: web.Application, siblings: Collection[str] = (), heartbeat: float = 0.0
    ) -> None:
        self._app = app
        self._siblings = frozenset(siblings)  # the other workers of this node, if any
        self._siblings_wait = heartbeat * SIBLINGS_WAIT

    def _membership(self) -> RedisMembership | None:
        member = self._app.get(CLUSTER)
        membership = member.membership if member is not None else None
        return membership if isinstance(membership, RedisMembership) else None

    async def listening(self) -> None:
        membership = self._membership()
        if membership is not None:
            try:
                await membership.announce()
            except Exception as exc:  # noqa: BLE001 - its next heartbeat announces it
                log.warning("joining the cluster: %s (announced with the next heartbeat)", exc)
            adopter = self._app.get(ADOPTER)
            if adopter is not None:  # what a dead node left journaled and nobody serves
                adopter.start()

    async def leaving(self, deadline: float) -> None:
        membership, moves = self._membership(), self._app.get(REBALANCER)
        if membership is None or moves is None:
            return
        ends = asyncio.get_running_loop().time() + deadline
        try:
            await membership.leave()
        except Exception as exc:  # noqa: BLE001 - Redis unreachable: the shutdown goes on
            log.warning("leaving the cluster: %s (conversations move at lease expiry)", exc)
            return
        await self._siblings_leaving(membership)
        # The others must have seen the mark before this node stops answering.
        seen = asyncio.create_task(membership.until_seen())
        moved = await moves.leave(deadline)
        try:
            async with asyncio.timeout_at(ends):
                await seen
        except Exception as exc:  # noqa: BLE001 - late or unreachable: shut down anyway
            log.warning("leaving the cluster: not seen by every node: %r", exc)
        log.info("left the cluster: %d conversations handed over", moved)

    async def _siblings_leaving(self, membership: RedisMembership) -> None:
        """Until no sibling worker is placed on any more (each marked leaving, or gone),
        within a few heartbeats (a worker stopped alone waits that long)."""
        if not self._siblings:
            return
        settled = asyncio.Event()

        def changed(placed: frozenset[str]) -> None:
            if not placed & self._siblings:
                settled.set()

        membership.watch(changed)
        changed(membership.placed())
        try:
            await asyncio.wait_for(settled.wait(), self._siblings_wait)
        except TimeoutError:
            log.info("leaving the cluster: sibling workers still placed on: %s",
                     " ".join(sorted(membership.placed() & self._siblings)))  # fmt: skip
