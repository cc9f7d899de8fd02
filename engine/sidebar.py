"""The sidebar: a user's own and shared conversations, newest activity first, in pages.

Served from the store's listing index (`Store.owned`, `Store.shared`) corrected by
what it does not know yet, never by activating actors or walking every dirty
conversation:

- `HotListing`, maintained at each mutation: the newest row of every conversation with
  unflushed changes (kept `GRACE_SECONDS` after its flush, longer than any store read
  that started before it), per user the ones they own among those, and the share
  holders added or removed. A user's listing looks only at their own entries.
- `FirstReads` (engine/first_reads.py): a first page's store rows, kept per user until
  the hot listing lets go of one of the user's conversations.
- `ActivityMoves` (engine/moves.py): where conversations stood before they moved, so
  that a cursor's later pages list the order as of its first page: nothing is lost or
  repeated while messages arrive (see docs/decisions.md).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import msgspec

from engine.access import Principal
from engine.actor import gone
from engine.errors import CanopyError, Forbidden, InvalidInput, Unavailable
from engine.first_reads import FirstReads
from engine.moves import ActivityMoves, NotMoved
from engine.peer_listing import HotView, MergedHot, Peers
from persistence.records import Conversation, Event, ShareRevoked, ShareSet
from persistence.store import Key, Store, StoreError, listing_key, rank

GRACE_SECONDS = 10.0  # over the store's request timeout (5 s): no read outlives it
OWNER = "owner"


class CursorExpired(CanopyError):
    status = 400
    code = "cursor_expired"


class InvalidCursor(CanopyError):
    status = 400
    code = "invalid_cursor"


@dataclass(frozen=True)
class Filters:
    favorite: bool = False  # True: favorites only
    archived: bool | None = False  # None: archived or not
    tag: str | None = None
    q: str | None = None  # a title substring, any case

    def admits(self, meta: Conversation) -> bool:
        return (
            (not self.favorite or meta.is_favorite)
            and (self.archived is None or meta.archived == self.archived)
            and (self.tag is None or self.tag in meta.tags)
            and (self.q is None or self.q.casefold() in meta.title.casefold())
        )


@dataclass(frozen=True)
class Item:
    meta: Conversation
    permission: str  # "owner", or the share's


@dataclass(frozen=True)
class Page:
    items: list[Item]
    next_cursor: str | None


@dataclass(frozen=True)
class ShardPage:
    """One shard's page for a merge: items with their keys, whether more follow, and
    the listing moment its cursors pin (`incarnation`, `pinned`)."""

    entries: list[tuple[Key, Item]]
    more: bool
    incarnation: str
    pinned: int


class _Cursor(msgspec.Struct, array_like=True):
    incarnation: str
    pinned: int
    activity: int
    conversation_id: str
    filters: tuple[bool, bool | None, str | None, str | None]


_cursor_encode = msgspec.msgpack.Encoder().encode
_cursor_decode = msgspec.msgpack.Decoder(_Cursor).decode


class HotListing:
    """What the store's listing index does not know yet (see module docstring).

    A conversation stored already is kept for the grace, but its row no longer than
    `max_clean_bytes` of such rows allow: under a flood of creations the grace alone
    would keep every row of the last 10 s (about 1 KB each), beside the hot budget. One
    forgotten early can only be missed by a listing whose store read began before its
    flush and is still running after that many bytes of others were flushed."""

    def __init__(
        self,
        grace: float = GRACE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        max_clean_bytes: int = 64 << 20,
    ):
        self._grace = grace
        self._clock = clock
        self._max_clean_bytes = max_clean_bytes
        self._clean_bytes = 0  # the estimated size of the rows in `_clean`
        self.forgotten_early = 0  # stored rows dropped before their grace, for the cap
        self._metas: dict[str, Conversation] = {}
        self._owned: dict[str, set[str]] = {}  # user -> their conversations held here
        self._holders: dict[str, dict[str, str | None]] = {}  # user -> cid -> permission
        self._holders_of: dict[str, set[str]] = {}  # cid -> users in `_holders`
        self._clean: OrderedDict[str, float] = OrderedDict()  # stored, since when

    def __len__(self) -> int:
        return len(self._metas)

    def meta(self, conversation_id: str) -> Conversation | None:
        return self._metas.get(conversation_id)

    def owned(self, user_id: str) -> Iterable[str]:
        return self._owned.get(user_id, ())

    def holdings(self, user_id: str) -> dict[str, str | None]:
        return self._holders.get(user_id, {})

    def stats(self) -> dict[str, int]:
        return {
            "rows": len(self._metas),
            "stored_rows": len(self._clean),
            "stored_bytes": self._clean_bytes,
            "forgotten_early": self.forgotten_early,
        }

    def noted(self, meta: Conversation, event: Event) -> None:
        """A mutation was applied: `meta` is the conversation's row now."""
        cid = meta.conversation_id
        if self._clean.pop(cid, None) is not None:
            self._clean_bytes -= _row_bytes(self._metas[cid])
        self._metas[cid] = meta
        self._owned.setdefault(meta.created_by, set()).add(cid)
        match event:
            case ShareSet(share=share):
                self._hold(share.shared_with, cid, share.permission)
            case ShareRevoked(shared_with=user):
                self._hold(user, cid, None)

    def flushed(self, conversation_id: str) -> list[tuple[str, set[str]]]:
        """The store has every change of the conversation: forget it after the grace.
        Returns those forgotten now, each with its owner and the holders it knew."""
        forgotten: list[tuple[str, set[str]]] = []
        meta = self._metas.get(conversation_id)
        if meta is not None:
            if conversation_id not in self._clean:
                self._clean_bytes += _row_bytes(meta)
            self._clean[conversation_id] = self._clock()
            self._clean.move_to_end(conversation_id)
        cutoff = self._clock() - self._grace
        while self._clean:
            cid, since = next(iter(self._clean.items()))
            if since > cutoff and self._clean_bytes <= self._max_clean_bytes:
                break
            if since > cutoff:
                self.forgotten_early += 1
            del self._clean[cid]
            self._clean_bytes -= _row_bytes(self._metas[cid])
            forgotten.append((cid, self._forget(cid)))
        return forgotten

    def _hold(self, user: str, cid: str, permission: str | None) -> None:
        self._holders.setdefault(user, {})[cid] = permission
        self._holders_of.setdefault(cid, set()).add(user)

    def _forget(self, cid: str) -> set[str]:
        meta = self._metas.pop(cid)
        owned = self._owned[meta.created_by]
        owned.discard(cid)
        if not owned:
            del self._owned[meta.created_by]
        holders = self._holders_of.pop(cid, set())
        for user in holders:
            held = self._holders[user]
            del held[cid]
            if not held:
                del self._holders[user]
        return {meta.created_by, *holders}


