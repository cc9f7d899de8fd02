"""The Store contract: every backend (see STORES in conftest.py) must pass all of it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from msgspec.structs import replace

from persistence.accounts import Account
from persistence.records import Snapshot
from persistence.store import Store, listing_key, rank

if TYPE_CHECKING:
    from conftest import Rows


async def full(store: Store, rows: Rows, cid: str = "c1") -> Snapshot:
    """Write a conversation with a root, two messages, two branches and two shares."""
    root = rows.message(f"{cid}-root", None, 0)
    a = rows.message("a", root.message_id, 1)
    b = rows.message("b", root.message_id, 2)
    conversation = rows.conversation(cid, version=5, message_count=3)
    branches = {
        "br1": rows.branch("br1", "a"),
        "br2": rows.branch("br2", "b", created_at=rows.at(1)),
    }
    shares = {"bob": rows.share("bob"), "carol": rows.share("carol", "fork", shared_at=rows.at(1))}
    await store.write(
        cid,
        rows.changes(conversation, (b, root, a), branches, shares),
    )
    return Snapshot(conversation, [root, a, b], list(branches.values()), list(shares.values()))


async def load(store: Store, cid: str) -> Snapshot:
    snapshot = await store.load(cid)
    assert snapshot is not None
    return snapshot


async def listing(store: Store, user: str, limit: int = 100) -> list[str]:
    """The user's own and shared conversations, in listing order."""
    metas = await store.owned(user, None, limit) + [m for m, _ in await store.shared(user)]
    return [key[1] for key in sorted({listing_key(m) for m in metas}, key=rank)][:limit]


async def test_load_of_unknown_conversation_is_none(store: Store) -> None:
    assert await store.load("unknown") is None
    assert await store.owned("nobody", None, 10) == []
    assert await store.shared("nobody") == []


async def test_written_changes_load_back(store: Store, rows: Rows) -> None:
    written = await full(store, rows)
    loaded = await load(store, "c1")
    assert loaded.conversation == written.conversation
    assert loaded.messages == written.messages  # ordered by seq, not by write order
    assert {b.branch_id: b for b in loaded.branches} == {b.branch_id: b for b in written.branches}
    assert {s.shared_with: s for s in loaded.shares} == {s.shared_with: s for s in written.shares}
    for user in ("alice", "bob", "carol"):
        assert await listing(store, user) == ["c1"]


async def test_conversations_do_not_see_each_others_rows(store: Store, rows: Rows) -> None:
    await full(store, rows, "c1")
    other = await full(store, rows, "c2")
    assert (await load(store, "c1")).conversation.conversation_id == "c1"
    loaded = await load(store, "c2")
    assert loaded.messages[0].message_id == "c2-root"
    assert len(loaded.messages) == 3 and len(loaded.branches) == 2
    assert loaded.conversation == other.conversation


async def test_newer_rows_overwrite_older_ones(store: Store, rows: Rows) -> None:
    await full(store, rows)
    streaming = rows.message("a", "c1-root", 1, status="in_progress")
    moved = rows.branch("br1", "b", last_updated=rows.at(9))
    await store.write(
        "c1",
        rows.changes(
            rows.conversation("c1", version=6, message_count=3),
            (streaming,),
            {"br1": moved},
        ),
    )
    done = replace(streaming, content=b'{"type":"text","text":"done"}', status="complete")
    await store.write(
        "c1", rows.changes(rows.conversation("c1", version=7, message_count=3), (done,))
    )
    loaded = await load(store, "c1")
    assert [m.message_id for m in loaded.messages] == ["c1-root", "a", "b"]
    assert loaded.messages[1] == done
    assert {b.branch_id: b for b in loaded.branches}["br1"] == moved
    assert loaded.conversation.version == 7


async def test_none_deletes_a_branch_or_share(store: Store, rows: Rows) -> None:
    await full(store, rows)
    await store.write(
        "c1",
        rows.changes(
            rows.conversation("c1", version=6),
            branches={"br1": None},
            shares={"bob": None},
        ),
    )
    loaded = await load(store, "c1")
    assert [b.branch_id for b in loaded.branches] == ["br2"]
    assert [s.shared_with for s in loaded.shares] == ["carol"]
    assert len(loaded.messages) == 3


async def test_a_revoked_share_leaves_the_holders_listing(store: Store, rows: Rows) -> None:
    await full(store, rows)
    await store.write(
        "c1",
        rows.changes(
            rows.conversation("c1", version=6),
            shares={"bob": None},
        ),
    )
    assert await listing(store, "bob") == []
    assert await listing(store, "carol") == ["c1"]
    assert await listing(store, "alice") == ["c1"]


