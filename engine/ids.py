"""Ids: random ones for conversations and branches, time-ordered ones for messages.

A message id is an RFC 9562 version 7 UUID: the creation milliseconds first, then 74
random bits. The embedded store indexes messages by id; with random ids each new
message lands on a random page of that index, so the pages a flush dirties (and writes
to the WAL) grow with the store, where time-ordered ids append to one end of it
(docs/decisions.md has the figures). A message's id so tells when it was made, as its
`created_at` does anyway. Conversation ids stay random: placement, shards and
partitions hash them, and nothing indexes them in creation order.
"""

from __future__ import annotations

import os
import time
import uuid

_MS = (1 << 48) - 1
_VERSION = 0x7 << 76
_VARIANT = 0b10 << 62
_RAND_B = (1 << 62) - 1


def new_id() -> str:
    """A random (version 4) UUID."""
    return str(uuid.uuid4())


def time_ordered_id() -> str:
    """A version 7 UUID: ids made later sort after (to the millisecond)."""
    rand = int.from_bytes(os.urandom(10), "big")
    value = (
        (time.time_ns() // 1_000_000 & _MS) << 80
        | _VERSION
        | (rand >> 62 & 0xFFF) << 64  # rand_a: the 12 bits after the version
        | _VARIANT
        | rand & _RAND_B
    )
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
