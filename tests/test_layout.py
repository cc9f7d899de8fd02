"""bench.layout's columnar prototype answers what the tree answers, so its timings count."""

from __future__ import annotations

import random

import msgspec

from bench.layout import Columns
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
