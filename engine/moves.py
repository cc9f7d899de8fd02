"""Where conversations stood in the listing order before they moved: stable cursors.

A sidebar cursor pins an epoch (`pin`, when its first page is served); later pages list
the order as of that moment, placing a conversation that moved since by where it stood
then. So this node keeps, for each conversation that moved recently, where it stood
before the first move of each epoch. Bounded in time and count: a cursor pinned before
the oldest move let go cannot be served exactly any more (`covers` is False), and the
client starts over. In a cluster this log would live in Redis, behind the same methods.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from persistence.store import Key

HORIZON_SECONDS = 900.0  # what a cursor may take to be followed to its end
MAX_MOVES = 1_000_000  # about 150 MB at most; past it the horizon shortens


class NotMoved:
    pass


NOT_MOVED = NotMoved()  # `position`: it stands where it stands now


@dataclass(frozen=True, slots=True)
class _Move:
    epoch: int
    at: float
    conversation_id: str
    owner: str
    previous: Key | None  # None: it did not exist (or was not listed) before


class ActivityMoves:
    """The recent moves of this node's conversations (see module docstring)."""

    def __init__(
        self,
        horizon: float = HORIZON_SECONDS,
        max_moves: int = MAX_MOVES,
        clock: Callable[[], float] = time.monotonic,
        maker: str = "",
    ) -> None:
        # Cursors of another process are expired; a cluster node names itself in them, so
        # another node relays a page request to the node that pinned it (forwarding.py).
        self.incarnation = secrets.token_hex(4) + (f"@{maker}" if maker else "")
        self._horizon = horizon
        self._max = max_moves
        self._clock = clock
        self._epoch = 1
        self._floor = 0  # cursors pinned before this lost moves that were let go
        self._log: deque[_Move] = deque()
        self._by_conversation: dict[str, list[_Move]] = {}
        self._by_owner: dict[str, dict[str, int]] = {}  # owner -> moved conversation -> moves

    def __len__(self) -> int:
        return len(self._log)

    def pin(self) -> int:
        """The epoch a new cursor pins: moves from now on are after it."""
        self._epoch += 1
        return self._epoch - 1

    def covers(self, pinned: int) -> bool:
        """Whether every move after `pinned` is still known."""
        return self._floor <= pinned < self._epoch

    def moved(self, conversation_id: str, owner: str, previous: Key | None) -> None:
        """The conversation moves away from `previous` (None: it was not listed)."""
        moves = self._by_conversation.get(conversation_id)
        if moves and moves[-1].epoch == self._epoch:
            return  # where it stood before this epoch's first move is what cursors ask
        move = _Move(self._epoch, self._clock(), conversation_id, owner, previous)
        self._log.append(move)
        if moves is None:
            moves = self._by_conversation[conversation_id] = []
        moves.append(move)
        owned = self._by_owner.setdefault(owner, {})
        owned[conversation_id] = owned.get(conversation_id, 0) + 1
        self._let_go()

    def position(self, conversation_id: str, pinned: int) -> Key | None | NotMoved:
        """Where the conversation stood at epoch `pinned`: NOT_MOVED if it has not moved
        since, None if it was not listed then."""
        for move in self._by_conversation.get(conversation_id, ()):
            if move.epoch > pinned:
                return move.previous
        return NOT_MOVED

    def moved_owned(self, owner: str, pinned: int) -> list[str]:
        """The owner's conversations that moved after epoch `pinned`."""
        owned = self._by_owner.get(owner, {})
        return [cid for cid in owned if self._by_conversation[cid][-1].epoch > pinned]

    def _let_go(self) -> None:
        cutoff = self._clock() - self._horizon
        log = self._log
        while log and (len(log) > self._max or log[0].at < cutoff):
            move = log.popleft()
            self._floor = max(self._floor, move.epoch)
            cid = move.conversation_id
            moves = self._by_conversation[cid]
            moves.pop(0)
            if not moves:
                del self._by_conversation[cid]
            owned = self._by_owner[move.owner]
            owned[cid] -= 1
            if not owned[cid]:
                del owned[cid]
                if not owned:
                    del self._by_owner[move.owner]
