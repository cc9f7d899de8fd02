"""The serving loop polls for a window after I/O instead of sleeping (gateway/busy_poll.py):
the window opens on a poke, stays open while pokes come, closes after it runs out, and
adapts as haltpoll does. The node pokes on a request's bytes, its JSON answer and every
command of the lean Redis channel."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from gateway.busy_poll import BACKLOG_BYTES, BUSY_POLL, CHECK_SECONDS, GROW_START, BusyPoll
from gateway.config import Settings, add_arguments, build
from gateway.keys import FLUSHER
from persistence.resp import LeanRedis
from tests.gateway.gateway_helpers import API
from tests.services import REDIS_URL, require

MAX = 200e-6
TOKEN = "admin-token-of-the-busy-poll-test-0123"
NEW = {"title": "t", "created_by": "alice"}


class Clock:
    """A clock the test moves by hand: nothing here waits on real time."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def loop_pass() -> None:
    await asyncio.sleep(0)


async def test_a_poke_keeps_a_callback_ready_until_the_window_runs_out() -> None:
    clock = Clock()
    poll = BusyPoll(MAX, clock)
    poll.poke()  # the first one comes long after "the last": the window halves
    window = poll.window
    assert window == MAX / 2 and poll.polling
    for _ in range(5):  # the loop passes with no sleep while the window lasts
        clock.now += window / 10
        await loop_pass()
        assert poll.polling
    clock.now += window
    await loop_pass()
    await loop_pass()
    assert not poll.polling
    assert poll.stats()["polls"] == 1


async def test_pokes_while_polling_keep_it_open_past_the_first_window() -> None:
    clock = Clock()
    poll = BusyPoll(MAX, clock)
    poll.poke()
    window = poll.window
    for _ in range(10):  # ten windows' worth of time, a poke in each half window
        clock.now += window / 2
        poll.poke()
        await loop_pass()
        assert poll.polling
    assert poll.stats() == {
        "window_us": round(window * 1e6), "max_window_us": round(MAX * 1e6),
        "polls": 1, "widened": 0, "narrowed": 1, "yielded": 0,
    }  # fmt: skip


async def test_a_poke_just_past_the_window_widens_it_and_a_late_one_narrows_it() -> None:
    clock = Clock()
    poll = BusyPoll(MAX, clock)
    poll.poke()
    assert poll.window == MAX / 2
    clock.now += MAX * 0.75  # past the window, within the most it may be
    await loop_pass()
    assert not poll.polling
    poll.poke()
    assert poll.window == MAX and poll.stats()["widened"] == 1
    clock.now += MAX * 10  # polling would not have caught this one
    await loop_pass()
    poll.poke()
    assert poll.window == MAX / 2 and poll.stats()["narrowed"] == 2


async def test_sparse_pokes_narrow_it_to_nothing_and_close_ones_open_it_again() -> None:
    clock = Clock()
    poll = BusyPoll(MAX, clock)
    for _ in range(20):  # a request now and then: polling after each is wasted
        clock.now += 1.0
        poll.poke()
        await loop_pass()
        clock.now += MAX * 2
        await loop_pass()
    assert poll.window == 0 and not poll.polling
    polls = poll.stats()["polls"]
    clock.now += 1.0
    poll.poke()  # nothing to poll for: no window opens
    assert not poll.polling and poll.stats()["polls"] == polls
    clock.now += MAX / 2  # one soon after: polling would have caught it
    poll.poke()
    assert poll.window == GROW_START and poll.polling


async def test_off_it_gives_no_poker_and_close_stops_a_window() -> None:
    assert BusyPoll(0.0).poker is None
    clock = Clock()
    poll = BusyPoll(MAX, clock)
    assert poll.poker is not None
    poll.poke()
    assert poll.polling
    poll.close()
    assert not poll.polling and poll.poker is None
    await loop_pass()
    poll.poke()
    assert not poll.polling


