"""The journal a cluster member's actors append through: an append is refused, so never
acknowledged, unless this node's heartbeat is current, its leases are surely valid and
it holds the conversation's lease. Behind it the journal's epoch fences the append
itself (a node that lost the conversation cannot add to its stream). A node alone
appends to its journal directly: nothing is checked per write.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping

from engine.directory import Directory
from engine.membership import Membership
from persistence.journal import Entry, Journal, JournalError


class NotAcknowledging(JournalError):
    """This node may not acknowledge the write now (late heartbeat, lease lost)."""


class AcknowledgingJournal:
    """A Journal that lets an append through only while this node may acknowledge it."""

    def __init__(self, journal: Journal, membership: Membership, directory: Directory) -> None:
        self._journal = journal
        self._membership = membership
        self._directory = directory
        self.refused = 0

    def append(self, conversation_id: str, seq: int, payload: bytes) -> Awaitable[None]:
        problem = self._refusal(conversation_id)
        if problem is None:
            return self._journal.append(conversation_id, seq, payload)
        self.refused += 1
        refused: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        refused.set_exception(NotAcknowledging(problem))
        return refused

    def _refusal(self, conversation_id: str) -> str | None:
        if not self._membership.can_acknowledge():
            return "this node's heartbeat is late: it may have been declared dead"
        if not self._directory.can_acknowledge():
            return "this node's leases were not renewed in time"
        if not self._directory.is_held(conversation_id):
            return f"this node no longer owns conversation {conversation_id}"
        return None

    # -- the rest is the journal's ----------------------------------------------------------

    async def __aenter__(self) -> AcknowledgingJournal:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass  # the journal itself is opened and closed by its owner

    async def acquire(self, conversation_id: str) -> None:
        await self._journal.acquire(conversation_id)

    def release(self, conversation_id: str) -> None:
        self._journal.release(conversation_id)

    def epoch(self, conversation_id: str) -> int:
        return self._journal.epoch(conversation_id)

    async def replay(self) -> list[Entry]:
        return await self._journal.replay()

    async def tail(self, conversation_id: str, after_seq: int) -> list[Entry]:
        return await self._journal.tail(conversation_id, after_seq)

    async def set_aside(self, entry: Entry, reason: str) -> None:
        await self._journal.set_aside(entry, reason)

    def recovered(self) -> None:
        self._journal.recovered()

    async def mark(self) -> object:
        return await self._journal.mark()

    async def trim(self, mark: object, flushed: Mapping[str, int]) -> None:
        await self._journal.trim(mark, flushed)

    def stats(self) -> dict[str, object]:
        return {**self._journal.stats(), "refused_unacknowledgeable": self.refused}
