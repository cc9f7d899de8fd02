"""This node as a cluster member: its membership, placement and directory, composed from
the settings. Alone (`--cluster none`) it is the only member and owns everything
through the journal; with `--cluster redis` it heartbeats and holds its conversations'
leases in Redis, and its actors append through a journal that refuses what it may no
longer acknowledge. Forwarding to the owner comes with gateway/cluster.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.actor import new_id
from engine.directory import Directory
from engine.fencing import AcknowledgingJournal
from engine.membership import Alone, Membership
from engine.membership_workers import Workers
from engine.placement import Placement, Rendezvous, ThisNode, placed_here
from gateway.config import Settings
from gateway.worker_peers import WorkerPeers
from persistence.journal import Journal, JournalError

Report = Callable[[], dict[str, Any]]  # what this node's heartbeat carries


@dataclass
class ClusterMember:
    node_id: str
    membership: Membership
    placement: Placement
    directory: Directory | None  # None: the registry's default (the journal's ownership)
    actors_journal: Journal  # what the actors append through
    conversation_ids: Callable[[], str] | None = None  # new ids; None: the registry's

    def stats(self) -> dict[str, Any]:
        directory = self.directory.stats() if self.directory else {"kind": "journal"}
        return {"membership": self.membership.stats(), "directory": directory}


async def join(
    settings: Settings,
    journal: Journal,
    stack: contextlib.AsyncExitStack,
    report: Report,
    peers: WorkerPeers | None = None,
) -> ClusterMember:
    """Enter this node's membership and directory into `stack` (left in reverse). One
    of `--workers N` (`peers`) is a member among its sibling workers, and makes new
    conversations with ids placed on itself."""
    node_id = settings.node()
    if peers is not None:  # one of --workers N: the workers are the members
        urls = [f"unix:{path}" for path in peers.sockets]
        workers = Workers(peers.index, urls, report)
        ids = placed_here(peers.placement, peers.node_id, new_id)
        return ClusterMember(peers.node_id, workers, peers.placement, None, journal, ids)
    if settings.cluster == "none":
        alone = Alone(node_id, settings.advertised(), report)
        return ClusterMember(node_id, alone, ThisNode(node_id), None, journal)
    import redis.asyncio as redis  # an optional extra, needed only in a cluster
    from redis.exceptions import RedisError

    from engine.directory_redis import RedisDirectory
    from engine.membership_redis import RedisMembership

    timeout = min(1.0, settings.lease_seconds / 3)  # a stuck call must not outlast a renewal
    client = redis.Redis.from_url(
        settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout
    )
    stack.push_async_callback(client.aclose)
    membership = RedisMembership(
        client, node_id, settings.advertised(), report,
        interval=settings.heartbeat_seconds, deadline=settings.heartbeat_deadline(),
    )  # fmt: skip
    directory = RedisDirectory(client, journal, node_id, lease_seconds=settings.lease_seconds)
    try:
        await stack.enter_async_context(membership)
        await stack.enter_async_context(directory)
    except RedisError as exc:
        raise JournalError(f"cannot join the cluster in Redis: {exc}") from exc
    placement = Rendezvous([m.node_id for m in membership.live()] or [node_id])
    membership.watch(placement.update)
    fenced = AcknowledgingJournal(journal, membership, directory)
    return ClusterMember(node_id, membership, placement, directory, fenced)