async def test_delete_leaves_a_tombstone(store: Store, rows: Rows) -> None:
    written = await full(store, rows)
    await full(store, rows, "kept")
    tombstone = replace(written.conversation, version=6, deleted=True, updated_at=rows.at(60))
    await store.write("c1", rows.changes(tombstone))
    assert await load(store, "c1") == Snapshot(tombstone, [], [], [])
    for user in ("alice", "bob", "carol"):
        assert "c1" not in await listing(store, user)
    assert await listing(store, "alice") == ["kept"]


async def test_listing_is_most_recent_first_and_limited(store: Store, rows: Rows) -> None:
    for n, cid in enumerate(["old", "newest", "middle"]):
        seconds = {"old": 10, "middle": 20, "newest": 30}[cid]
        conversation = rows.conversation(cid, version=n + 1, updated_at=rows.at(seconds))
        await store.write(cid, rows.changes(conversation, (rows.message(f"{cid}-root", None, 0),)))
    assert [(m.conversation_id, m.updated_at) for m in await store.owned("alice", None, 10)] == [
        ("newest", rows.at(30)),
        ("middle", rows.at(20)),
        ("old", rows.at(10)),
    ]
    assert await listing(store, "alice", 2) == ["newest", "middle"]
    assert await listing(store, "bob") == []


async def test_listing_follows_the_latest_activity(store: Store, rows: Rows) -> None:
    for cid, seconds in (("a", 10), ("b", 20)):
        await store.write(cid, rows.changes(rows.conversation(cid, updated_at=rows.at(seconds))))
    assert await listing(store, "alice") == ["b", "a"]
    await store.write("a", rows.changes(rows.conversation("a", version=2, updated_at=rows.at(30))))
    assert await listing(store, "alice") == ["a", "b"]


async def test_older_conversation_row_never_overwrites_a_newer_one(
    store: Store, rows: Rows
) -> None:
    newer = rows.conversation("c1", version=5, title="newer")
    await store.write("c1", rows.changes(newer))
    await store.write("c1", rows.changes(rows.conversation("c1", version=3, title="older")))
    assert (await load(store, "c1")).conversation == newer
    older_delete = rows.conversation("c1", version=4, deleted=True)
    await store.write("c1", rows.changes(older_delete))
    assert (await load(store, "c1")).conversation == newer


async def test_writing_the_same_changes_twice_is_idempotent(store: Store, rows: Rows) -> None:
    root = rows.message("c1-root", None, 0)
    changes = rows.changes(
        rows.conversation("c1", version=2),
        (root, rows.message("a", "c1-root", 1)),
        {"br": rows.branch("br", "a")},
        {"bob": rows.share("bob")},
    )
    await store.write("c1", changes)
    once = await load(store, "c1")
    listed = await store.shared("bob")
    await store.write("c1", changes)
    assert await load(store, "c1") == once
    assert await store.shared("bob") == listed
    assert len(once.messages) == 2


async def test_writing_a_deletion_twice_is_idempotent(store: Store, rows: Rows) -> None:
    written = await full(store, rows)
    changes = rows.changes(replace(written.conversation, version=6, deleted=True))
    await store.write("c1", changes)
    await store.write("c1", changes)
    assert await load(store, "c1") == Snapshot(changes.conversation, [], [], [])  # type: ignore[arg-type]
    assert await listing(store, "alice") == []


# -- targeted queries (the store-backed `--cache off` mode) ----------------------------------


async def deep(store: Store, rows: Rows, cid: str = "c1") -> list[str]:
    """A chain root -> m1 -> m2 -> m3 with side children under m1 (written out of order)."""
    root = rows.message(f"{cid}-root", None, 0)
    chain = [root] + [rows.message(f"m{i}", f"m{i - 1}" if i > 1 else root.message_id, i)
                      for i in range(1, 4)]  # fmt: skip
    sides = [rows.message(f"s{i}", "m1", 4 + i) for i in range(3)]
    everything = tuple(reversed(chain + sides))
    await store.write(cid, rows.changes(rows.conversation(cid, message_count=7), everything))
    return [m.message_id for m in chain]


async def test_lineage_walks_parents_in_the_store(store: Store, rows: Rows) -> None:
    chain = await deep(store, rows)
    await deep(store, rows, "other")  # same message ids in another conversation
    path = await store.lineage("c1", "m3")
    assert [m.message_id for m in path] == chain
    assert path[-1] == rows.message("m3", "m2", 3)
    assert [m.message_id for m in await store.lineage("c1", "s1")] == ["c1-root", "m1", "s1"]
    assert [m.message_id for m in await store.lineage("c1", "c1-root")] == ["c1-root"]
    assert await store.lineage("c1", "unknown") == []
    assert await store.lineage("unknown", "m1") == []


async def test_children_come_in_creation_order(store: Store, rows: Rows) -> None:
    await deep(store, rows)
    assert [m.message_id for m in await store.children("c1", "m1")] == ["m2", "s0", "s1", "s2"]
    assert [m.message_id for m in await store.children("c1", "m3")] == []
    assert await store.children("c1", "unknown") == []
    assert await store.children("other", "m1") == []


