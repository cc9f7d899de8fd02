"""Placement (Orleans' placement director): which node a conversation belongs on.

Rendezvous hashing (highest random weight): every node scores the conversation id with
a stable 64-bit hash of node id + conversation id and the highest score owns it, so a
node joining or leaving moves only the conversations it wins or held (about 1/N), and
every node computes the same owner from the same live set without coordination. The
single-node default answers "this node" without hashing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import Protocol


class Placement(Protocol):
    def owner_of(self, conversation_id: str) -> str:
        """The id of the node the conversation belongs on."""
        ...


class ThisNode:
    """A node alone: every conversation belongs here."""

    __slots__ = ("node_id",)

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id

    def owner_of(self, conversation_id: str) -> str:
        return self.node_id


class Rendezvous:
    """Highest random weight over a set of live node ids (`update` when it changes)."""

    __slots__ = ("_nodes",)

    def __init__(self, nodes: Iterable[str]) -> None:
        self._nodes: list[tuple[str, hashlib.blake2b]] = []
        self.update(nodes)

    def update(self, nodes: Iterable[str]) -> None:
        # Each node's hash state is primed with its id once: a lookup only adds the
        # conversation id to a copy (docs/decisions.md has the cost per call).
        self._nodes = [(node, _primed(node)) for node in sorted(set(nodes))]

    @property
    def nodes(self) -> list[str]:
        return [node for node, _ in self._nodes]

    def owner_of(self, conversation_id: str) -> str:
        if not self._nodes:
            raise LookupError("no live node to place a conversation on")
        key = conversation_id.encode()
        best, best_score = "", b""
        for node, primed in self._nodes:
            hasher = primed.copy()
            hasher.update(key)
            score = hasher.digest()
            if score > best_score:
                best, best_score = node, score
        return best


def _primed(node_id: str) -> hashlib.blake2b:
    hasher = hashlib.blake2b(digest_size=8)
    hasher.update(node_id.encode())
    hasher.update(b"\0")  # "ab"+"c" and "a"+"bc" score differently
    return hasher


def placed_here(placement: Placement, node_id: str, new_id: Callable[[], str]) -> Callable[[], str]:
    """A source of new ids that `placement` puts on `node_id`: random ids drawn until
    one lands here (about N draws among N nodes), so a conversation is created where it
    belongs without a hop, whichever node the request reached."""

    def draw() -> str:
        while True:
            candidate = new_id()
            if placement.owner_of(candidate) == node_id:
                return candidate

    return draw
