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
_LOW_48 = (1 << 48) - 1


def new_id() -> str:
    """A random (version 4) UUID."""
    return str(uuid.UUID(int=_random_bits() << 48 | _random_bits() & _LOW_48, version=4))


def time_ordered_id() -> str:
    """A version 7 UUID: ids made later sort after (to the millisecond)."""
    rand = _random_bits()
    value = (
        (time.time_ns() // 1_000_000 & _MS) << 80
        | _VERSION
        | (rand >> 62 & 0xFFF) << 64  # rand_a: the 12 bits after the version
        | _VARIANT
        | rand & _RAND_B
    )
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_DRAWN = 4096  # bytes of OS randomness drawn at once: 409 message ids
_pool: list[int] = []  # 80-bit draws, each used once
os.register_at_fork(after_in_child=_pool.clear)  # a forked worker must not repeat ours


def _random_bits() -> int:
    """80 random bits from the OS's generator, drawn in bulk. `os.urandom` is a system
    call that lets go of the GIL: on the event loop each call let the store's thread
    take it, and the loop waited up to a switch interval (5 ms) to get it back
    (docs/decisions.md, "Ids draw the OS's randomness in bulk")."""
    if not _pool:
        drawn = os.urandom(_DRAWN)
        _pool.extend(int.from_bytes(drawn[k : k + 10], "big") for k in range(0, _DRAWN - 9, 10))
    return _pool.pop()
