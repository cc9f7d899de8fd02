"""The Journal protocol: the write-ahead log that makes an acknowledged write durable.

A mutation is appended here before it is applied and acknowledged; the flusher trims
what the Store has confirmed. Backends: an append-only file (embedded) and Redis
Streams. Both run the same contract suite.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from typing import NamedTuple, Protocol


class JournalError(Exception):
    """The journal could not take or give records; writes must fail fast."""


class OutcomeUnknown(JournalError):
    """An append was sent and its answer lost (a timeout, a dropped connection, a close):
    it may have landed. Its actor did not apply it, so the journal may hold a record the
    actor's state does not follow."""


class JournalDamaged(JournalError):
    """Recovery found damage before the journal's tail and was not allowed to go past it."""


class Entry(NamedTuple):
    """One replayed record: its payload and where it lies (for reports and set-asides)."""

    payload: bytes
    origin: str  # e.g. "journal-0000000003.log@1234", "canopy:journal:{c} 7-1"


class Journal(Protocol):
    """An ordered, durable log of opaque records keyed by conversation."""

    async def __aenter__(self) -> Journal: ...

    async def __aexit__(self, *exc: object) -> None: ...

    async def acquire(self, conversation_id: str) -> None:
        """Become the conversation's owner before reading its tail or appending to it."""
        ...

    def release(self, conversation_id: str) -> None:
        """Forget ownership of a passivated conversation."""
        ...

    def epoch(self, conversation_id: str) -> int:
        """The fencing epoch this node holds the conversation at (0: not fenced)."""
        ...

    def append(self, conversation_id: str, seq: int, payload: bytes) -> Awaitable[None]:
        """Queue a record now (order of calls is order in the log); await its durability."""
        ...

    async def replay(self) -> list[Entry]:
        """Every record not yet trimmed, each conversation's in append order (recovery)."""
        ...

    async def tail(self, conversation_id: str, after_seq: int) -> list[Entry]:
        """Records of one conversation after `after_seq` (activation after a node's death)."""
        ...

    async def set_aside(self, entry: Entry, reason: str) -> None:
        """Keep a record recovery cannot apply where trimming never reaches it."""
        ...

    def recovered(self) -> None:
        """Every record `replay()` returned is in the engine's hands now (applied and
        dirty, or set aside): checkpoints taken from now on may cover them."""
        ...

    async def mark(self) -> object:
        """Start a checkpoint: records appended from now on are not covered by it."""
        ...

    async def trim(self, mark: object, flushed: Mapping[str, int]) -> None:
        """Drop records covered by `mark` now that the Store holds them."""
        ...

    def stats(self) -> dict[str, object]:
        """Counters for the admin API and metrics."""
        ...


class NoJournal:
    """The journal of write-through mode (`--cache off`): every write reaches the Store
    before its ack, so there is nothing to log, replay or trim."""

    async def __aenter__(self) -> NoJournal:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    async def acquire(self, conversation_id: str) -> None:
        pass

    def release(self, conversation_id: str) -> None:
        pass

    def epoch(self, conversation_id: str) -> int:
        return 0

    async def append(self, conversation_id: str, seq: int, payload: bytes) -> None:
        pass

    async def replay(self) -> list[Entry]:
        return []

    async def tail(self, conversation_id: str, after_seq: int) -> list[Entry]:
        return []

    async def set_aside(self, entry: Entry, reason: str) -> None:
        pass

    def recovered(self) -> None:
        pass

    async def mark(self) -> object:
        return None

    async def trim(self, mark: object, flushed: Mapping[str, int]) -> None:
        pass

    def stats(self) -> dict[str, object]:
        return {"kind": "none"}