async def test_head_is_the_conversation_without_its_messages(store: Store, rows: Rows) -> None:
    written = await full(store, rows)
    head = await store.head("c1")
    assert head is not None
    assert head.conversation == written.conversation and head.messages == []
    assert [b.branch_id for b in head.branches] == ["br1", "br2"]
    assert [s.shared_with for s in head.shares] == ["bob", "carol"]
    assert await store.head("unknown") is None
    tombstone = replace(written.conversation, version=6, deleted=True)
    await store.write("c1", rows.changes(tombstone))
    assert await store.head("c1") == Snapshot(tombstone, [], [], [])


# -- built-in accounts ---------------------------------------------------------------------


def account(user_id: str, email: str) -> Account:
    created = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    return Account(user_id, email, "$argon2id$hash", created, name=f"name of {user_id}")


async def test_an_account_is_found_by_email_and_by_user_id(store: Store) -> None:
    alice = account("u1", "alice@example.com")
    assert await store.create_account(alice)
    assert await store.account_by_email("alice@example.com") == alice
    assert await store.account("u1") == alice
    assert await store.account_by_email("bob@example.com") is None
    assert await store.account("u2") is None


async def test_an_email_has_one_account_however_many_register_at_once(store: Store) -> None:
    contenders = [account(f"u{i}", "same@example.com") for i in range(5)]
    won = await asyncio.gather(*(store.create_account(a) for a in contenders))
    assert sorted(won) == [False] * 4 + [True]
    winner = contenders[won.index(True)]
    assert await store.account_by_email("same@example.com") == winner
    for loser in (a for a, ok in zip(contenders, won, strict=True) if not ok):
        assert await store.account(loser.user_id) is None


# -- the sidebar's index and the expiry index -------------------------------------------------


async def test_owned_pages_by_activity_then_id(store: Store, rows: Rows) -> None:
    stamps = {"a": 30, "b": 20, "c": 20, "d": 10}  # b and c tie: ids ascending
    for cid, seconds in stamps.items():
        await store.write(cid, rows.changes(rows.conversation(cid, updated_at=rows.at(seconds))))
    first = await store.owned("alice", None, 2)
    assert [m.conversation_id for m in first] == ["a", "b"]
    rest = await store.owned("alice", listing_key(first[-1]), 10)
    assert [m.conversation_id for m in rest] == ["c", "d"]
    assert await store.owned("alice", listing_key(rest[-1]), 10) == []
    assert rest[0] == rows.conversation("c", updated_at=rows.at(20))  # the row itself


async def test_session_fields_round_trip(store: Store, rows: Rows) -> None:
    meta = rows.conversation(
        "c1", is_favorite=True, archived=True, tags=("a", "b"), expires_at=rows.at(99),
        last_message="hi",
    )  # fmt: skip
    await store.write("c1", rows.changes(meta))
    assert (await load(store, "c1")).conversation == meta
    assert await store.owned("alice", None, 10) == [meta]
    assert await store.conversations(["c1", "unknown"]) == [meta]


async def test_shared_lists_each_holder_with_the_permission(store: Store, rows: Rows) -> None:
    await full(store, rows)
    held = {user: await store.shared(user) for user in ("bob", "carol", "alice")}
    assert [(m.conversation_id, p) for m, p in held["bob"]] == [("c1", "read")]
    assert [(m.conversation_id, p) for m, p in held["carol"]] == [("c1", "fork")]
    assert held["alice"] == []


async def test_expired_finds_what_expires_first_and_follows_changes(
    store: Store, rows: Rows
) -> None:
    for cid, seconds in (("late", 300), ("soon", 100), ("never", None), ("gone", 50)):
        expires = None if seconds is None else rows.at(seconds)
        await store.write(cid, rows.changes(rows.conversation(cid, expires_at=expires)))
    assert await store.expired(rows.at(1000), 10) == ["gone", "soon", "late"]
    assert await store.expired(rows.at(200), 1) == ["gone"]
    assert await store.expired(rows.at(10), 10) == []
    moved = rows.conversation("soon", version=2, expires_at=rows.at(500))
    await store.write("soon", rows.changes(moved))
    cleared = rows.conversation("late", version=2, expires_at=None)
    await store.write("late", rows.changes(cleared))
    deleted = rows.conversation("gone", version=2, deleted=True)
    await store.write("gone", rows.changes(deleted))
    assert await store.expired(rows.at(1000), 10) == ["soon"]


async def test_a_delete_removes_the_rows_targeted_reads_find(store: Store, rows: Rows) -> None:
    written = await full(store, rows)
    await store.write("c1", rows.changes(replace(written.conversation, version=6, deleted=True)))
    assert await store.lineage("c1", "a") == []
    assert await store.children("c1", "c1-root") == []
    assert await store.conversations(["c1"]) == []
    assert await store.shared("bob") == [] and await store.owned("alice", None, 10) == []
