"""Built-in accounts over real HTTP, on every backend: register, log in, me, and refusals."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pytest
from argon2 import PasswordHasher

from gateway.accounts import Accounts, InvalidCredentials, TokenIssuer
from persistence.sqlite import SQLiteStore

if TYPE_CHECKING:
    from conftest import Node, NodeFactory

ACCOUNTS = {"auth": "jwt", "accounts": True}
PASSWORD = "correct horse battery"
USER_KEYS = {"user_id", "email", "name", "created_at"}


async def post(node: Node, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    return await node.request("POST", f"/api/auth/{path}", json=body)


async def me(node: Node, access_token: str) -> tuple[int, Any]:
    return await node.request(
        "GET", "/api/auth/me", headers={"Authorization": f"Bearer {access_token}"}
    )


def login_as(email: str, password: str = PASSWORD) -> dict[str, str]:
    return {"email": email, "password": password}


def assert_error(status: int, body: Any, expected: int, code: str) -> None:
    assert status == expected, body
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body


async def test_register_login_and_me_round_trip(start_node: NodeFactory) -> None:
    node = await start_node(**ACCOUNTS)
    registration = {"email": "  Alice@Example.COM ", "password": PASSWORD, "name": "Alice"}
    status, registered = await post(node, "register", registration)
    assert status == 200, registered
    assert registered["token_type"] == "bearer" and set(registered["user"]) == USER_KEYS
    user = registered["user"]
    assert (user["email"], user["name"]) == ("alice@example.com", "Alice")
    assert await me(node, registered["access_token"]) == (200, user)

    status, logged_in = await post(node, "login", login_as("ALICE@example.com"))
    assert status == 200 and logged_in["user"] == user, logged_in
    assert await me(node, logged_in["access_token"]) == (200, user)

    # The token is a caller like any other: what it creates is the account's.
    headers = {"Authorization": f"Bearer {logged_in['access_token']}"}
    status, created = await node.request(
        "POST", "/api/v1/conversations", json={"title": "mine"}, headers=headers
    )
    assert status == 200 and created["created_by"] == user["user_id"], created


async def test_refusals_have_one_shape_and_say_nothing_of_who_exists(
    start_node: NodeFactory,
) -> None:
    node = await start_node(**ACCOUNTS)
    assert (await post(node, "register", login_as("bob@example.com")))[0] == 200
    assert_error(*await post(node, "register", login_as("BOB@example.com")),
                 409, "email_taken")  # fmt: skip
    wrong = await post(node, "login", login_as("bob@example.com", "not his one"))
    unknown = await post(node, "login", login_as("nobody@example.com"))
    assert_error(*wrong, 401, "invalid_credentials")
    assert wrong == unknown  # the same status, code and message
    assert_error(*await post(node, "register", login_as("c@example.com", "short")),
                 422, "invalid_field")  # fmt: skip
    assert_error(*await post(node, "register", login_as("no-at-sign")),
                 422, "invalid_field")  # fmt: skip
    status, body = await node.request("GET", "/api/auth/me")
    assert_error(status, body, 401, "unauthorized")


async def test_login_attempts_are_rate_limited_per_email(start_node: NodeFactory) -> None:
    node = await start_node(**ACCOUNTS)
    attempt = {"email": "carol@example.com", "password": "a wrong password"}
    for _ in range(5):  # the email's bucket holds five
        assert_error(*await post(node, "login", attempt), 401, "invalid_credentials")
    async with node.session.post(f"{node.base}/api/auth/login", json=attempt) as response:
        body = await response.json()
        assert_error(response.status, body, 429, "too_many_attempts")
        assert int(response.headers["Retry-After"]) >= 1
    other = {"email": "dave@example.com", "password": "a wrong password"}
    assert_error(*await post(node, "login", other), 401, "invalid_credentials")


async def test_tokens_outlive_a_restart_through_the_data_dirs_secret(
    start_node: NodeFactory,
) -> None:
    node = await start_node(**ACCOUNTS)
    _, registered = await post(node, "register", login_as("erin@example.com"))
    secret = node.settings.data_dir / "jwt-secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    await node.close()
    again = await start_node(**ACCOUNTS)
    assert await me(again, registered["access_token"]) == (200, registered["user"])


async def test_accounts_are_off_unless_asked_for(start_node: NodeFactory) -> None:
    node = await start_node()
    status, body = await post(node, "login", login_as("a@example.com"))
    assert_error(status, body, 404, "not_found")


class CountingHasher(PasswordHasher):
    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8, parallelism=1)  # fast: only counted
        self.verified: list[str] = []

    def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
        self.verified.append(str(hash))
        return super().verify(hash, password)


async def test_an_unknown_email_still_costs_a_password_check(tmp_path: Path) -> None:
    hasher = CountingHasher()
    async with (
        SQLiteStore(tmp_path / "canopy.db") as store,
        Accounts(store, TokenIssuer(b"k" * 32, 60), hasher) as accounts,
    ):
        with pytest.raises(InvalidCredentials):
            await accounts.login("nobody@example.com", PASSWORD)
    assert len(hasher.verified) == 1 and hasher.verified[0].startswith("$argon2id$")
