"""This node as a cluster member: its membership, placement and directory, composed from
the settings. Alone (`--cluster none`) it is the only member and owns everything
through the journal; one of `--workers N` is a member among its sibling workers; with
`--cluster redis` it heartbeats and holds its conversations' leases in Redis, and its
actors append through a journal that refuses what it may no longer acknowledge.
Forwarding to the owner is gateway/forwarding.py's.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from engine.directory import Directory
from engine.fencing import AcknowledgingJournal
from engine.ids import new_id
from engine.membership import Alone, Membership
from engine.membership_workers import Workers
from engine.placement import Placement, Rendezvous, ThisNode, placed_here
from gateway.config import Settings
from gateway.worker_peers import WorkerPeers
from persistence.journal import Journal, JournalError

if TYPE_CHECKING:
    from persistence.redis_pool import RedisPool  # redis is an optional extra


Report = Callable[[], dict[str, Any]]  # what this node's heartbeat carries


@dataclass
class ClusterMember:
    node_id: str
    membership: Membership
    placement: Placement
    directory: Directory | None  # None: the registry's default (the journal's ownership)
    actors_journal: Journal  # what the actors append through
    token: str = ""  # what the cluster's nodes show each other on internal calls
    conversation_ids: Callable[[], str] | None = None  # new ids; None: the registry's

    def stats(self) -> dict[str, Any]:
        directory = self.directory.stats() if self.directory else {"kind": "journal"}
        return {"membership": self.membership.stats(), "directory": directory}


async def join(
    settings: Settings,
    journal: Journal,
    stack: contextlib.AsyncExitStack,
    report: Report,
    pool: RedisPool | None = None,
    peers: WorkerPeers | None = None,
) -> ClusterMember:
    """Enter this node's membership and directory into `stack` (left in reverse), over
    the node's Redis pool (or, without a Redis journal, a pool of their own). One of
    `--workers N` (`peers`) is a member among its sibling workers, and makes new
    conversations with ids placed on itself."""
    node_id = settings.node()
    if peers is not None:  # one of --workers N: the workers are the members
        urls = [f"unix:{path}" for path in peers.sockets]
        workers = Workers(peers.index, urls, report)
        ids = placed_here(peers.placement, peers.node_id, new_id)
        return ClusterMember(peers.node_id, workers, peers.placement, None, journal,
                             conversation_ids=ids)  # fmt: skip
    if settings.cluster == "none":
        alone = Alone(node_id, settings.advertised(), report)
        return ClusterMember(node_id, alone, ThisNode(node_id), None, journal)
    from redis.exceptions import RedisError  # an optional extra, needed only in a cluster

    from engine.directory_redis import RedisDirectory
    from engine.membership_redis import RedisMembership
    from persistence.redis_pool import RedisPool

    if pool is None:
        pool = await stack.enter_async_context(RedisPool(settings.redis()))
    # Each call is bounded by this as well as by the pool's socket timeout: a stuck call
    # must not outlast a heartbeat or a batch of releases.
    timeout = min(settings.redis_timeout, settings.lease_seconds / 3)
    membership = RedisMembership(
        pool.client, node_id, settings.advertised(), report,
        interval=settings.heartbeat_seconds, deadline=settings.heartbeat_deadline(),
        timeout=min(timeout, settings.heartbeat_seconds),
        announce_at_start=False,  # once it listens (gateway/cluster_lifecycle.py)
    )  # fmt: skip
    directory = RedisDirectory(
        pool.client, journal, membership, release_seconds=settings.lease_seconds / 3,
        timeout=timeout,
    )  # fmt: skip
    try:
        await stack.enter_async_context(membership)
        await stack.enter_async_context(directory)
        token = await _cluster_token(pool)
    except RedisError as exc:
        raise JournalError(f"cannot join the cluster in Redis: {exc}") from exc
    placement = Rendezvous([m.node_id for m in membership.live()] or [node_id])
    # A node leaving the last of all still places on itself (placement needs a node).
    membership.watch(lambda placed: placement.update(placed or [node_id]))
    fenced = AcknowledgingJournal(journal, membership, directory)
    return ClusterMember(node_id, membership, placement, directory, fenced, token)


async def _cluster_token(pool: RedisPool) -> str:
    from persistence import redis_keys

    await pool.client.set(redis_keys.CLUSTER_TOKEN, secrets.token_urlsafe(32), nx=True)
    token = await pool.client.get(redis_keys.CLUSTER_TOKEN)
    assert token is not None
    return token.decode() if isinstance(token, bytes) else str(token)
