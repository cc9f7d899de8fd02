"""What a hot message costs in memory under three layouts, and what each costs a read.

    python -m bench.layout [--messages N]

Each layout holds N messages (default 10^6) shaped as `bench.scale` seeds them
(1,000-message conversations of 200-char texts), built in a fresh process so its RSS
growth is the layout's alone:

- `tree`: what the node holds today, `engine.tree.MessageTree` of `Message` Structs.
- `structs`: the same Structs (sharing equal values as the tree makes them) in a plain
  list, the tree's indexes dropped: the floor of any layout whose nodes are `Message`
  Structs.
- `lean`: the leanest node a Struct layout can have whose reads still return nodes that
  already exist: a `gc=False` Struct per message holding its id, parent, first child and
  next sibling, text without its wrapper, a float timestamp and one small shared code
  for role, author and status (no depth, seq or metadata), with one id -> node dict.
  It cannot answer the wire (no depth, no datetime); it is the floor of the node model
  DESIGN.md names, measured rather than argued.
- `columns`: a prototype columnar layout, per conversation: an id -> row dict, the id
  strings, parent/first-child/next-sibling/kind/seq arrays, float timestamps, and
  text content without its `{"type":"text","text":...}` wrapper. Nodes are built
  on demand, as `Message` Structs, when a read returns them.

For each it reports bytes per message beyond the text and the in-process lineage at
depth 100: walking it, and (for columns) building the nodes the read returns.
See docs/decisions.md, "Hot nodes share equal values".
"""

from __future__ import annotations

import argparse
import array
import json
import random
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

import msgspec

from bench.scale import CHAIN, PER_CONVERSATION, TEXT_CHARS, conversation, percentiles, texts
from engine.tree import MessageTree
from persistence.records import Message

LAYOUTS = ("tree", "structs", "lean", "columns")
_TEXT = b'{"type":"text","text":'
_NO_METADATA: dict[str, str] = {}


class Kinds:
    """Each distinct (role, created_by, status) once, numbered in order of first use."""

    def __init__(self) -> None:
        self.values: list[tuple[str, str, str]] = []
        self._codes: dict[tuple[str, str, str], int] = {}

    def code(self, node: Message) -> int:
        kind = (node.role, node.created_by, node.status)
        code = self._codes.setdefault(kind, len(self.values))
        if code == len(self.values):
            self.values.append(kind)
        return code


class LeanNode(msgspec.Struct, gc=False):
    message_id: str
    parent: LeanNode | None
    first_child: LeanNode | None
    next_sibling: LeanNode | None
    content: bytes
    created: float
    kind: int  # in Lean.kinds


class Lean:
    """One conversation's messages as the leanest Structs; children newest first."""

    kinds = Kinds()  # one table for every conversation

    def __init__(self) -> None:
        self.nodes: dict[str, LeanNode] = {}

    def add(self, node: Message) -> None:
        parent = None if node.parent_id is None else self.nodes[node.parent_id]
        lean = LeanNode(
            node.message_id,
            parent,
            None,
            None if parent is None else parent.first_child,
            _unwrapped(node.content),
            node.created_at.timestamp(),
            self.kinds.code(node),
        )
        if parent is not None:
            parent.first_child = lean
        self.nodes[node.message_id] = lean

    def lineage(self, message_id: str) -> list[LeanNode]:
        path = []
        node: LeanNode | None = self.nodes[message_id]
        while node is not None:
            path.append(node)
            node = node.parent
        path.reverse()
        return path


def _unwrapped(content: bytes) -> bytes:
    """A text content's JSON string alone; any other content as it is."""
    if content.startswith(_TEXT + b'"') and content.endswith(b"}"):  # a JSON string follows
        return content[len(_TEXT) : -1]
    return content


