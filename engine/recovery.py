"""Recovery at start: the journal's records replayed into actors, then flushed, before
the node serves (unless a flusher process stores what the journal holds)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from engine import replay
from engine.actor import ConversationActor
from engine.errors import NotFound, Unavailable
from engine.loading import Loader
from persistence.flusher import Flusher
from persistence.journal import Journal

log = logging.getLogger(__name__)

Load = Callable[[str, list[replay.Replayed]], Awaitable[ConversationActor]]


async def recover(journal: Journal, flusher: Flusher, loader: Loader, load: Load) -> int:
    """Replay every journaled conversation through `load`; how many records there were."""
    if not flusher.writes_here:
        return 0
    entries = await journal.replay()
    by_conversation: dict[str, list[replay.Replayed]] = {}
    for step in await loader.decode(entries):
        by_conversation.setdefault(step.record.conversation_id, []).append(step)
    for conversation_id, mine in by_conversation.items():
        try:
            await load(conversation_id, mine)
        except NotFound:
            log.error("journal records for unknown conversation %s", conversation_id)
    journal.recovered()  # all of it is dirty or set aside: marks may now cover it
    if entries:
        log.info(
            "recovered %d journal records into %d conversations",
            len(entries),
            len(by_conversation),
        )
    if not await flusher.flush_all(retries=10):
        raise Unavailable("cannot flush recovered journal records to the store")
    return len(entries)
