"""Retention: an expired conversation is removed from the store (and so from the
journal's replay), not only hidden; one whose expiry is still ahead is kept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from gateway_helpers import (
    chain,
    conv_path,
    create_branch,
    expect_error,
    new_conversation,
    ok,
    share,
)

from gateway.keys import FLUSHER, RETENTION, STORE

if TYPE_CHECKING:
    from conftest import Node, NodeFactory


def rfc3339(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


async def stored(node: Node, cid: str, message_id: str, root: str) -> tuple[bool, int, int]:
    """What the node's store still holds of a conversation: (row live, lineage, children)."""
    store = node.app[STORE]
    snapshot = await store.load(cid)
    live = snapshot is not None and not snapshot.conversation.deleted
    lineage = await store.lineage(cid, message_id)
    children = await store.children(cid, root)
    return live, len(lineage), len(children)


async def test_an_expired_conversation_is_removed_from_the_store(
    node: Node, start_node: NodeFactory
) -> None:
    later = rfc3339(datetime.now(UTC) + timedelta(days=1))
    kept, kept_root = await new_conversation(node, title="kept", expires_at=later)
    [kept_message] = await chain(node, kept, 1)
    cid, root = await new_conversation(node, title="expiring", ttl_seconds=3600)
    [message] = await chain(node, cid, 1)
    await create_branch(node, cid, message["message_id"])
    await share(node, cid, "bob", "read")
    just_past = rfc3339(datetime.now(UTC) - timedelta(seconds=1))
    await ok(node, "PATCH", conv_path(cid), {"expires_at": just_past})
    assert await node.app[FLUSHER].flush_all()
    assert await stored(node, cid, message["message_id"], root) == (True, 2, 1)

    assert await node.app[RETENTION].sweep() == 1
    assert await node.app[FLUSHER].flush_all()
    assert await stored(node, cid, message["message_id"], root) == (False, 0, 0)
    store = node.app[STORE]
    assert await store.expired(datetime.now(UTC) + timedelta(days=2), 10) == [kept]
    assert await store.shared("bob") == []
    assert await stored(node, kept, kept_message["message_id"], kept_root) == (True, 2, 1)
    assert await node.app[RETENTION].sweep() == 0  # the kept one is not due
    assert node.app[RETENTION].stats()["swept"] == 1

    await node.close()  # the journal's records of it must not bring it back
    again = await start_node(data_dir=node.settings.data_dir)
    await expect_error(again, "GET", conv_path(cid), 404, "not_found")
    assert await stored(again, cid, message["message_id"], root) == (False, 0, 0)
    assert (await ok(again, "GET", conv_path(kept)))["title"] == "kept"