class Columns:
    """One conversation's messages as columns; rows are in creation order."""

    def __init__(self) -> None:
        self.rows: dict[str, int] = {}
        self.ids: list[str] = []
        self.parents = array.array("i")
        self.first_child = array.array("i")
        self.next_sibling = array.array("i")
        self.kinds = array.array("I")  # codes in kind_table
        self.kind_table = Kinds()
        self.seqs = array.array("i")
        self.created = array.array("d")
        self.contents: list[bytes] = []

    def add(self, node: Message) -> None:
        row = len(self.ids)
        parent = -1 if node.parent_id is None else self.rows[node.parent_id]
        self.rows[node.message_id] = row
        self.ids.append(node.message_id)
        self.parents.append(parent)
        self.first_child.append(-1)
        self.next_sibling.append(-1 if parent < 0 else self.first_child[parent])
        if parent >= 0:
            self.first_child[parent] = row  # children are read back newest first
        self.kinds.append(self.kind_table.code(node))
        self.seqs.append(node.seq)
        self.created.append(node.created_at.timestamp())
        self.contents.append(_unwrapped(node.content))

    def path(self, message_id: str) -> list[int]:
        parents = self.parents
        row = self.rows[message_id]
        rows = []
        while row >= 0:
            rows.append(row)
            row = parents[row]
        rows.reverse()
        return rows

    def lineage(self, message_id: str) -> list[Message]:
        ids, parents, kinds, values = self.ids, self.parents, self.kinds, self.kind_table.values
        fromtimestamp = datetime.fromtimestamp
        nodes = []
        for depth, row in enumerate(self.path(message_id), 1):
            role, created_by, status = values[kinds[row]]
            content = self.contents[row]
            if content[:1] == b'"':
                content = _TEXT + content + b"}"
            parent = parents[row]
            nodes.append(
                Message(
                    ids[row],
                    ids[parent] if parent >= 0 else None,
                    role,
                    content,
                    _NO_METADATA,
                    fromtimestamp(self.created[row], UTC),
                    created_by,
                    depth,
                    self.seqs[row],
                    status,
                )
            )
        return nodes


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(list[Message]).decode


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def median_us(call: Any, repeat: int = 2000) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return percentiles(times)[0] * 1e6


def measure(layout: str, messages: int) -> dict[str, object]:
    # Generated and encoded first, as the store holds them; decoding is then all that
    # allocates while the layout grows, as in an activation.
    content = texts(random.Random(messages))
    encoded, tip_id = [], ""
    for index in range(messages // PER_CONVERSATION):
        _, nodes, tip_id = conversation(index, content)
        encoded.append(_encode(nodes))
    del nodes
    held: list[object] = []
    last: object = None
    before = rss()
    for blob in encoded:
        nodes = _decode(blob)
        if layout == "lean":
            last = Lean()
            for node in nodes:
                last.add(node)
        elif layout != "columns":
            last = MessageTree(nodes[0])  # the nodes share equal values from here on
            for node in nodes[1:]:
                last.add(node)
            if layout == "structs":
                last = list(last)  # and the tree's indexes are dropped
        elif layout == "columns":
            last = Columns()  # the Structs are garbage after this, as after an activation
            for node in nodes:
                last.add(node)
        held.append(last)
    grown = rss() - before
    row: dict[str, object] = {
        "layout": layout,
        "messages": messages,
        "bytes_per_message_beyond_text": round(grown / messages - TEXT_CHARS, 1),
    }
    if isinstance(last, MessageTree | Lean):
        row["lineage_100_us"] = round(median_us(lambda: last.lineage(tip_id)), 1)
    elif isinstance(last, Columns):
        row["lineage_100_walk_us"] = round(median_us(lambda: last.path(tip_id)), 1)
        row["lineage_100_us"] = round(median_us(lambda: last.lineage(tip_id)), 1)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=10**6)
    parser.add_argument("--child", choices=LAYOUTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, args.messages)))
        return 0
    print(f"{'layout':8} {'B/msg beyond text':>18} {'lineage 100 µs':>15} {'walk only µs':>13}")
    for layout in LAYOUTS:
        command = [sys.executable, "-m", "bench.layout", "--child", layout]
        output = subprocess.run(
            [*command, "--messages", str(args.messages)],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        row = json.loads(output)
        lineage, walk = row.get("lineage_100_us", "-"), row.get("lineage_100_walk_us", "-")
        print(f"{layout:8} {row['bytes_per_message_beyond_text']:>18} {lineage:>15} {walk:>13}")
    print(f"lineage at depth {CHAIN}; medians of 2,000 calls in each layout's process")
    return 0


if __name__ == "__main__":
    sys.exit(main())
