"""The Redis keys of membership and the directory (beside persistence/redis_keys.py's,
which another change owns; they can move there). Every key of one conversation is
hash-tagged with its id, so each script touches one Redis Cluster slot."""

from __future__ import annotations

PREFIX = "canopy:"

# Sorted set of member node ids, scored by when their heartbeat expires (ms since the
# epoch): the listing reads live ones by score, no SCAN over the keyspace.
MEMBERS = f"{PREFIX}members"


def member(node_id: str) -> str:
    """A node's heartbeat: its advertised URL and stats as JSON, expiring (PX) unless renewed."""
    return f"{PREFIX}member:{{{node_id}}}"


def lease(conversation_id: str) -> str:
    """The owner of an active conversation, "node-id epoch", expiring (PX) unless renewed."""
    return f"{PREFIX}lease:{{{conversation_id}}}"


def lease_epoch(conversation_id: str) -> str:
    """How many times the conversation's lease was acquired (never expires)."""
    return f"{PREFIX}lease-epoch:{{{conversation_id}}}"
