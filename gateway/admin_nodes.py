"""Which nodes the admin API lists: `Membership.nodes()`.

`MemberNodes` lists the live members of the node's cluster membership
(engine/membership.py): each with the figures its last heartbeat carried
(gateway/node_stats.py `heartbeat_stats`, which the heartbeat sends) and that
heartbeat's age; this node itself with its figures now. A node alone lists itself
(heartbeat age 0); one of `--workers N` lists itself too (a sibling worker's figures are
not known here). `summary` turns a node's stats into the headline figures.
"""

from __future__ import annotations

from typing import Protocol

from aiohttp import web

from gateway.admin_schemas import NodeOut
from gateway.keys import CLUSTER
from gateway.node_stats import Stats, node_stats


class Membership(Protocol):
    def nodes(self) -> list[NodeOut]:
        """Every live node, this one included, with its figures."""
        ...


class ThisNode:
    """Membership of a node on its own: itself, its heartbeat now."""

    def __init__(self, node_id: str, address: str, app: web.Application) -> None:
        self.node_id, self.address, self._app = node_id, address, app

    def nodes(self) -> list[NodeOut]:
        return [summary(self.node_id, self.address, 0.0, node_stats(self._app))]


class MemberNodes:
    """The live members of the app's cluster membership, once it has joined (before
    that, and where it has none, this node alone)."""

    def __init__(self, alone: ThisNode, app: web.Application) -> None:
        self._alone, self._app = alone, app

    def nodes(self) -> list[NodeOut]:
        member = self._app.get(CLUSTER)
        if member is None:
            return self._alone.nodes()
        membership = member.membership
        # its advertised URL (a worker's membership URL is its handover socket)
        here = summary(member.node_id, self._alone.address, 0.0, node_stats(self._app))
        listed = {here.node_id: here}  # this node's figures now, even before its first read
        for node in membership.live():
            if node.node_id == here.node_id:
                here.heartbeat_age_seconds = node.heartbeat_age
            elif node.stats:  # a sibling worker's are not known here
                listed[node.node_id] = summary(
                    node.node_id, node.url, node.heartbeat_age, node.stats
                )
        return sorted(listed.values(), key=lambda n: n.node_id)


def summary(node_id: str, address: str, heartbeat_age: float, stats: Stats) -> NodeOut:
    """A node's headline figures from its stats() (as a heartbeat carries them)."""
    registry, flusher = stats.get("registry", {}), stats.get("flusher", {})
    return NodeOut(
        node_id=node_id,
        address=address,
        heartbeat_age_seconds=heartbeat_age,
        actors=registry.get("hot_actors", 0),
        hot_messages=registry.get("hot_messages", 0),
        memory_bytes=registry.get("hot_bytes", 0),
        rss_bytes=stats.get("process", {}).get("rss_bytes", 0),
        unflushed_bytes=flusher.get("unflushed_bytes", 0),
        unflushed_records=flusher.get("unflushed_records", 0),
        flush_lag_seconds=flusher.get("lag_ms", 0) / 1000,
        requests_per_second=stats.get("requests", {}).get("requests_per_second", 0.0),
        stats=stats,
    )


MEMBERSHIP = web.AppKey("membership", Membership)
