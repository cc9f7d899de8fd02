"""Every component's stats() in one dict: what the admin API, /metrics and (with
membership) the heartbeat carry. Read when asked, never kept: no loose counters."""

from __future__ import annotations

import os
from typing import Any

from aiohttp import web

from engine.registry import Registry
from gateway.busy_poll import BUSY_POLL
from gateway.connections import SERVER
from gateway.keys import (
    ADOPTER,
    CLUSTER,
    CONVERSATIONS,
    FLUSHER,
    FORWARDER,
    JOURNAL,
    REBALANCER,
    RETENTION,
    SENDER,
)
from gateway.ratelimit import LIMITER
from gateway.request_metrics import REQUEST_METRICS
from gateway.worker_peers import PEERS

Stats = dict[str, dict[str, Any]]

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    """The process's resident memory (Linux), 0 where /proc is not there."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


COMPONENTS = (
    ("flusher", FLUSHER), ("journal", JOURNAL), ("retention", RETENTION),
    ("rate_limiter", LIMITER), ("connections", SERVER), ("requests", REQUEST_METRICS),
    ("forwarder", FORWARDER), ("busy_poll", BUSY_POLL),
    ("rebalancing", REBALANCER), ("adoption", ADOPTER), ("workers", PEERS),
)  # fmt: skip


def node_stats(app: web.Application) -> Stats:
    """Each component's stats by name; those the node does not run are left out
    (`registry` with --cache off, `rate_limiter` without --rate-limit, `forwarder`
    alone). The cluster member's figures are two sections, `membership` and `directory`."""
    sections: Stats = {"process": {"rss_bytes": rss_bytes(), "pid": os.getpid()}}
    conversations = app.get(CONVERSATIONS)
    if isinstance(conversations, Registry):
        sections["registry"] = conversations.stats()
    components: list[tuple[str, Any]] = [(name, app.get(key)) for name, key in COMPONENTS]
    sender = app.get(SENDER)
    components.append(("responses", sender.budget if sender is not None else None))
    for name, component in components:
        if component is not None:
            sections[name] = component.stats()
    member = app.get(CLUSTER)
    if member is not None:
        sections.update(member.stats())
    return sections


def heartbeat_stats(app: web.Application) -> Stats:
    """What a heartbeat carries (the figures /admin/nodes shows of every node): the
    node's stats without the histograms, which only its own /metrics reads."""
    return {
        name: {key: value for key, value in section.items() if not _histogram(value)}
        for name, section in node_stats(app).items()
    }


def _histogram(value: object) -> bool:
    return isinstance(value, dict) and "cumulative" in value
