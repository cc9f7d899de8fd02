"""Built-in accounts (seed 004): the durable row of one user who signs in with a password."""

from __future__ import annotations

from datetime import datetime

import msgspec


class Account(msgspec.Struct, array_like=True, gc=False):
    """One account. `email` is normalised (stripped, lower-case) and unique; `user_id` is
    a UUID, the subject of the account's tokens and the owner of its conversations."""

    user_id: str
    email: str
    password_hash: str  # argon2id, in the PHC string format (parameters included)
    created_at: datetime
    name: str | None = None


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Account).decode


def encode_account(account: Account) -> bytes:
    return _encode(account)


def decode_account(body: bytes) -> Account:
    return _decode(body)
