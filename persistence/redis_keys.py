"""Every Redis key Canopy uses, in one place."""

from __future__ import annotations

PREFIX = "canopy:"


def journal(conversation_id: str) -> str:
    """Stream of a conversation's unflushed journal records; entry id = `{seq}-1`."""
    return f"{PREFIX}journal:{{{conversation_id}}}"


def epoch(conversation_id: str) -> str:
    """Ownership epoch of a conversation, incremented at each activation (fencing)."""
    return f"{PREFIX}epoch:{{{conversation_id}}}"


# Conversations whose journal stream is not empty: what start-up recovery replays.
JOURNALED = f"{PREFIX}journaled"

# Journal records recovery could not apply (undecodable, after a gap): kept, never trimmed.
# One hash tag for both, so the script that writes them touches one slot.
SET_ASIDE = f"{PREFIX}{{set-aside}}:records"
SET_ASIDE_SEEN = f"{PREFIX}{{set-aside}}:origins"  # each record's origin, to copy it once


def rate_bucket(caller: str) -> str:
    """A caller's token bucket (hash: tokens, at), expiring once it would be full again."""
    return f"{PREFIX}rate:{{{caller}}}"


# A node's separate flusher process (`canopy flusher`): `node` names the serving node.
def dirty(node: str) -> str:
    """Set of conversations the node journaled since its flusher last took them (SPOP)."""
    return f"{PREFIX}flusher:{{{node}}}:dirty"


def flusher_lease(node: str) -> str:
    """The node's flusher holds this (SET NX PX, renewed): a second one refuses to run."""
    return f"{PREFIX}flusher:{{{node}}}:lease"


def flushed(node: str) -> str:
    """Stream of what the node's flusher stored: one entry per cycle, `s` = [[cid, version]]."""
    return f"{PREFIX}flusher:{{{node}}}:flushed"


def flusher_stats(node: str) -> str:
    """Hash of the node's flusher counters (backlog, failures, rows written), per cycle."""
    return f"{PREFIX}flusher:{{{node}}}:stats"
