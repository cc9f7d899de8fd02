"""Message ids are time-ordered UUIDs (version 7); conversation and branch ids random."""

from __future__ import annotations

import uuid

import pytest

from engine import ids
from engine.ids import new_id, time_ordered_id
from tests.engine.conftest import Engine


def test_a_time_ordered_id_is_a_version_7_uuid_with_its_milliseconds_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ids.time, "time_ns", lambda: 1_796_000_000_123_456_789)
    made = time_ordered_id()
    parsed = uuid.UUID(made)
    assert str(parsed) == made
    assert (parsed.version, parsed.variant) == (7, uuid.RFC_4122)
    assert parsed.int >> 80 == 1_796_000_000_123


def test_later_milliseconds_sort_later_and_ids_of_one_millisecond_differ(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = iter(range(1_796_000_000_000_000_000, 1_796_000_001_000_000_000, 1_000_000))
    monkeypatch.setattr(ids.time, "time_ns", lambda: next(clock))
    made = [time_ordered_id() for _ in range(500)]
    assert made == sorted(made)
    monkeypatch.setattr(ids.time, "time_ns", lambda: 1_796_000_000_000_000_000)
    same_ms = {time_ordered_id() for _ in range(10_000)}
    assert len(same_ms) == 10_000  # 74 random bits each


def test_random_ids_stay_version_4() -> None:
    assert uuid.UUID(new_id()).version == 4


@pytest.mark.asyncio
async def test_appended_messages_and_roots_get_time_ordered_ids_conversations_random(
    engine: Engine,
) -> None:
    actor = await engine.conversation()
    appended = await engine.say(actor.id, actor.meta.root_id, "a")
    assert uuid.UUID(actor.meta.root_id).version == 7
    assert uuid.UUID(appended.message_id).version == 7
    assert uuid.UUID(actor.id).version == 4
