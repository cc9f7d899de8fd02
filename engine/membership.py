"""Membership (Orleans' membership table): which nodes are alive, where they answer, and
what they last reported. The single-node default knows only this node, like Orleans'
no-op table, so an embedded node runs the same code path as a cluster member.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Member:
    node_id: str
    url: str  # where the node answers (its advertised URL)
    stats: dict[str, Any] = field(default_factory=dict)  # carried by its last heartbeat
    heartbeat_age: float = 0.0  # seconds since that heartbeat, when it was read
    leaving: bool = False  # handing its conversations over: nothing is placed on it


# told the live node ids conversations are placed on (not leaving) whenever the live
# nodes change: one joins, is marked leaving, or goes (a leaving one too)
Watcher = Callable[[frozenset[str]], None]


class Membership(Protocol):
    node_id: str
    url: str

    async def __aenter__(self) -> Membership: ...

    async def __aexit__(self, *exc: object) -> None: ...

    def live(self) -> list[Member]:
        """The live nodes as last seen, this one included."""
        ...

    async def url_of(self, node_id: str) -> str | None:
        """Where a live node answers, asked afresh (it may have joined since the live
        set was last read); None if it is not live."""
        ...

    def watch(self, watcher: Watcher) -> None:
        """Call `watcher(placed node ids)` each time the live nodes change."""
        ...

    def can_acknowledge(self) -> bool:
        """False once this node's heartbeat is late: before its leases can expire."""
        ...

    def stats(self) -> dict[str, Any]: ...


class Alone:
    """A node with no cluster: it is the only member and always may acknowledge."""

    def __init__(self, node_id: str, url: str, report: Callable[[], dict[str, Any]]) -> None:
        self.node_id, self.url = node_id, url
        self._report = report

    async def __aenter__(self) -> Alone:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    def live(self) -> list[Member]:
        return [Member(self.node_id, self.url, self._report())]

    async def url_of(self, node_id: str) -> str | None:
        return self.url if node_id == self.node_id else None

    def watch(self, watcher: Watcher) -> None:
        pass  # the set never changes

    def can_acknowledge(self) -> bool:
        return True

    def stats(self) -> dict[str, Any]:
        return {"kind": "none", "node_id": self.node_id, "live_nodes": 1}
