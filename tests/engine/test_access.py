"""Principal: who may do what with a conversation, decided from its row and shares."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from engine.access import (
    ANONYMOUS,
    BRANCH,
    FORK,
    OWNER,
    READ,
    SYSTEM,
    Principal,
)
from engine.errors import Forbidden, InvalidInput, NotFound
from persistence.records import Conversation, Share

AT = datetime(2026, 1, 1, tzinfo=UTC)


def meta(owner: str = "alice", is_public: bool = False) -> Conversation:
    return Conversation("c1", "r1", "t", None, AT, owner, AT, is_public, None, None, 1, 1)


SHARES = {
    user: Share(user, permission, AT, "alice")
    for user, permission in (("rita", "read"), ("bran", "branch"), ("fern", "fork"))
}


def user(name: str) -> Principal:
    return Principal(name, "user")


@pytest.mark.parametrize(
    ("caller", "is_public", "expected"),
    [
        (user("alice"), False, OWNER),
        (user("rita"), False, READ),
        (user("bran"), False, BRANCH),
        (user("fern"), False, FORK),
        (user("stranger"), False, None),
        (user("stranger"), True, READ),
        (user("bran"), True, BRANCH),  # public never lowers a share
        (Principal("stranger", "service"), False, None),  # acting for a user: theirs
        (SYSTEM, False, OWNER),  # a trusted backend on its own account
        (ANONYMOUS, False, OWNER),  # --auth none: nothing is checked
        (Principal("stranger", "anonymous"), False, OWNER),
    ],
)
def test_level(caller: Principal, is_public: bool, expected: int | None) -> None:
    assert caller.level(meta(is_public=is_public), SHARES) == expected


def test_invisible_is_not_found_and_visible_but_weaker_is_forbidden() -> None:
    with pytest.raises(NotFound):
        user("stranger").require(meta(), SHARES, READ)
    with pytest.raises(Forbidden) as refused:
        user("rita").require(meta(), SHARES, BRANCH, "appending a message")
    assert refused.value.code == "permission_denied"
    assert "needs branch" in refused.value.message and "you have read" in refused.value.message
    assert user("fern").require(meta(), SHARES, FORK) == FORK


def test_a_read_only_credential_may_not_write_even_as_owner() -> None:
    reader = Principal("alice", "user", frozenset({"read"}))
    assert reader.require(meta(), SHARES, READ) == OWNER
    with pytest.raises(Forbidden) as refused:
        reader.require(meta(), SHARES, BRANCH)
    assert refused.value.code == "insufficient_scope"
    provider = Principal("alice", "user", frozenset({"openid", "email"}))  # not Canopy's
    assert provider.require(meta(), SHARES, OWNER) == OWNER
    writer = Principal("alice", "user", frozenset({"read", "write"}))
    assert writer.require(meta(), SHARES, OWNER) == OWNER


def test_authorship() -> None:
    assert user("alice").author(None) == "alice"
    assert user("alice").author("alice") == "alice"
    with pytest.raises(Forbidden) as refused:
        user("alice").author("mallory", "shared_by")
    assert refused.value.code == "author_mismatch" and "shared_by" in refused.value.message
    assert Principal("alice", "service").author("bob") == "bob"  # services name anyone
    assert Principal("alice", "service").author(None) == "alice"
    assert ANONYMOUS.author("bob") == "bob"
    with pytest.raises(InvalidInput):
        ANONYMOUS.author(None)


def test_who_may_list_a_user() -> None:
    assert user("alice").may_list("alice")
    assert not user("alice").may_list("bob")
    assert SYSTEM.may_list("bob")  # a service acting for nobody lists anyone
    assert not Principal("alice", "service").may_list("bob")  # acting for alice: hers
    assert Principal("alice", "service").may_list("alice")
    assert ANONYMOUS.may_list("bob")
