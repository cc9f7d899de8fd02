"""What a hot conversation costs in memory, and the node's default budget for them.

The registry keeps the node's hot conversations under a byte budget; each is counted
as a fixed overhead (actor, state, tree, dicts, lock, registry entries) plus, per
message, a fixed overhead and its content bytes, plus a fixed cost per branch and
share. The constants are measured (docs/decisions.md): they bound memory, they do not
account for every byte.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

CONVERSATION_BYTES = 3_500  # an empty hot conversation: 2.2 KB of objects, 3.3 KB of RSS
MESSAGE_BYTES = 400  # a hot message beyond its content (372 B in bench.scale)
ROW_BYTES = 200  # a branch or a share
DEFAULT_SHARE_OF_MEMORY = 0.25
FALLBACK_MEMORY = 4 * 1024**3  # when the platform does not tell its physical memory


# A metadata entry beyond its key's and value's characters: two str objects and a dict
# slot. Up to 64 entries of 8 KB each ride on a message (gateway/schemas.py): uncounted,
# a 540 KB body cost the budget ~430 B (found by review).
METADATA_ENTRY_BYTES = 120


def metadata_bytes(metadata: Mapping[str, str]) -> int:
    """What a message's `content_metadata` holds: its characters and entries."""
    return sum([len(k) + len(v) + METADATA_ENTRY_BYTES for k, v in metadata.items()])


def payload_bytes(content: bytes, metadata: Mapping[str, str]) -> int:
    """A message's content and metadata: what the unflushed-bytes limit counts of it."""
    return len(content) + (metadata_bytes(metadata) if metadata else 0)


def message_bytes(content: bytes, metadata: Mapping[str, str]) -> int:
    """What a hot message costs: a fixed overhead, its content and its metadata."""
    return MESSAGE_BYTES + payload_bytes(content, metadata)


def default_max_hot_bytes() -> int:
    """A quarter of the machine's physical memory."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        memory = FALLBACK_MEMORY
    return int(memory * DEFAULT_SHARE_OF_MEMORY)
