"""The directory (Orleans' grain directory): which node owns each active conversation,
as a lease per conversation with an epoch that grows at each acquisition.

The single-node default owns every conversation through the journal's own ownership
(`Journal.acquire`, which in the Redis journal increments the epoch its appends are
fenced by), exactly as before: one journal call, no lease to keep.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from persistence.journal import Journal

LossWatcher = Callable[[str], None]  # told a conversation whose lease another node took


class Directory(Protocol):
    async def __aenter__(self) -> Directory: ...

    async def __aexit__(self, *exc: object) -> None:
        """Release every lease still held."""
        ...

    async def acquire(self, conversation_id: str) -> int:
        """Own the conversation (lease, then the journal's ownership); its epoch.
        Raises LeaseHeld while another live node holds it."""
        ...

    def release(self, conversation_id: str) -> None:
        """Give the conversation up (passivated); queued, sent with the next renewal."""
        ...

    async def send_releases(self) -> None:
        """Send the queued releases now (a move waits for its own to reach Redis)."""
        ...

    def is_held(self, conversation_id: str) -> bool: ...

    async def holder(self, conversation_id: str) -> str | None:
        """The node holding the conversation's lease now, if any."""
        ...

    def can_acknowledge(self) -> bool:
        """Whether every lease held is surely still valid (renewed recently enough)."""
        ...

    def on_lost(self, watcher: LossWatcher) -> None: ...

    def stats(self) -> dict[str, Any]: ...


class LeaseHeld(Exception):
    """Another node holds the conversation's lease."""

    def __init__(self, conversation_id: str, owner: str) -> None:
        super().__init__(f"conversation {conversation_id} is owned by node {owner}")
        self.owner = owner


class JournalOwnership:
    """The single-node directory: the journal's acquire and release, nothing else."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        self.acquired = 0

    async def __aenter__(self) -> JournalOwnership:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    async def acquire(self, conversation_id: str) -> int:
        await self._journal.acquire(conversation_id)
        self.acquired += 1
        return 0  # the journal keeps its epoch (if it has one) to itself

    def release(self, conversation_id: str) -> None:
        self._journal.release(conversation_id)

    def is_held(self, conversation_id: str) -> bool:
        return True

    async def holder(self, conversation_id: str) -> str | None:
        return None  # this node, implicitly: there is no other

    def can_acknowledge(self) -> bool:
        return True

    async def send_releases(self) -> None:
        pass  # released at once

    def on_lost(self, watcher: LossWatcher) -> None:
        pass  # no other node can take a conversation

    def stats(self) -> dict[str, Any]:
        return {"kind": "journal", "acquired": self.acquired}