def _row_bytes(meta: Conversation) -> int:
    """About what a kept row costs: the struct, its dict entries, its texts."""
    return 640 + len(meta.title) + len(meta.description or "")


USER_LISTING = Filters(archived=None)  # seed 000's: archived ones too


def listing_for(principal: Principal, user_id: str) -> Principal:
    """Who seed 000's listing of `user_id` lists as; Forbidden unless the caller is that
    user or a service."""
    if not principal.may_list(user_id):
        raise Forbidden("permission_denied", "only that user, or a service acting for "
                        "them or for no one, may list their conversations")  # fmt: skip
    return Principal(user_id, "user")


class Sidebar:
    """Lists a user's conversations from the store, the hot listing and the moves."""

    def __init__(
        self,
        store: Store,
        hot: HotListing | None,
        moves: ActivityMoves,
        clock: Callable[[], float] = time.monotonic,
        first_reads: FirstReads | None = None,
    ) -> None:
        self._store = store
        self._hot = hot  # None when every write goes through to the store (--cache off)
        self.moves = moves
        self._clock = clock
        # kept only with a hot listing to correct them (and tell when they must go)
        if first_reads is None:
            first_reads = FirstReads(clock=clock)
        self._first_reads = first_reads if hot is not None else None
        self.peers: Peers | None = None  # in a cluster: the other nodes' hot entries

    def observe(self, before: Conversation | None, after: Conversation, event: Event) -> None:
        """Called after every applied mutation (the actor's and a creation's)."""
        if self._hot is not None:
            self._hot.noted(after, event)
        # its listing key is (updated_at in µs, id): equal instants, equal keys (0.6 µs less
        # an append than building both keys)
        if before is None or before.updated_at != after.updated_at:
            previous = None if before is None or before.deleted else listing_key(before)
            self.moves.moved(after.conversation_id, after.created_by, previous)

    def flushed(self, conversation_id: str) -> None:
        if self._hot is None or self._first_reads is None:
            return
        for cid, users in self._hot.flushed(conversation_id):
            self._first_reads.forgotten(cid, users)

    async def ids(self, principal: Principal, user_id: str, limit: int) -> list[str]:
        """Seed 000's listing: ids of what `user_id` owns or was shared, archived ones
        too, newest activity first; Forbidden unless the caller is that user or a service."""
        page = await self.page(listing_for(principal, user_id), USER_LISTING, limit, None)
        return [item.meta.conversation_id for item in page.items]

    async def page(
        self, principal: Principal, filters: Filters, limit: int, cursor: str | None
    ) -> Page:
        """One page of the caller's sidebar; `cursor` from the previous page, if any."""
        pinned, entries, more = await self._listed(principal, filters, limit, cursor)
        next_cursor = None
        if more:
            next_cursor = self._cursor(pinned, entries[-1][0], filters)
        return Page([item for _, item in entries], next_cursor)

    async def shard_page(
        self, principal: Principal, filters: Filters, limit: int, cursor: str | None
    ) -> ShardPage:
        """A page as `page` makes it, with each item's listing key and the moment it
        is pinned to, for a merge of several shards' pages (engine/sidebar_merge.py)."""
        pinned, entries, more = await self._listed(principal, filters, limit, cursor)
        if pinned is None:
            pinned = self.moves.pin()  # no await since the ranking: its moment
        return ShardPage(entries, more, self.moves.incarnation, pinned)

    async def _listed(
        self, principal: Principal, filters: Filters, limit: int, cursor: str | None
    ) -> tuple[int | None, list[tuple[Key, Item]], bool]:
        """The caller's entries from `cursor` on: the moment they are pinned to (None on
        a first page), up to `limit` of them, and whether more follow."""
        user = principal.user_id
        if user is None:
            raise InvalidInput(
                "listing conversations needs a user: send X-Canopy-User or a user's credential"
            )
        pinned, after = self._resume(cursor, filters) if cursor else (None, None)
        entries, more = await self._entries(user, filters, limit, pinned, after)
        return pinned, entries, more

    async def _entries(
        self, user: str, filters: Filters, limit: int, pinned: int | None, after: Key | None
    ) -> tuple[list[tuple[Key, Item]], bool]:
        hot: HotView | None = self._hot
        if self._hot is not None and self.peers is not None:
            hot = MergedHot(self._hot, user, await self.peers(user))
        try:
            return await self._page(user, filters, limit, pinned, after, hot)
        except StoreError as exc:
            raise Unavailable(f"store unavailable: {exc}") from None

    def _resume(self, raw: str, filters: Filters) -> tuple[int, Key]:
        try:
            cursor = _cursor_decode(base64.urlsafe_b64decode(raw.encode() + b"=="))
        except (binascii.Error, msgspec.DecodeError, ValueError):
            raise InvalidCursor("cursor is not one this API handed out") from None
        if cursor.filters != filter_fields(filters):
            raise InvalidCursor("a cursor continues the listing it came from: same filters")
        if cursor.incarnation != self.moves.incarnation or not self.moves.covers(cursor.pinned):
            raise CursorExpired("the cursor is too old (or the node restarted): list again")
        return cursor.pinned, (cursor.activity, cursor.conversation_id)

    async def _page(
        self,
        user: str,
        filters: Filters,
        limit: int,
        pinned: int | None,
        after: Key | None,
        hot: HotView | None,
    ) -> tuple[list[tuple[Key, Item]], bool]:
        fetch = limit + 1
        shared, owned = await self._reads(user, after, fetch)
        while True:
            exhausted = len(owned) < fetch
            extra = await self._moved_rows(user, pinned, hot)
            # From here to the end nothing awaits: the hot listing and the moves read
            # below are those of one moment, which a first page pins.
            ranked = self._ranked(user, filters, owned, shared, extra, pinned, after, hot)
            if not exhausted:  # only what lies before the last row read is complete
                frontier = rank(listing_key(owned[-1]))
                ranked = [(key, item) for key, item in ranked if rank(key) <= frontier]
            if len(ranked) > limit or exhausted:
                break
            fetch *= 4
            owned += await self._store.owned(user, listing_key(owned[-1]), fetch)
        return ranked[:limit], len(ranked) > limit

    async def _reads(
        self, user: str, after: Key | None, fetch: int
    ) -> tuple[list[tuple[Conversation, str]], list[Conversation]]:
        """The store's shared rows and first `fetch` owned rows after `after`; a first
        page's are kept (engine/first_reads.py)."""
        kept = self._first_reads if after is None else None
        if kept is not None:
            found = kept.get(user, fetch)
            if found is not None:
                return found
        token = kept.reading(user) if kept is not None else None
        began = self._clock()
        shared, owned = await asyncio.gather(
            self._store.shared(user), self._store.owned(user, after, fetch)
        )
        if kept is not None:
            kept.keep(user, token, began, fetch, shared, owned)
        return shared, owned

    async def _moved_rows(
        self, user: str, pinned: int | None, hot: HotView | None
    ) -> dict[str, Conversation]:
        """Rows of the user's conversations that moved after `pinned` and are no longer
        in the hot listing (placed where they stood then, shown as they are now)."""
        if pinned is None:
            return {}
        wanted = [
            cid for cid in self.moves.moved_owned(user, pinned) if hot is None or not hot.meta(cid)
        ]
        rows = await self._store.conversations(wanted) if wanted else []
        return {meta.conversation_id: meta for meta in rows}

    def _ranked(
        self,
        user: str,
        filters: Filters,
        owned: list[Conversation],
        shared: list[tuple[Conversation, str]],
        extra: dict[str, Conversation],
        pinned: int | None,
        after: Key | None,
        hot: HotView | None,
    ) -> list[tuple[Key, Item]]:
        """Every known candidate after `after`, placed as of `pinned`, in listing order."""
        hot_owned = set(hot.owned(user)) if hot is not None else set()
        moved = set(self.moves.moved_owned(user, pinned)) if pinned is not None else set()
        found: dict[str, tuple[Key, Item]] = {}

        def consider(key: Key | None, meta: Conversation | None, permission: str) -> None:
            if key is None or meta is None or meta.conversation_id in found:
                return
            found[meta.conversation_id] = key, Item(meta, permission)

        def newest(cid: str) -> Conversation | None:
            return hot.meta(cid) if hot is not None else None

        for row in owned:
            if row.conversation_id not in hot_owned and row.conversation_id not in moved:
                consider(listing_key(row), row, OWNER)
        for cid in hot_owned - moved:
            hot_row = newest(cid)
            consider(listing_key(hot_row) if hot_row else None, hot_row, OWNER)
        stored = {row.conversation_id: row for row in owned} if moved else {}
        for cid in moved:  # placed where they stood when the cursor was pinned
            # One that moved while `extra` was read (an append applied, its store write
            # behind) has no row there: its row read before it moved stands in. Without
            # it the conversation was left off the page (a flake of the store-backed mode
            # under a slow disk).
            meta = newest(cid) or extra.get(cid) or stored.get(cid)
            consider(self._placed(cid, None, pinned), meta, OWNER)
        for cid, (held, permission) in self._holdings(user, shared, hot).items():
            consider(self._placed(cid, listing_key(held), pinned), held, permission)
        ranked = [
            (key, item)
            for key, item in found.values()
            if (after is None or rank(key) > rank(after))
            and not gone(item.meta)
            and filters.admits(item.meta)
        ]
        ranked.sort(key=lambda entry: rank(entry[0]))
        return ranked

    def _placed(self, cid: str, now: Key | None, pinned: int | None) -> Key | None:
        """Where the conversation stood at epoch `pinned` (`now` if it has not moved)."""
        if pinned is None:
            return now
        position = self.moves.position(cid, pinned)
        return now if isinstance(position, NotMoved) else position

    def _holdings(
        self, user: str, shared: list[tuple[Conversation, str]], hot: HotView | None
    ) -> dict[str, tuple[Conversation, str]]:
        """What is shared with the user now: the store's rows, the hot changes on top."""
        held = {meta.conversation_id: (meta, permission) for meta, permission in shared}
        if hot is None:
            return held
        for cid, holding in hot.holdings(user).items():
            newest = hot.meta(cid)
            if holding is None or newest is None:
                held.pop(cid, None)
            else:
                held[cid] = newest, holding
        for cid, (_, permission) in list(held.items()):
            newest = hot.meta(cid)
            if newest is not None:
                held[cid] = newest, permission
        return held

    def _cursor(self, pinned: int | None, last: Key, filters: Filters) -> str:
        if pinned is None:
            pinned = self.moves.pin()  # the first page's moment, taken with no await since
        return cursor_at(self.moves.incarnation, pinned, last, filters)


def cursor_at(incarnation: str, pinned: int, last: Key, filters: Filters) -> str:
    """The cursor of a listing pinned at `pinned` that continues after `last`."""
    raw = _cursor_encode(_Cursor(incarnation, pinned, last[0], last[1], filter_fields(filters)))
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def cursor_maker(cursor: str) -> str:
    """The node that pinned a sidebar cursor (engine/moves.py), "" if it names none or is
    not one of ours: its next page is answered there."""
    try:
        decoded = _cursor_decode(base64.urlsafe_b64decode(cursor.encode() + b"=="))
    except (ValueError, msgspec.DecodeError):
        return ""
    return decoded.incarnation.partition("@")[2]


def filter_fields(filters: Filters) -> tuple[bool, bool | None, str | None, str | None]:
    return filters.favorite, filters.archived, filters.tag, filters.q
