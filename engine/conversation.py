"""A conversation's whole in-memory state and the one function that changes it.

`apply` is the only writer: live mutations and journal replay both go through it, so
a reactivated or recovered conversation is rebuilt exactly as it was served. Each
application also records what it changed into the flusher's `Changes`.
"""

from __future__ import annotations

import logging
from itertools import islice

import msgspec
from msgspec.structs import replace

from engine.budget import (
    CONVERSATION_BYTES,
    MESSAGE_BYTES,
    ROW_BYTES,
    message_bytes,
    metadata_bytes,
    payload_bytes,
)
from engine.content import preview
from engine.tree import MessageTree
from persistence.records import (
    Appended,
    Branch,
    BranchDeleted,
    BranchSet,
    Conversation,
    Created,
    Deleted,
    Event,
    Message,
    Share,
    ShareRevoked,
    ShareSet,
    Snapshot,
    Updated,
)
from persistence.store import Changes

log = logging.getLogger(__name__)

_ROW_BYTES = 200  # rough size of a row besides its content, for the unflushed-bytes limit


class ConversationState:
    __slots__ = ("meta", "tree", "branches", "shares", "_message_bytes")

    def __init__(
        self,
        meta: Conversation,
        messages: list[Message],
        branches: list[Branch],
        shares: list[Share],
    ) -> None:
        self.meta = meta
        self.tree = MessageTree(messages[0])  # the root comes first
        orphans = self.tree.extend(islice(messages, 1, None))  # in creation order
        if orphans:  # stored by a node before replay stopped at gaps; never served
            log.error("conversation %s: %d stored messages without a parent skipped",
                      meta.conversation_id, orphans)  # fmt: skip
        self.branches: dict[str, Branch] = {b.branch_id: b for b in branches}
        self.shares: dict[str, Share] = {s.shared_with: s for s in shares}
        self._message_bytes = (  # message_bytes of each, summed
            MESSAGE_BYTES * len(self.tree)
            + sum([len(m.content) for m in self.tree])
            + sum([metadata_bytes(m.content_metadata) for m in self.tree if m.content_metadata])
        )

    @classmethod
    def from_snapshot(cls, snapshot: Snapshot) -> ConversationState:
        return cls(snapshot.conversation, snapshot.messages, snapshot.branches, snapshot.shares)

    @classmethod
    def from_created(cls, seq: int, event: Created, changes: Changes) -> ConversationState:
        meta = replace(event.conversation, version=seq)
        if len(event.messages) > 1:  # a fork: its newest copied message
            meta = replace(meta, last_message=preview(event.messages[-1].content))
        state = cls(meta, event.messages, [], [])
        changes.messages.update((m.message_id, m) for m in event.messages)
        changes.nbytes += sum(
            payload_bytes(m.content, m.content_metadata) + _ROW_BYTES for m in event.messages
        )
        state._record(changes)
        return state

    @property
    def version(self) -> int:
        return self.meta.version

    @property
    def nbytes(self) -> int:
        """What keeping this conversation hot costs (the memory budget's model)."""
        rows = len(self.branches) + len(self.shares)
        return CONVERSATION_BYTES + self._message_bytes + ROW_BYTES * rows

    def refuses(self, event: Event) -> str | None:
        """Why a replayed event cannot apply to this state (live mutations are validated
        before they are journaled, so only damage or a gap makes one inconsistent).

        A store write cut short (a crash, or one of its batches failing) can leave rows
        of records after the stored version in the store: a message, a deleted branch or
        share, without the conversation row that carries the version. Those records
        apply again over themselves: the message as it is stored, the deletion a no-op.
        """
        match event:
            case Appended(message=node, branch_id=branch_id):
                if node.parent_id not in self.tree:
                    return f"the parent of message {node.message_id} is missing"
                held = self.tree.get(node.message_id)
                if held is not None and held != node:
                    return f"message {node.message_id} exists already"
                if branch_id is not None and branch_id not in self.branches:
                    return f"branch {branch_id} is missing"
            case BranchSet(branch=branch) if branch.leaf_message_id not in self.tree:
                return f"leaf {branch.leaf_message_id} is missing"
            case Created():
                return "the conversation exists already"
        return None

    def apply(self, seq: int, event: Event, changes: Changes) -> None:
        """Apply one journaled event (already validated) and record what it changed."""
        meta = self.meta
        tree = self.tree
        match event:
            case Appended(message=node, branch_id=branch_id):
                if node.message_id not in tree:  # else stored ahead of the row (`refuses`)
                    tree.add(node)
                    self._message_bytes += message_bytes(node.content, node.content_metadata)
                changes.messages[node.message_id] = node
                changes.nbytes += payload_bytes(node.content, node.content_metadata)
                meta = replace(
                    meta,
                    message_count=meta.message_count + 1,
                    updated_at=node.created_at,
                    last_message=preview(node.content),
                )
                if branch_id is not None:
                    self._set_branch(
                        replace(
                            self.branches[branch_id],
                            leaf_message_id=node.message_id,
                            last_updated=node.created_at,
                        ),
                        changes,
                    )
            case Updated(at=at, title=title, description=description, is_public=is_public):
                meta = replace(
                    updated(meta, event),
                    title=meta.title if title is None else title,
                    description=meta.description if description is None else description,
                    is_public=meta.is_public if is_public is None else is_public,
                    updated_at=at,
                )
                if (title, description, is_public) != (None, None, None):  # the root shows them
                    root = replace(tree.root, content=root_content(meta))
                    self._message_bytes += len(root.content) - len(tree.root.content)
                    tree.replace(root)
                    changes.messages[root.message_id] = root
            case Deleted(at=at):
                meta = replace(meta, deleted=True, updated_at=at)
            case BranchSet(branch=branch):
                self._set_branch(branch, changes)
            case BranchDeleted(branch_id=branch_id):
                self.branches.pop(branch_id, None)
                changes.branches[branch_id] = None
            case ShareSet(share=share):
                # Re-sharing moves the user last: shares stay ordered by shared_at, as loaded.
                self.shares.pop(share.shared_with, None)
                self.shares[share.shared_with] = share
                changes.shares[share.shared_with] = share
            case ShareRevoked(shared_with=user):
                self.shares.pop(user, None)
                changes.shares[user] = None
            case Created():
                raise ValueError("Created applies only to a new conversation")
        self.meta = replace(meta, version=seq)
        changes.nbytes += _ROW_BYTES
        self._record(changes)

    def _set_branch(self, branch: Branch, changes: Changes) -> None:
        self.branches[branch.branch_id] = branch
        changes.branches[branch.branch_id] = branch

    def _record(self, changes: Changes) -> None:
        changes.conversation = self.meta
        changes.version = self.meta.version


def updated(meta: Conversation, event: Updated) -> Conversation:
    """The session fields an update sets (favorite, archived, tags, expiry)."""
    expires_at = None if event.clears_expiry else event.expires_at or meta.expires_at
    return replace(
        meta,
        is_favorite=meta.is_favorite if event.is_favorite is None else event.is_favorite,
        archived=meta.archived if event.archived is None else event.archived,
        tags=meta.tags if event.tags is None else event.tags,
        expires_at=expires_at,
    )


def root_content(meta: Conversation) -> bytes:
    """The root message's `metadata` content: title, description and is_public always,
    fork provenance when there is some (as seed 000 writes it)."""
    body: dict[str, object] = {
        "type": "metadata",
        "title": meta.title,
        "description": meta.description,
        "is_public": meta.is_public,
    }
    if meta.fork_from_conversation_id is not None:
        body["fork_from_conversation_id"] = meta.fork_from_conversation_id
    if meta.fork_from_message_id is not None:
        body["fork_from_message_id"] = meta.fork_from_message_id
    return msgspec.json.encode(body)
