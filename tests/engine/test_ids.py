"""Message ids are time-ordered UUIDs (version 7); conversation and branch ids random."""

from __future__ import annotations

import os
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


def test_the_os_randomness_is_drawn_in_bulk_not_once_an_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each `os.urandom` lets go of the GIL: on the loop, beside a busy store thread,
    one cost 250-350 us of wall time where a pooled id takes 2.5 us."""
    draws: list[int] = []
    real = os.urandom
    monkeypatch.setattr(ids.os, "urandom", lambda n: draws.append(n) or real(n))
    monkeypatch.setattr(ids, "_pool", [])
    made = {time_ordered_id() for _ in range(1_000)} | {new_id() for _ in range(100)}
    assert len(made) == 1_100
    assert len(draws) <= 4  # 1,200 draws of 80 bits, 409 to a call


def test_a_forked_process_draws_its_own_randomness() -> None:
    time_ordered_id()  # the pool is filled here
    reading, writing = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        os.write(writing, "\n".join(time_ordered_id()[-12:] for _ in range(50)).encode())
        os._exit(0)
    os.close(writing)
    with os.fdopen(reading) as pipe:
        theirs = set(pipe.read().split())
    os.waitpid(child, 0)
    ours = {time_ordered_id()[-12:] for _ in range(50)}
    assert len(theirs) == 50 and not ours & theirs


@pytest.mark.asyncio
async def test_appended_messages_and_roots_get_time_ordered_ids_conversations_random(
    engine: Engine,
) -> None:
    actor = await engine.conversation()
    appended = await engine.say(actor.id, actor.meta.root_id, "a")
    assert uuid.UUID(actor.meta.root_id).version == 7
    assert uuid.UUID(appended.message_id).version == 7
    assert uuid.UUID(actor.id).version == 4
