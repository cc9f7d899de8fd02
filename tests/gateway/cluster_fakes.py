"""Fakes of a cluster member's parts for gateway/forwarding.py's tests: this node's view
of the members, a placement, the lease lookup, and a port nobody listens on."""

from __future__ import annotations

import socket
from typing import Any

from engine.membership import Member, Watcher


class View:
    """This node's membership as a test sets it: the other live nodes (`members`, id ->
    URL, read at each call), and URLs only Redis knows (`known`: nodes that joined since
    the view was read). Watchers are kept for a test to tell of a change."""

    node_id, url = "n-here", "http://127.0.0.1:1"

    def __init__(
        self,
        members: dict[str, str] | None = None,
        known: dict[str, str] | None = None,
        *,
        leaving: bool = False,
    ) -> None:
        self.members = members if members is not None else {}
        self.known = known or {}
        self.leaving = leaving  # this node's own mark, as its heartbeat reads it back
        self.watchers: list[Watcher] = []

    async def __aenter__(self) -> View:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    def live(self) -> list[Member]:
        others = [Member(node, url) for node, url in self.members.items()]
        return [Member(self.node_id, self.url, leaving=self.leaving), *others]

    async def url_of(self, node_id: str) -> str | None:
        return self.members.get(node_id) or self.known.get(node_id)

    def watch(self, watcher: Watcher) -> None:
        self.watchers.append(watcher)

    def can_acknowledge(self) -> bool:
        return True

    def stats(self) -> dict[str, Any]:
        return {}


class PlacedOn:
    """Placement that puts every conversation on `node`."""

    def __init__(self, node: str) -> None:
        self.node = node

    def owner_of(self, conversation_id: str) -> str:
        return self.node


class HeldBy:
    """The directory's lease lookup: `holder` (None: it ran before a node took it)."""

    def __init__(self, holder: str | None) -> None:
        self._holder = holder

    async def holder(self, conversation_id: str) -> str | None:
        return self._holder

    def stats(self) -> dict[str, Any]:
        return {}


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # nothing listens there once closed
