"""Large conversations written straight into a node's store, as a flush would leave them.

Thousands of appends over HTTP would take seconds per backend; a store write takes
one batch. The node activates the conversation from the store on first touch.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from engine.conversation import root_content
from gateway.app import open_store
from gateway.config import Settings
from persistence.records import Conversation, Message
from persistence.store import Changes

_AT = datetime(2026, 1, 1, tzinfo=UTC)
TEXT = b'{"type":"text","text":"' + b"x" * 200 + b'"}'


@dataclass
class Seeded:
    conversation_id: str
    chain: list[Message]  # root .. the deepest message
    children: list[Message]  # under the deepest message, in creation order


def deep_conversation(depth: int, children: int = 0) -> Seeded:
    """A chain from the root down to `depth`, and `children` more under its last message."""
    cid = str(uuid.uuid4())
    meta = Conversation(
        cid, str(uuid.uuid4()), "deep", None, _AT, "owner", _AT, False, None, None, 0, 1
    )
    nodes = [Message(meta.root_id, None, "root", root_content(meta), {}, _AT, "owner", 1, 0)]

    def add(parent: Message) -> Message:
        seq = len(nodes)
        at = _AT + timedelta(milliseconds=seq)
        node = Message(
            str(uuid.uuid4()), parent.message_id, "human", TEXT, {}, at, "owner",
            parent.depth + 1, seq,
        )  # fmt: skip
        nodes.append(node)
        return node

    for _ in range(depth - 1):
        add(nodes[-1])
    chain = list(nodes)
    under = [add(chain[-1]) for _ in range(children)]
    return Seeded(cid, chain, under)


SEED_CHUNK = 1_000  # messages per store write


async def seed(settings: Settings, seeded: Seeded) -> None:
    """Write the conversation into the store `settings` name (before the node starts)."""
    nodes = [*seeded.chain, *seeded.children]
    root = nodes[0]
    meta = Conversation(
        seeded.conversation_id, root.message_id, "deep", None, _AT, "owner", nodes[-1].created_at,
        False, None, None, len(nodes), 1,
    )  # fmt: skip
    async with open_store(settings) as store:
        # In writes of a fork's size: one write of 10,000 messages sends ~140 batches at
        # once, and a shared Cassandra on a busy machine let one pass its request timeout.
        for start in range(0, len(nodes), SEED_CHUNK):
            chunk = nodes[start : start + SEED_CHUNK]
            last = start + SEED_CHUNK >= len(nodes)
            changes = Changes(
                conversation=meta if last else None,
                messages={node.message_id: node for node in chunk},
                version=1,
            )
            await store.write(seeded.conversation_id, changes)
