"""Listings across a cluster: what other nodes changed and have not flushed yet.

Each node's hot listing (engine/sidebar.py) knows its own unflushed changes. A cluster
node answering a user's listing asks every live peer for that user's entries
(`HotEntries`: the rows of conversations they own, the shares they hold) and reads its
hot listing merged with them (`MergedHot`), so a write acknowledged on any node a
moment ago is listed on every node. Nothing is paid per append; a listing costs one
round trip per peer, in parallel (docs/decisions.md has the comparison).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Protocol

import msgspec

from persistence.records import Conversation


class HotEntries(msgspec.Struct, array_like=True):
    """One node's unflushed view of one user's listing."""

    owned: list[Conversation]  # the newest row of each conversation the user owns
    holdings: list[tuple[str, str | None]]  # (conversation, permission or None: revoked)
    rows: list[Conversation]  # the newest row of each conversation in `holdings`


encode = msgspec.msgpack.Encoder().encode
decode = msgspec.msgpack.Decoder(HotEntries).decode

Peers = Callable[[str], Awaitable[Sequence[HotEntries]]]  # user id -> the peers' entries


class HotView(Protocol):
    """What the sidebar reads of unflushed changes: the hot listing, or a merge."""

    def meta(self, conversation_id: str) -> Conversation | None: ...

    def owned(self, user_id: str) -> Iterable[str]: ...

    def holdings(self, user_id: str) -> dict[str, str | None]: ...


class MergedHot:
    """This node's hot listing with the peers' entries for one user on top; where two
    know a conversation, the newer row (higher version) wins."""

    def __init__(self, local: HotView, user_id: str, peers: Sequence[HotEntries]) -> None:
        self._local = local
        self._metas: dict[str, Conversation] = {}
        self._owned: set[str] = set(local.owned(user_id))
        self._holdings = dict(local.holdings(user_id))
        # the version of the row each holding was read with: the newest decides
        held_at = {cid: _version(local.meta(cid)) for cid in self._holdings}
        for entries in peers:
            for row in entries.owned:
                self._note(row)
                self._owned.add(row.conversation_id)
            versions = {row.conversation_id: row.version for row in entries.rows}
            for row in entries.rows:
                self._note(row)
            for cid, permission in entries.holdings:
                version = versions.get(cid, 0)
                if cid not in self._holdings or version > held_at[cid]:
                    self._holdings[cid], held_at[cid] = permission, version

    def _note(self, row: Conversation) -> None:
        cid = row.conversation_id
        known = self.meta(cid)
        if known is None or row.version > known.version:
            self._metas[cid] = row

    def meta(self, conversation_id: str) -> Conversation | None:
        found = self._metas.get(conversation_id)
        return found if found is not None else self._local.meta(conversation_id)

    def owned(self, user_id: str) -> Iterable[str]:
        return self._owned

    def holdings(self, user_id: str) -> dict[str, str | None]:
        return self._holdings


def entries(hot: HotView, user_id: str) -> HotEntries:
    """This node's entries for the user, as a peer asks for them."""
    owned = [row for cid in hot.owned(user_id) if (row := hot.meta(cid)) is not None]
    holdings = hot.holdings(user_id)
    rows = [row for cid in holdings if (row := hot.meta(cid)) is not None]
    return HotEntries(owned, list(holdings.items()), rows)


def _version(row: Conversation | None) -> int:
    return row.version if row is not None else 0
