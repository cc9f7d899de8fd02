"""A sidebar merged with the peers' unflushed entries: what another node changed is
listed, the newer row of a conversation wins, a share revoked elsewhere is gone."""

from __future__ import annotations

from pathlib import Path

import msgspec

from engine.moves import ActivityMoves
from engine.peer_listing import HotEntries, decode, encode, entries
from engine.sidebar import Filters, HotListing, Sidebar
from persistence.records import Created, Share, ShareRevoked, ShareSet
from persistence.sqlite import SQLiteStore
from tests.engine.test_hot_listing import ALICE, listed, row


async def test_the_peers_entries_are_merged_newest_first(tmp_path: Path) -> None:
    here, there = HotListing(), HotListing()
    a, b = row("a", 1), row("b", 2)
    here.noted(a, Created(a, []))
    there.noted(b, Created(b, []))
    newer_a = msgspec.structs.replace(a, updated_at=b.updated_at.replace(year=2027), version=2)
    there.noted(newer_a, Created(newer_a, []))  # the conversation moved there, written since
    async with SQLiteStore(tmp_path / "canopy.db") as store:
        sidebar = Sidebar(store, here, ActivityMoves())
        assert await listed(sidebar) == ["a"]

        async def peers(user: str) -> list[HotEntries]:
            return [decode(encode(entries(there, user)))]  # as it crosses the wire

        sidebar.peers = peers
        assert await listed(sidebar) == ["a", "b"]
        page = await sidebar.page(ALICE, Filters(), 30, None)
        assert page.items[0].meta.version == 2  # the newer row of "a"


async def test_a_share_revoked_on_a_peer_is_not_listed(tmp_path: Path) -> None:
    here, there = HotListing(), HotListing()
    c = msgspec.structs.replace(row("c", 1), created_by="bob")
    share = Share("alice", "read", c.created_at, "bob")
    shared = msgspec.structs.replace(c, version=2)
    here.noted(shared, ShareSet(share))
    revoked = msgspec.structs.replace(c, version=3)
    there.noted(revoked, ShareRevoked("alice"))
    async with SQLiteStore(tmp_path / "canopy.db") as store:
        sidebar = Sidebar(store, here, ActivityMoves())
        assert await listed(sidebar) == ["c"]

        async def peers(user: str) -> list[HotEntries]:
            return [entries(there, user)]

        sidebar.peers = peers
        assert await listed(sidebar) == []
