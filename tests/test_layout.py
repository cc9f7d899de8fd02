"""bench.layout's prototypes answer what the tree answers, so their timings count."""

from __future__ import annotations

import random

import msgspec

from bench.layout import Columns, Lean
from bench.scale import conversation, texts
from engine.tree import MessageTree
from persistence.records import Message


def test_columns_rebuild_the_nodes_the_tree_holds() -> None:
    _, nodes, tip_id = conversation(3, texts(random.Random(3)))
    # a content that is not a plain text keeps its wrapper, and metadata-free nodes stay so
    nodes[5] = msgspec.structs.replace(nodes[5], content=b'{"type":"text","text":1}')
    decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(nodes), type=list[Message])
    tree, columns = MessageTree(decoded[0]), Columns()
    columns.add(decoded[0])
    for node in decoded[1:]:
        tree.add(node)
        columns.add(node)
    for message_id in (tip_id, nodes[0].message_id, nodes[5].message_id, nodes[-1].message_id):
        assert columns.lineage(message_id) == tree.lineage(message_id)
    assert len(columns.path(tip_id)) == 100


def test_lean_nodes_walk_the_lineage_and_children_the_tree_holds() -> None:
    _, nodes, tip_id = conversation(4, texts(random.Random(4)))
    tree, lean = MessageTree(nodes[0]), Lean()
    lean.add(nodes[0])
    for node in nodes[1:]:
        tree.add(node)
        lean.add(node)
    for message_id in (tip_id, nodes[0].message_id, nodes[-1].message_id):
        walked = lean.lineage(message_id)
        assert [n.message_id for n in walked] == [n.message_id for n in tree.lineage(message_id)]
        assert [n.created for n in walked] == [
            n.created_at.timestamp() for n in tree.lineage(message_id)
        ]
    for parent in (nodes[0], nodes[2]):
        children, child = [], lean.nodes[parent.message_id].first_child
        while child is not None:
            children.append(child.message_id)
            child = child.next_sibling
        assert children[::-1] == [n.message_id for n in tree.children(parent.message_id)]
    text = lean.nodes[tip_id].content  # the text alone, still a JSON string
    assert msgspec.json.decode(b'{"type":"text","text":' + text + b"}") == msgspec.json.decode(
        tree.get(tip_id).content
    )
