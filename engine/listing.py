"""The listing merge of a caching node: seed 000's user listing and the sidebar answer
from the Store merged with what this node's hot actors changed and has not flushed
(engine/sidebar.py), told of every applied mutation and of every flush."""

from __future__ import annotations

from engine.access import Principal
from engine.actor import Observer
from engine.first_reads import FirstReads
from engine.moves import ActivityMoves
from engine.peer_listing import HotEntries, Peers, entries
from engine.sidebar import Filters, HotListing, Page, ShardPage, Sidebar
from persistence.flusher import Flusher
from persistence.store import Store


class Listing:
    def __init__(
        self,
        store: Store,
        flusher: Flusher,
        first_reads_seconds: float,
        node_id: str,
        max_stored_rows_bytes: int,
    ) -> None:
        first_reads = FirstReads(first_reads_seconds)
        self._hot = HotListing(max_clean_bytes=max_stored_rows_bytes)
        moves = ActivityMoves(maker=node_id)
        self._sidebar = Sidebar(store, self._hot, moves, first_reads=first_reads)
        flusher.watch_clean(self._sidebar.flushed)
        # told of every applied mutation (the actors' and a creation's): no extra call
        self.observe: Observer = self._sidebar.observe

    async def user_conversations(self, principal: Principal, user_id: str, limit: int) -> list[str]:
        return await self._sidebar.ids(principal, user_id, limit)

    async def shard_page(
        self, principal: Principal, filters: Filters, limit: int, cursor: str | None
    ) -> ShardPage:
        return await self._sidebar.shard_page(principal, filters, limit, cursor)

    async def page(
        self, principal: Principal, filters: Filters, limit: int, cursor: str | None
    ) -> Page:
        return await self._sidebar.page(principal, filters, limit, cursor)

    def stats(self) -> dict[str, int]:
        return self._hot.stats()

    def ask_peers(self, peers: Peers) -> None:
        """In a cluster: merge the other nodes' unflushed entries into every listing."""
        self._sidebar.peers = peers

    def hot_entries(self, user_id: str) -> HotEntries:
        """This node's unflushed entries for the user (what a peer's listing asks)."""
        return entries(self._hot, user_id)