async def test_it_yields_to_a_write_behind_that_is_behind() -> None:
    """A polling core never idles, so the kernel gives it none of the work waiting
    elsewhere (the flusher process, the store, Redis): while the write-behind has a
    backlog, no window opens, and an open one closes at its next look."""
    clock = Clock()
    behind = [False]
    poll = BusyPoll(MAX, clock)
    poll.yield_to(lambda: behind[0])
    poll.poke()
    assert poll.polling
    behind[0] = True
    clock.now += CHECK_SECONDS / 2  # asked again only after CHECK_SECONDS
    poll.poke()
    await loop_pass()
    assert poll.polling
    clock.now += CHECK_SECONDS
    poll.poke()
    await loop_pass()
    assert not poll.polling and poll.stats()["yielded"] == 1
    poll.poke()  # asked as a window opens, too
    assert not poll.polling and poll.stats()["yielded"] == 2
    behind[0] = False
    poll.poke()
    assert poll.polling
    poll.close()


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
async def test_the_node_yields_to_its_write_behind_past_the_backlog(start_node: Any) -> None:
    node = await start_node(flush_interval=3600.0)  # nothing is stored unasked
    poll = node.app[BUSY_POLL]
    flusher = node.app[FLUSHER]
    assert not poll._behind()
    status, created = await node.request("POST", f"{API}/conversations", json=NEW)
    assert status in (200, 201)
    cid = created["conversation_id"]
    _, tree = await node.request("GET", f"{API}/conversations/{cid}/tree")
    root = tree["messages"][0]["message_id"]
    text = "x" * 60_000
    while flusher.unflushed_bytes <= BACKLOG_BYTES:
        body = {"parent_message_id": root, "role": "human", "created_by": "alice",
                "content": {"type": "text", "text": text}}  # fmt: skip
        status, _ = await node.request("POST", f"{API}/conversations/{cid}/messages", json=body)
        assert status in (200, 201)
    assert poll._behind()


def test_the_window_is_a_setting_and_cannot_be_negative() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert build(parser.parse_args([]), environ={}).busy_poll_us == Settings.busy_poll_us
    assert build(parser.parse_args(["--busy-poll-us", "0"]), environ={}).busy_poll_us == 0
    with pytest.raises(ValueError, match="busy_poll_us"):
        build(parser.parse_args([]), environ={"CANOPY_BUSY_POLL_US": "-1"})


@pytest.mark.parametrize("backend", ["embedded", "cassandra+redis"], indirect=True)
async def test_the_node_polls_after_a_request_and_not_when_turned_off(
    start_node: Any, tmp_path: Path
) -> None:
    node = await start_node(admin_token=TOKEN)
    poll = node.app[BUSY_POLL]
    pokes = count_pokes(poll)
    status, _ = await node.request("POST", f"{API}/conversations", json=NEW)
    assert status in (200, 201)
    assert pokes["count"] >= 2  # the request's bytes and its answer
    opened = poll.stats()["polls"] + poll.stats()["yielded"]
    assert opened >= 1  # the first poke opened a window (or yielded to the write-behind)
    status, body = await node.request(
        "GET", "/admin/nodes", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert status == 200
    shown = body["nodes"][0]["stats"]["busy_poll"]
    assert shown["max_window_us"] == 200 and shown["polls"] + shown["yielded"] >= opened

    off = await start_node(busy_poll_us=0, data_dir=tmp_path / "off")
    status, _ = await off.request("POST", f"{API}/conversations", json=NEW)
    assert status in (200, 201)
    assert off.app[BUSY_POLL].poker is None
    assert off.app[BUSY_POLL].stats() == {
        "window_us": 0, "max_window_us": 0, "polls": 0, "widened": 0, "narrowed": 0, "yielded": 0,
    }  # fmt: skip


async def test_every_command_of_the_lean_redis_channel_pokes() -> None:
    require("redis")
    sent: list[None] = []
    lean = LeanRedis(REDIS_URL, timeout=5.0, on_send=lambda: sent.append(None))
    try:
        assert await lean.execute([("PING",)]) == [b"PONG"]
        assert len(sent) >= 1
        before = len(sent)
        futures = lean.send_now([("PING",), ("PING",)])
        assert futures is not None
        assert [await f for f in futures] == [b"PONG", b"PONG"]
        assert len(sent) == before + 1  # one write, one poke
    finally:
        lean.close()


def count_pokes(poll: BusyPoll) -> dict[str, int]:
    """Counts the node's pokes: wraps the poll's `poke` before any connection takes it."""
    counted = {"count": 0}
    poke = poll.poke

    def counting() -> None:
        counted["count"] += 1
        poke()

    poll.poke = counting  # type: ignore[method-assign]
    return counted
