"""Rebalancing: hand over the hot conversations whose placement moved to another node.

When the live nodes change (a node joined, or one left), every node looks at its hot
conversations and moves those the placement now puts elsewhere: the conversation is
marked moving (requests for it wait on the move, then go to the new owner: the
forwarder asks `moving`), the requests already being served here for it finish (the
dispatcher counts them, `serving`: one that met a passivated actor would activate it
here again), it is passivated (its queued appends drained under the
actor's lock, flushed, its lease released, its actor dropped), and the move ends once
Redis shows the lease let go (the directory sends releases with its next renewal round,
at most a third of a lease later), so the new owner, on the next request, finds no
holder and activates it from the Store and the journal tail. A few moves run at once
(`at_once`), so a join under load does not stall the node. A graceful leave (`leave`)
moves every hot conversation the same way, after the node left the membership.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from engine.directory import Directory
from engine.placement import Placement
from engine.registry import Registry
from persistence.background import stop

log = logging.getLogger(__name__)

AT_ONCE = 4  # moves in flight at once
IN_FLIGHT_SECONDS = 5.0  # at most this long for requests served here to finish first
RELEASE_POLL = 0.02  # seconds between looks at a released lease until Redis shows it gone


class Rebalancer:
    """This node's moves; an async context manager (waits for the moves in flight)."""

    def __init__(
        self,
        registry: Registry,
        placement: Placement,
        directory: Directory,
        node_id: str,
        *,
        release_timeout: float,
        at_once: int = AT_ONCE,
    ) -> None:
        self._registry = registry
        self._placement = placement
        self._directory = directory
        self._node_id = node_id
        self._release_timeout = release_timeout
        self._slots = asyncio.Semaphore(at_once)
        self._moving: dict[str, asyncio.Future[None]] = {}
        self._in_flight: dict[str, int] = {}  # conversation -> requests being served here
        self._idle: dict[str, asyncio.Future[None]] = {}  # a move waiting for them to end
        self._passes: set[asyncio.Task[int]] = set()
        self.started = 0
        self.finished = 0  # moves that ended with the conversation handed over
        self.kept = 0  # moves that ended with it still here (its flush failed)
        self.waited = 0  # requests that waited on a move

    async def __aenter__(self) -> Rebalancer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.gather(*(stop(task) for task in list(self._passes)))

    def stats(self) -> dict[str, Any]:
        return {
            "moves_started": self.started,
            "moves_finished": self.finished,
            "moves_kept": self.kept,
            "moving": len(self._moving),
            "requests_waited": self.waited,
        }

    # -- what the forwarder asks -----------------------------------------------------------

    def moving(self, conversation_id: str) -> bool:
        return conversation_id in self._moving

    async def wait(self, conversation_id: str) -> None:
        """Until the conversation's move has ended (at once if it is not moving)."""
        move = self._moving.get(conversation_id)
        if move is not None:
            self.waited += 1
            await asyncio.shield(move)

    @contextmanager
    def serving(self, conversation_id: str) -> Iterator[None]:
        """Around a request served here for the conversation (the dispatcher's)."""
        in_flight = self._in_flight
        in_flight[conversation_id] = in_flight.get(conversation_id, 0) + 1
        try:
            yield
        finally:
            left = in_flight[conversation_id] - 1
            if left:
                in_flight[conversation_id] = left
            else:
                del in_flight[conversation_id]
                idle = self._idle.pop(conversation_id, None)
                if idle is not None and not idle.done():
                    idle.set_result(None)

    async def _served(self, conversation_id: str) -> None:
        """Until no request is being served here for the conversation (bounded)."""
        if conversation_id not in self._in_flight:
            return
        idle = self._idle.setdefault(conversation_id, asyncio.get_running_loop().create_future())
        try:
            async with asyncio.timeout(IN_FLIGHT_SECONDS):
                await asyncio.shield(idle)
        except TimeoutError:
            log.warning("rebalance: requests for %s still in flight; moving it", conversation_id)

    # -- moving ----------------------------------------------------------------------------

    def members_changed(self, _: frozenset[str]) -> None:
        """A Membership watcher (called after the placement's own update)."""
        task = asyncio.get_running_loop().create_task(self.rebalance(), name="rebalance")
        self._passes.add(task)
        task.add_done_callback(self._passes.discard)

    async def rebalance(self) -> int:
        """Hand over every hot conversation placed elsewhere now; how many moved."""
        placed_elsewhere = [
            actor.id
            for actor in self._registry.actors()
            if self._placement.owner_of(actor.id) != self._node_id
        ]
        return await self.hand_over(placed_elsewhere)

    async def leave(self, deadline: float) -> int:
        """Hand over every hot conversation (this node left the membership), within
        `deadline` seconds; how many moved."""
        finished = self.finished
        try:
            async with asyncio.timeout(deadline):
                await self.hand_over([actor.id for actor in self._registry.actors()])
                # and the moves a watcher's pass started (the leave changed the placement)
                await asyncio.gather(*self._passes, return_exceptions=True)
                return self.finished - finished
        except TimeoutError:
            log.warning("leaving: %d conversations not handed over in %.1fs (closed with the "
                        "node)", len(self._registry), deadline)  # fmt: skip
            return self.finished - finished

    async def hand_over(self, conversation_ids: Iterable[str]) -> int:
        wanted = [cid for cid in conversation_ids if cid not in self._moving]
        if not wanted:
            return 0
        started_at = time.monotonic()
        moved = sum(await asyncio.gather(*(self._move(cid) for cid in wanted)))
        log.info("rebalance: handed over %d of %d conversations in %.2fs", moved, len(wanted),
                 time.monotonic() - started_at)  # fmt: skip
        return moved

    async def _move(self, conversation_id: str) -> bool:
        async with self._slots:
            if conversation_id in self._moving or self._registry.hot(conversation_id) is None:
                return False  # another pass moves it, or it is gone already
            move = self._moving[conversation_id] = asyncio.get_running_loop().create_future()
            self.started += 1
            try:
                await self._served(conversation_id)
                moved = await self._registry.passivate(conversation_id)
                if moved:
                    await self._send_releases()  # not at the next round: the move waits
                    await self._released(conversation_id)
            finally:
                del self._moving[conversation_id]
                move.set_result(None)
            if moved:
                self.finished += 1
            else:
                self.kept += 1
            return moved

    async def _send_releases(self) -> None:
        try:
            await self._directory.send_releases()
        except Exception as exc:  # noqa: BLE001 - sent again with the directory's next round
            log.warning("rebalance: sending the lease release failed: %s", exc)

    async def _released(self, conversation_id: str) -> None:
        """Until Redis no longer shows this node holding the lease (bounded: a lease not
        renewed expires by itself)."""
        deadline = time.monotonic() + self._release_timeout
        while time.monotonic() < deadline:
            try:
                if await self._directory.holder(conversation_id) != self._node_id:
                    return
            except Exception as exc:  # noqa: BLE001 - Redis unreachable: the lease expires
                log.warning("rebalance: lease lookup failed: %s", exc)
                return
            await asyncio.sleep(RELEASE_POLL)
