"""A conversation's message tree: nodes by id, a children index, lineage by parent walk.

Nodes are immutable `Message` Structs; the tree only adds and replaces them. Lineage
is derived (an O(depth) walk of parent ids), never stored per node.

A node costs memory for as long as its conversation is hot, so the tree keeps nodes
compact: on insertion, field values equal to an object another node holds are swapped
for that object (the parent's id string, one empty metadata dict, interned role,
author and status strings, shared seq ints). Values never change, only which object
holds them, so what nodes compare and encode to is untouched. The children index holds
a lone child as the node itself and a list only from the second child on: most
messages have exactly one child.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from itertools import islice

from persistence.records import Message

_NO_CHILDREN: tuple[Message, ...] = ()
# Shared by every node without metadata, as a fork's copies share their source's dicts:
# nodes are immutable, so it is never mutated.
_NO_METADATA: dict[str, str] = {}
_intern = sys.intern
# One int object per seq value below this, for the nodes of every conversation. CPython
# shares the ints up to 256 itself; every decoded seq above is a fresh 32-byte object.
_SHARED_SEQS = 4096
INDEXED_FROM = 2048  # a page starting this deep reads the creation-order index
_SEQS = tuple(range(_SHARED_SEQS))


class MessageTree:
    __slots__ = ("_nodes", "_children", "root", "_ordered")

    def __init__(self, root: Message) -> None:
        _share(root)
        self._nodes: dict[str, Message] = {root.message_id: root}
        # parent id -> its only child, or its children (2 or more) in creation order
        self._children: dict[str, Message | list[Message]] = {}
        self.root = root
        # The nodes in creation order, made by the first page deep in the tree and kept
        # while nodes are added: a dict reaches its n-th value only by walking to it, so a
        # page at cursor 999,990 of 1M messages walked 6 ms of loop (found by review).
        self._ordered: list[Message] | None = None

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._nodes

    def __iter__(self) -> Iterator[Message]:
        """Every node in creation order."""
        return iter(self._nodes.values())

    def get(self, message_id: str) -> Message | None:
        return self._nodes.get(message_id)

    def add(self, node: Message) -> None:
        """Insert a node whose parent is already in the tree."""
        parent_id = node.parent_id
        if parent_id is not None:
            parent = self._nodes.get(parent_id)
            if parent is not None:  # a new index key is the parent's own id string
                node.parent_id = parent_id = parent.message_id
        _share(node)
        self._nodes[node.message_id] = node
        if self._ordered is not None:
            self._ordered.append(node)
        if parent_id is None:
            return
        siblings = self._children.get(parent_id)
        if siblings is None:
            self._children[parent_id] = node
        elif isinstance(siblings, list):
            siblings.append(node)
        else:
            self._children[parent_id] = [siblings, node]

    def extend(self, nodes: Iterable[Message]) -> int:
        """Insert nodes in creation order (a parent before its children), as `add` does
        each; a node whose parent is missing or whose id is taken is skipped. The number
        skipped. A fork or a load builds its whole tree here: `add` and the membership
        checks around it, as method calls, cost twice as much per node."""
        tree, children = self._nodes, self._children
        self._ordered = None  # made again by the next deep page
        skipped = 0
        for node in nodes:
            parent_id = node.parent_id
            parent = tree.get(parent_id) if parent_id is not None else None
            if parent is None or node.message_id in tree:
                skipped += 1
                continue
            node.parent_id = parent_id = parent.message_id  # the parent's own id string
            _share(node)
            tree[node.message_id] = node
            siblings = children.get(parent_id)
            if siblings is None:
                children[parent_id] = node
            elif isinstance(siblings, list):
                siblings.append(node)
            else:
                children[parent_id] = [siblings, node]
        return skipped

    def replace(self, node: Message) -> None:
        """Swap in a new version of an existing node (status updates)."""
        old = self._nodes[node.message_id]
        _share(node)
        self._nodes[node.message_id] = node
        self._ordered = None  # made again by the next deep page
        if node.parent_id is None:
            self.root = node
            return
        siblings = self._children[node.parent_id]
        if isinstance(siblings, list):
            siblings[siblings.index(old)] = node
        else:
            self._children[node.parent_id] = node

    def slice(self, start: int, stop: int) -> list[Message]:
        """The nodes at positions start..stop-1 of creation order."""
        if start < INDEXED_FROM:  # near the root, walking there costs less than an index
            return list(islice(self._nodes.values(), start, stop))
        ordered = self._ordered
        if ordered is None:
            ordered = self._ordered = list(self._nodes.values())
        return ordered[start:stop]

    def children(self, message_id: str) -> list[Message] | tuple[Message, ...]:
        """The node's children in creation order."""
        found = self._children.get(message_id)
        if found is None:
            return _NO_CHILDREN
        if isinstance(found, list):
            return found
        return (found,)

    def lineage(self, message_id: str) -> list[Message]:
        """Nodes from the root down to `message_id` (which must be in the tree)."""
        nodes = self._nodes
        path = []
        node: Message | None = nodes[message_id]
        while node is not None:
            path.append(node)
            # .get: the tree refuses orphans, and a read must never raise on one anyway
            node = nodes.get(node.parent_id) if node.parent_id is not None else None
        path.reverse()
        return path


def _share(node: Message) -> None:
    """Swap the node's field values for equal objects that other nodes already hold."""
    metadata = node.content_metadata
    if metadata is _NO_METADATA:
        return  # the node (or the one it was copied from, for a fork) was shared before
    if not metadata:
        node.content_metadata = _NO_METADATA
    node.role = _intern(node.role)
    node.created_by = _intern(node.created_by)
    node.status = _intern(node.status)
    if 256 < node.seq < _SHARED_SEQS:
        node.seq = _SEQS[node.seq]
