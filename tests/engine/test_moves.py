"""ActivityMoves: where conversations stood when a cursor was pinned."""

from __future__ import annotations

from engine.moves import NOT_MOVED, ActivityMoves


def test_a_conversation_is_placed_where_it_stood_at_the_pin() -> None:
    moves = ActivityMoves()
    moves.moved("a", "alice", (10, "a"))  # before any cursor
    pinned = moves.pin()
    assert moves.position("a", pinned) is NOT_MOVED
    moves.moved("a", "alice", (20, "a"))
    moves.moved("a", "alice", (30, "a"))  # same epoch: the first move tells where it stood
    later = moves.pin()
    moves.moved("a", "alice", (40, "a"))
    assert moves.position("a", pinned) == (20, "a")
    assert moves.position("a", later) == (40, "a")
    assert moves.moved_owned("alice", pinned) == ["a"]
    assert moves.moved_owned("bob", pinned) == []


def test_created_after_the_pin_was_not_listed_then() -> None:
    moves = ActivityMoves()
    pinned = moves.pin()
    moves.moved("new", "alice", None)
    assert moves.position("new", pinned) is None


def test_cursors_older_than_what_was_let_go_are_not_covered() -> None:
    now = [0.0]
    moves = ActivityMoves(horizon=60.0, clock=lambda: now[0])
    old = moves.pin()
    moves.moved("a", "alice", (1, "a"))
    recent = moves.pin()
    assert moves.covers(old) and moves.covers(recent)
    now[0] = 61.0
    moves.moved("b", "alice", (2, "b"))  # lets the first move go
    assert not moves.covers(old)
    assert moves.covers(recent)
    assert moves.moved_owned("alice", recent) == ["b"]
    assert len(moves) == 1


def test_the_log_is_bounded_in_count() -> None:
    moves = ActivityMoves(max_moves=3)
    for n in range(10):
        moves.pin()
        moves.moved(f"c{n}", "alice", (n, f"c{n}"))
    assert len(moves) == 3
    assert not moves.covers(0)


def test_another_process_never_covers_a_cursor_of_this_one() -> None:
    assert ActivityMoves().incarnation != ActivityMoves().incarnation
