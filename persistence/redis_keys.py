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
