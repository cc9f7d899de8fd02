"""The store rows of users' recent sidebar first pages, kept in memory.

A first page is the store's rows (the user's shared ones and first owned ones) corrected
by the hot listing (engine/sidebar.py). Kept rows stay right while the hot listing still
holds every change made since they were read; so a user's rows are dropped when the hot
listing forgets a conversation of theirs (owned, shared with them, or a share changed),
and rows read while that happened are not kept. Nothing else bounds correctness: the age
limit only bounds what changes made by other writers of the store (not this node's
actors) could leave unseen, and the user count bounds memory.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from persistence.records import Conversation

MAX_AGE_SECONDS = 60.0
MAX_USERS = 1000

Shared = list[tuple[Conversation, str]]


@dataclass(eq=False)
class Reading:
    """One user's kept rows; a token for reads in flight (see `keep`)."""

    pages: dict[int, tuple[float, Shared, list[Conversation]]] = field(default_factory=dict)
    shared_ids: set[str] = field(default_factory=set)


class FirstReads:
    """Users' first-page store rows by rows asked for (see module docstring)."""

    def __init__(
        self,
        max_age: float = MAX_AGE_SECONDS,
        max_users: int = MAX_USERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_age = max_age
        self._max_users = max_users
        self._clock = clock
        self._users: OrderedDict[str, Reading] = OrderedDict()
        self._sharing: dict[str, set[str]] = {}  # conversation -> users keeping it as shared

    def __len__(self) -> int:
        return len(self._users)

    def get(self, user: str, fetch: int) -> tuple[Shared, list[Conversation]] | None:
        reading = self._users.get(user)
        found = reading.pages.get(fetch) if reading is not None else None
        if found is None or self._clock() - found[0] >= self._max_age:
            return None
        self._users.move_to_end(user)
        return found[1], list(found[2])

    def reading(self, user: str) -> Reading | None:
        """The token to `keep` the rows of a read beginning now (None: nothing is kept)."""
        if self._max_age <= 0:
            return None
        reading = self._users.get(user)
        if reading is None:
            reading = self._users[user] = Reading()
            while len(self._users) > self._max_users:
                self._drop(next(iter(self._users)))
        return reading

    def keep(
        self, user: str, token: Reading | None, began: float, fetch: int, shared: Shared,
        owned: list[Conversation],
    ) -> None:  # fmt: skip
        """Keep the rows a read that began at `began` found, unless the user's rows were
        dropped since it began (the hot listing may no longer cover what it missed)."""
        if token is None or self._users.get(user) is not token:
            return
        token.pages[fetch] = began, shared, list(owned)
        for meta, _ in shared:
            token.shared_ids.add(meta.conversation_id)
            self._sharing.setdefault(meta.conversation_id, set()).add(user)

    def forgotten(self, conversation_id: str, users: Iterable[str]) -> None:
        """The hot listing let the conversation go: drop the rows of `users` (its owner and
        the holders it knew) and of everyone who keeps it as shared."""
        for user in {*users, *self._sharing.get(conversation_id, ())}:
            self._drop(user)

    def _drop(self, user: str) -> None:
        reading = self._users.pop(user, None)
        if reading is None:
            return
        for cid in reading.shared_ids:
            users = self._sharing[cid]
            users.discard(user)
            if not users:
                del self._sharing[cid]
