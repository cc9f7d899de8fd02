"""Every Redis key Canopy uses, in one place.

Every key of one conversation carries the hash tag of its shard (`canopy:{17}:...`),
and so does the shard's set of journaled conversations: on a Redis Cluster they all
live in one slot, so a script that touches a conversation's stream, its epoch and its
shard's set runs on one master (docs/decisions.md). `SHARDS` never changes: it places
every key a node ever wrote.
"""

from __future__ import annotations

import binascii
import functools

PREFIX = "canopy:"
SHARDS = 1024  # hash tags the conversations spread over: the cluster's unit of balance


@functools.lru_cache(maxsize=65536)
def shard(conversation_id: str) -> int:
    """The conversation's shard: CRC16 (Redis Cluster's own hash) of its id."""
    return binascii.crc_hqx(conversation_id.encode(), 0) % SHARDS


def conversation_key(conversation_id: str, kind: str) -> str:
    """`canopy:{<shard>}:<kind>:<conversation id>`: a key of the conversation, in the slot
    of its shard. Use it for any new per-conversation key (a lease, ...)."""
    return f"{PREFIX}{{{shard(conversation_id)}}}:{kind}:{conversation_id}"


def journal(conversation_id: str) -> str:
    """Stream of a conversation's unflushed journal records; entry id = `{seq}-1`."""
    return conversation_key(conversation_id, "journal")


def journal_blobs(conversation_id: str) -> str:
    """Hash of the conversation's journal records too large for its stream, by
    "{seq}:{epoch}"; the stream's entry names the field (persistence/journal_redis.py)."""
    return conversation_key(conversation_id, "journal-blobs")


def epoch(conversation_id: str) -> str:
    """Ownership epoch of a conversation, incremented at each activation (fencing)."""
    return conversation_key(conversation_id, "epoch")


def journaled(shard_number: int) -> str:
    """Set of the shard's conversations whose journal stream is not empty: what start-up
    recovery replays."""
    return f"{PREFIX}{{{shard_number}}}:journaled"


def journaled_of(conversation_id: str) -> str:
    """The journaled set the conversation belongs in (the slot of its keys)."""
    return journaled(shard(conversation_id))


# The layout before shards (one node-wide set; tags by conversation id): a node started
# over what an older version left moves it to the layout above (journal_migration.py).
LEGACY_JOURNALED = f"{PREFIX}journaled"


def legacy_journal(conversation_id: str) -> str:
    return f"{PREFIX}journal:{{{conversation_id}}}"


def legacy_epoch(conversation_id: str) -> str:
    return f"{PREFIX}epoch:{{{conversation_id}}}"


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


def flush_now(node: str) -> str:
    """Set of conversations the admin asked the node's flusher to store at once (SPOP):
    looked at between cycles too, when the flush interval is long."""
    return f"{PREFIX}flusher:{{{node}}}:now"


def flusher_lease(node: str) -> str:
    """The node's flusher holds this (SET NX PX, renewed): a second one refuses to run."""
    return f"{PREFIX}flusher:{{{node}}}:lease"


def flushed(node: str) -> str:
    """Stream of what the node's flusher stored: one entry per cycle, `s` = [[cid, version]]."""
    return f"{PREFIX}flusher:{{{node}}}:flushed"


def flusher_stats(node: str) -> str:
    """Hash of the node's flusher counters (backlog, failures, rows written), per cycle."""
    return f"{PREFIX}flusher:{{{node}}}:stats"


# -- the cluster: membership (per node) and leases (per conversation, in its slot) --------

# Sorted set of member node ids, scored by when their heartbeat expires (ms since the
# epoch): the listing reads live ones by score, no SCAN over the keyspace.
MEMBERS = f"{PREFIX}members"


def member(node_id: str) -> str:
    """A node's heartbeat: its advertised URL and stats as JSON, expiring (PX) unless renewed."""
    return f"{PREFIX}member:{{{node_id}}}"


def lease(conversation_id: str) -> str:
    """The owner of an active conversation, "node-id epoch", expiring (PX) unless renewed;
    in the slot of the conversation's epoch (`epoch()`), which the lease's script increments."""
    return conversation_key(conversation_id, "lease")


# What a node shows its peers' internal calls (gateway/forwarding.py): made by the first
# node to join, read by the others; anyone who can read it can read Redis anyway.
CLUSTER_TOKEN = f"{PREFIX}cluster-token"
