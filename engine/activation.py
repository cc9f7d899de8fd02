"""The activation table: which conversations are hot on this node, most recently used
last, and one activation per conversation however many first touches arrive at once."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, ValuesView

from engine.actor import ConversationActor


class ActivationTable:
    """The hot actors by conversation id, least recently used first."""

    __slots__ = ("_hot", "_touched", "_activating")

    def __init__(self) -> None:
        self._hot: OrderedDict[str, ConversationActor] = OrderedDict()
        self._touched: dict[str, float] = {}
        self._activating: dict[str, asyncio.Future[ConversationActor]] = {}

    def __len__(self) -> int:
        return len(self._hot)

    def __contains__(self, conversation_id: str) -> bool:
        return conversation_id in self._hot

    def __iter__(self) -> Iterator[str]:
        """Conversation ids, least recently used first."""
        return iter(self._hot)

    def get(self, conversation_id: str) -> ConversationActor | None:
        """The hot actor, without counting it as used."""
        return self._hot.get(conversation_id)

    def touch(self, conversation_id: str) -> ConversationActor | None:
        """The hot actor, now the most recently used; None if it is not hot."""
        actor = self._hot.get(conversation_id)
        if actor is not None:
            self._hot.move_to_end(conversation_id)
            self._touched[conversation_id] = time.monotonic()
        return actor

    def looked(self, conversation_id: str) -> tuple[ConversationActor, float] | None:
        """The actor and when it was last touched (time.monotonic), without touching it."""
        actor = self._hot.get(conversation_id)
        return None if actor is None else (actor, self._touched[conversation_id])

    def with_touches(self) -> Iterator[tuple[ConversationActor, float]]:
        """Each hot actor with when it was last touched, least recently used first."""
        touched = self._touched
        return ((actor, touched[cid]) for cid, actor in self._hot.items())

    def actors(self) -> ValuesView[ConversationActor]:
        return self._hot.values()

    def newest(self) -> str | None:
        return next(reversed(self._hot), None)

    def idle(self, seconds: float) -> list[str]:
        """The conversations untouched for `seconds`."""
        cutoff = time.monotonic() - seconds
        return [cid for cid, at in self._touched.items() if at < cutoff]

    def add(self, actor: ConversationActor) -> None:
        self._hot[actor.id] = actor
        self._touched[actor.id] = time.monotonic()

    def remove(self, actor: ConversationActor) -> None:
        del self._hot[actor.id]
        del self._touched[actor.id]

    async def activate(
        self, conversation_id: str, load: Callable[[str], Awaitable[ConversationActor]]
    ) -> ConversationActor:
        """`load(conversation_id)` once: concurrent callers share its result or failure.
        An activation cancelled under its own caller (a shutdown, a client gone) is not
        the others' failure: a caller that was not cancelled runs the next one, unless
        the cancelled one had made its actor hot already (cancelled while it waited on
        the memory budget or a flush): a second load would make a second actor, each
        numbering its own records, and one's acknowledged appends would be set aside."""
        while (pending := self._activating.get(conversation_id)) is not None:
            try:
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not pending.cancelled() or (task is not None and task.cancelling()):
                    raise  # this caller's own cancellation
            hot = self._hot.get(conversation_id)
            if hot is not None:
                return hot
        future: asyncio.Future[ConversationActor] = asyncio.get_running_loop().create_future()
        self._activating[conversation_id] = future
        try:
            actor = await load(conversation_id)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: only waiters that exist re-raise it
            raise
        else:
            future.set_result(actor)
            return actor
        finally:
            del self._activating[conversation_id]
