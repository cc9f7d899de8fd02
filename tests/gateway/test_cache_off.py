"""`--cache off`: the store-backed comparison mode really serves from the store.

The whole HTTP suite also runs in this mode (the `embedded-cache-off` backend); these
tests show what makes it the conventional design: every acknowledged write is already
in the store, and every read sees what the store holds, even a change made behind the
node's back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from gateway_helpers import append, chain, conv_path, new_conversation, ok
from msgspec.structs import replace

from persistence.sqlite import SQLiteStore
from persistence.store import Changes

if TYPE_CHECKING:
    from conftest import Node


@pytest.fixture
def backend() -> dict[str, str]:
    return {"cache": "off"}


async def test_acknowledged_writes_are_already_in_the_store(node: Node) -> None:
    cid, root = await new_conversation(node)
    messages = await chain(node, cid, 3)
    async with SQLiteStore(node.settings.data_dir / "canopy.db") as store:  # a second reader
        snapshot = await store.load(cid)
    assert snapshot is not None
    assert [m.message_id for m in snapshot.messages] == [root] + [m["message_id"] for m in messages]
    assert snapshot.conversation.message_count == 4
    assert not (node.settings.data_dir / "journal").exists()  # no journal in this mode


async def test_reads_see_changes_made_behind_the_nodes_back(node: Node) -> None:
    cid, root = await new_conversation(node)
    message = await append(node, cid, root, "before")
    async with SQLiteStore(node.settings.data_dir / "canopy.db") as store:
        snapshot = await store.load(cid)
        assert snapshot is not None
        stored = snapshot.messages[1]
        edited = replace(stored, content=b'{"type":"text","text":"after"}')
        version = snapshot.conversation.version + 1
        changes = Changes(
            conversation=replace(snapshot.conversation, version=version),
            messages={edited.message_id: edited},
            version=version,
        )
        await store.write(cid, changes)
    path = conv_path(cid, f"/messages/{message['message_id']}")
    assert (await ok(node, "GET", path))["content"]["text"] == "after"
    assert (await ok(node, "GET", path + "/lineage"))[-1]["content"]["text"] == "after"
    children = await ok(node, "GET", conv_path(cid, f"/messages/{root}/children"))
    assert [c["content"]["text"] for c in children] == ["after"]
