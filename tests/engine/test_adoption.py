"""Adoption's choices (engine/adoption.py) over fakes: which journaled conversations a
sweep activates, when sweeps start, and that they never overlap. Against real nodes:
tests/cluster/test_listings.py."""

from __future__ import annotations

import asyncio
from typing import Any

from engine.adoption import Adopter
from tests.waiting import until


class FakeRegistry:
    def __init__(self, hot: set[str]) -> None:
        self._hot = hot
        self.adopted: list[str] = []

    def hot(self, conversation_id: str) -> object | None:
        return object() if conversation_id in self._hot else None

    async def adopt(self, conversation_id: str) -> bool:
        self.adopted.append(conversation_id)
        return True


class FakePlacement:
    def owner_of(self, conversation_id: str) -> str:
        return conversation_id.split("-", 1)[0]


class FakeDirectory:
    def __init__(self, held: dict[str, str]) -> None:
        self._held = held

    async def holder(self, conversation_id: str) -> str | None:
        return self._held.get(conversation_id)


def adopter(registry: FakeRegistry, journaled: Any, held: dict[str, str]) -> Adopter:
    return Adopter(registry, journaled, FakePlacement(), FakeDirectory(held), "me")  # type: ignore[arg-type]


async def test_a_sweep_adopts_only_orphans_placed_here() -> None:
    registry = FakeRegistry(hot={"me-hot"})

    async def journaled() -> list[str]:
        return ["me-hot", "me-held", "me-orphan", "other-orphan", "me-second"]

    sweeping = adopter(registry, journaled, held={"me-held": "n2"})
    assert await sweeping.sweep() == 2
    assert sorted(registry.adopted) == ["me-orphan", "me-second"]
    assert sweeping.stats()["adopted"] == 2


async def test_departures_start_sweeps_that_never_overlap() -> None:
    registry = FakeRegistry(hot=set())
    release = asyncio.Event()
    reads = 0

    async def journaled() -> list[str]:
        nonlocal reads
        reads += 1
        await release.wait()
        return []

    async with adopter(registry, journaled, held={}) as sweeping:
        sweeping.members_changed(frozenset({"me", "n2", "n3"}))  # the first view: no sweep
        sweeping.members_changed(frozenset({"me", "n2", "n3", "n4"}))  # a join: no sweep
        await asyncio.sleep(0)
        assert reads == 0
        sweeping.members_changed(frozenset({"me", "n2", "n4"}))  # n3 departed
        await until(lambda: reads == 1)  # the sweep is reading
        sweeping.members_changed(frozenset({"me", "n4"}))  # n2 too, during the sweep
        sweeping.start()  # and once more: still one sweep to follow
        await asyncio.sleep(0)
        assert reads == 1
        release.set()
        await until(lambda: sweeping.stats()["sweeps"] == 2)
        assert reads == 2
        await until(lambda: not sweeping.stats()["sweeping"])
        assert sweeping.stats()["sweeps"] == 2
