"""Built-in accounts (`--accounts`, seed 004): register, log in, and the tokens login issues.

Passwords are hashed with argon2id (argon2-cffi's defaults, RFC 9106's second
profile: 64 MiB, 3 passes, about 50 ms) on a small thread pool of its own, so the event
loop never waits for a hash and at most `HASH_THREADS` hashes hold their memory at
once. A login for an unknown email still verifies a password, against a dummy hash, so
the time taken does not tell whether the email has an account; both failures are the
same error. Tokens are HS256 JWTs signed by the node's secret; `--auth jwt` accepts them.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from engine.errors import Conflict, InvalidInput, Unauthorized, Unavailable
from gateway.config import Settings
from gateway.jwt_auth import node_secret
from persistence.accounts import Account
from persistence.store import Store, StoreError

T = TypeVar("T")

HASH_THREADS = 2
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s.]+")


class InvalidCredentials(Unauthorized):
    def __init__(self) -> None:
        super().__init__("the email or the password is not right", "invalid_credentials")


class EmailTaken(Conflict):
    code = "email_taken"


def normalise_email(raw: str) -> str:
    """Stripped and lower-case; 422 unless it looks like `name@domain.tld`."""
    email = raw.strip().lower()
    if len(email) > 254 or not _EMAIL.fullmatch(email):
        raise InvalidInput(f"email is not a valid address: {raw[:100]!r}")
    return email


@dataclass(frozen=True)
class TokenIssuer:
    """Signs the access tokens login and registration answer with."""

    secret: bytes
    ttl_seconds: int
    issuer: str | None = None
    audience: str | None = None

    def issue(self, user_id: str) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {"sub": user_id, "iat": now, "exp": now + self.ttl_seconds}
        if self.issuer:
            claims["iss"] = self.issuer
        if self.audience:
            claims["aud"] = self.audience
        return jwt.encode(claims, self.secret, algorithm="HS256")


class Accounts:
    """The accounts service over the Store; an async context manager (its hash threads)."""

    def __init__(self, store: Store, tokens: TokenIssuer, hasher: PasswordHasher | None = None):
        self._store = store
        self.tokens = tokens
        self._hasher = hasher or PasswordHasher()  # argon2id
        self._executor = ThreadPoolExecutor(HASH_THREADS, thread_name_prefix="argon2")
        self._dummy_hash = ""

    @classmethod
    def from_settings(cls, store: Store, settings: Settings) -> Accounts:
        secret = node_secret(settings)
        assert secret is not None  # --accounts always has one (the data dir's, at worst)
        issuer = TokenIssuer(
            secret, settings.jwt_ttl_seconds, settings.jwt_issuer or None,
            settings.jwt_audience or None,
        )  # fmt: skip
        return cls(store, issuer)

    async def __aenter__(self) -> Accounts:
        self._dummy_hash = await self._in_thread(self._hasher.hash, secrets.token_urlsafe(16))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._executor.shutdown(wait=True)

    async def register(self, email: str, password: str, name: str | None) -> Account:
        email = normalise_email(email)
        account = Account(
            user_id=str(uuid.uuid4()),
            email=email,
            password_hash=await self._in_thread(self._hasher.hash, password),
            created_at=datetime.now(UTC),
            name=name,
        )
        if not await _stored(self._store.create_account(account)):
            raise EmailTaken(f"an account with email {email} exists already")
        return account

    async def login(self, email: str, password: str) -> Account:
        """The account if the password is its own; InvalidCredentials otherwise, the same
        whether or not the email has an account."""
        account = await _stored(self._store.account_by_email(email.strip().lower()))
        stored_hash = account.password_hash if account is not None else self._dummy_hash
        if not await self._in_thread(self._matches, stored_hash, password) or account is None:
            raise InvalidCredentials()
        return account

    async def account(self, user_id: str) -> Account | None:
        return await _stored(self._store.account(user_id))

    def _matches(self, stored_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(stored_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)


async def _stored(query: Awaitable[T]) -> T:
    try:
        return await query
    except StoreError as exc:
        raise Unavailable(f"store unavailable: {exc}") from None
