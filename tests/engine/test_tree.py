"""MessageTree: the in-memory index of one conversation's nodes."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest
from msgspec.structs import replace

from engine.tree import INDEXED_FROM, MessageTree
from persistence.records import Message

AT = datetime(2024, 1, 1, tzinfo=UTC)


def node(message_id: str, parent: Message | None = None, seq: int = 0) -> Message:
    depth = 1 if parent is None else parent.depth + 1
    parent_id = None if parent is None else parent.message_id
    role = "root" if parent is None else "human"
    return Message(
        message_id, parent_id, role, b'{"type":"text","text":"x"}', {}, AT, "u", depth, seq
    )


def chain(length: int) -> tuple[MessageTree, list[Message]]:
    """A tree that is one path of `length` nodes, root first."""
    nodes = [node("m0")]
    tree = MessageTree(nodes[0])
    for seq in range(1, length):
        nodes.append(node(f"m{seq}", nodes[-1], seq))
        tree.add(nodes[-1])
    return tree, nodes


def test_new_tree_holds_only_its_root() -> None:
    root = node("root")
    tree = MessageTree(root)
    assert len(tree) == 1
    assert tree.root is root
    assert tree.get("root") is root
    assert "root" in tree
    assert list(tree) == [root]
    assert list(tree.children("root")) == []


def test_add_makes_a_node_gettable_and_contained() -> None:
    root = node("root")
    tree = MessageTree(root)
    child = node("child", root, 1)
    tree.add(child)
    assert len(tree) == 2
    assert tree.get("child") is child
    assert "child" in tree


def test_unknown_ids_are_absent() -> None:
    tree = MessageTree(node("root"))
    assert tree.get("nope") is None
    assert "nope" not in tree
    assert 42 not in tree


def test_iteration_follows_creation_order_across_parents() -> None:
    root = node("root")
    tree = MessageTree(root)
    a = node("a", root, 1)
    b = node("b", root, 2)
    a1 = node("a1", a, 3)
    b1 = node("b1", b, 4)
    a2 = node("a2", a, 5)
    for n in (a, b, a1, b1, a2):
        tree.add(n)
    assert [n.message_id for n in tree] == ["root", "a", "b", "a1", "b1", "a2"]


def test_children_are_in_insertion_order_and_per_parent() -> None:
    root = node("root")
    tree = MessageTree(root)
    kids = [node(f"k{i}", root, i + 1) for i in range(3)]
    grandchild = node("g", kids[1], 4)
    for n in (*kids, grandchild):
        tree.add(n)
    assert list(tree.children("root")) == kids
    assert list(tree.children("k1")) == [grandchild]
    assert list(tree.children("k0")) == []
    assert list(tree.children("unknown")) == []


@pytest.mark.parametrize("depth", [1, 2, 1000])
def test_lineage_runs_from_root_to_node(depth: int) -> None:
    tree, nodes = chain(depth)
    path = tree.lineage(nodes[-1].message_id)
    assert path == nodes
    assert len(path) == depth == path[-1].depth
    assert path[0] is tree.root


def test_lineage_of_a_branch_skips_siblings() -> None:
    root = node("root")
    tree = MessageTree(root)
    a, b = node("a", root, 1), node("b", root, 2)
    b1 = node("b1", b, 3)
    for n in (a, b, b1):
        tree.add(n)
    assert [n.message_id for n in tree.lineage("b1")] == ["root", "b", "b1"]
    assert [n.message_id for n in tree.lineage("a")] == ["root", "a"]


def test_lineage_of_unknown_id_raises_key_error() -> None:
    tree = MessageTree(node("root"))
    with pytest.raises(KeyError):
        tree.lineage("nope")


def test_replace_swaps_a_node_everywhere_it_is_seen() -> None:
    root = node("root")
    tree = MessageTree(root)
    a, b = node("a", root, 1), node("b", root, 2)
    a1 = node("a1", a, 3)
    for n in (a, b, a1):
        tree.add(n)
    done = replace(a, status="failed")
    tree.replace(done)
    assert tree.get("a") is done
    assert list(tree.children("root")) == [done, b]
    assert tree.lineage("a1") == [root, done, a1]
    assert [n.message_id for n in tree] == ["root", "a", "b", "a1"]
    assert next(n for n in tree if n.message_id == "a").status == "failed"
    assert len(tree) == 4


def test_replace_root_updates_root_and_lineage() -> None:
    root = node("root")
    tree = MessageTree(root)
    a = node("a", root, 1)
    tree.add(a)
    new_root = replace(root, content=b'{"type":"metadata","title":"new"}')
    tree.replace(new_root)
    assert tree.root is new_root
    assert tree.get("root") is new_root
    assert tree.lineage("a") == [new_root, a]
    assert list(tree.children("root")) == [a]
    assert list(tree) == [new_root, a]


def test_replace_of_unknown_node_raises_key_error() -> None:
    tree = MessageTree(node("root"))
    with pytest.raises(KeyError):
        tree.replace(node("ghost", node("root")))


def test_children_keep_creation_order_past_one_child() -> None:
    root = node("root")
    tree = MessageTree(root)
    kids = [node(f"k{i}", root, i + 1) for i in range(3)]
    seen = []
    for kid in kids:
        tree.add(kid)
        seen.append(kid)
        assert list(tree.children("root")) == seen
        assert all(a is b for a, b in zip(tree.children("root"), seen, strict=True))


@pytest.mark.parametrize("siblings", [1, 2, 3])
def test_replace_a_child_keeps_its_place(siblings: int) -> None:
    root = node("root")
    tree = MessageTree(root)
    kids = [node(f"k{i}", root, i + 1) for i in range(siblings)]
    for kid in kids:
        tree.add(kid)
    done = replace(kids[-1], status="failed")
    tree.replace(done)
    assert list(tree.children("root")) == [*kids[:-1], done]
    assert tree.children("root")[-1] is done


def decoded(message: Message) -> Message:
    """The node as activation builds it: decoded from the store, every value a fresh object."""
    return msgspec.msgpack.decode(msgspec.msgpack.encode(message), type=Message)


def test_nodes_share_equal_values_without_changing_them() -> None:
    root = decoded(node("root"))
    tree = MessageTree(root)
    first = decoded(replace(node("a", root, 300), created_by="u"))
    second = decoded(replace(node("b", first, 301), created_by="u"))
    encoded = [msgspec.msgpack.encode(n) for n in (first, second)]
    assert first.parent_id is not root.message_id  # a decoded copy of the same string
    tree.add(first)
    tree.add(second)
    assert [msgspec.msgpack.encode(n) for n in (first, second)] == encoded
    assert first.parent_id is root.message_id
    assert second.parent_id is first.message_id
    assert first.content_metadata is second.content_metadata is root.content_metadata
    assert first.role is second.role
    assert first.created_by is second.created_by is root.created_by
    assert first.status is second.status is root.status
    assert (first.seq, second.seq) == (300, 301)
    assert tree.lineage("b") == [root, first, second]


def test_seq_values_are_shared_across_trees() -> None:
    left, right = decoded(node("l", node("root"), 1000)), decoded(node("r", node("root"), 1000))
    MessageTree(node("root")).add(left)
    MessageTree(node("root")).add(right)
    assert left.seq is right.seq


def test_metadata_is_kept_when_present() -> None:
    root = node("root")
    tree = MessageTree(root)
    child = replace(node("a", root, 1), content_metadata={"model": "m"})
    tree.add(child)
    assert child.content_metadata == {"model": "m"}
    assert child.content_metadata is not root.content_metadata


def test_extend_builds_what_add_builds_and_skips_orphans_and_repeats() -> None:
    root = node("r")
    a, b = node("a", root, 1), node("b", root, 2)
    a1, a2 = node("a1", a, 3), node("a2", a, 4)
    a1.parent_id = "".join(["a", ""])  # equal to a's id, another object (as a decoder makes)
    assert a1.parent_id is not a.message_id
    stray = node("s", node("elsewhere"), 5)  # its parent is in no tree
    repeat = node("a", root, 6)  # an id the tree holds already
    extended = MessageTree(replace(root))
    skipped = extended.extend([replace(n) for n in (a, b, a1, stray, repeat, a2)])
    added = MessageTree(replace(root))
    for n in (a, b, a1, a2):
        added.add(replace(n))
    assert skipped == 2
    assert [n.message_id for n in extended] == ["r", "a", "b", "a1", "a2"]
    for tree in (extended, added):
        assert [c.message_id for c in tree.children("r")] == ["a", "b"]
        assert [c.message_id for c in tree.children("a")] == ["a1", "a2"]
        assert [n.message_id for n in tree.lineage("a2")] == ["r", "a", "a2"]
        parent = tree.get("a")
        child = tree.get("a1")
        assert parent is not None and child is not None
        assert child.parent_id is parent.message_id  # the parent's own id string, shared
    assert "s" not in extended and extended.get("a") is not None
    assert extended.get("a").seq == 1  # type: ignore[union-attr]  # the first "a" stays


def test_a_deep_slice_reads_the_creation_order_index_and_stays_right() -> None:
    """A dict reaches its n-th value only by walking there: a deep page walked O(cursor)
    on the loop (6 ms at 1M messages, found by review). The index follows adds, and a
    replace or an extend drops it to be made again."""
    tree, nodes = chain(3 * INDEXED_FROM)
    start = 2 * INDEXED_FROM
    assert tree.slice(start, start + 5) == nodes[start : start + 5]
    assert tree._ordered is not None  # made by the deep page
    assert tree.slice(1, 4) == nodes[1:4]  # near the root: walked
    added = node("late", nodes[-1], seq=len(nodes))
    tree.add(added)
    assert tree.slice(len(nodes) - 1, len(nodes) + 9) == [nodes[-1], added]
    renamed = replace(nodes[start], role="system")
    tree.replace(renamed)
    assert tree._ordered is None
    assert tree.slice(start, start + 2) == [renamed, nodes[start + 1]]
    more = node("more", added, seq=len(nodes) + 1)
    assert tree.extend([more]) == 0
    assert tree.slice(len(nodes), len(nodes) + 5) == [added, more]
