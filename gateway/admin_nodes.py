"""Which nodes the admin API lists: `Membership.nodes()`.

A node on its own lists itself (`ThisNode`, heartbeat age 0). Cluster membership
(engine/membership.py) implements the same method from the live nodes' heartbeats, each
carrying its node's `node_stats(app)`; `summary` turns those into the headline figures.
"""

from __future__ import annotations

from typing import Protocol

from aiohttp import web

from gateway.admin_schemas import NodeOut
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
        rss_bytes=stats["process"]["rss_bytes"],
        unflushed_bytes=flusher.get("unflushed_bytes", 0),
        unflushed_records=flusher.get("unflushed_records", 0),
        flush_lag_seconds=flusher.get("lag_ms", 0) / 1000,
        requests_per_second=stats.get("requests", {}).get("requests_per_second", 0.0),
        stats=stats,
    )


MEMBERSHIP = web.AppKey("membership", Membership)
