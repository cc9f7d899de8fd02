"""The node's own secret, kept in its data dir so what it signed survives a restart."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path


def load_or_create_secret(path: Path) -> bytes:
    """The secret in `path`, made on first use: 48 random bytes (URL-safe text), mode
    0600. Written aside and linked into place, so two starting processes agree on one."""
    with contextlib.suppress(FileNotFoundError):
        return _read(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    aside = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(48) + "\n")
            out.flush()
            os.fsync(out.fileno())
        with contextlib.suppress(FileExistsError):  # another process was first: use theirs
            os.link(aside, path)
    finally:
        aside.unlink()
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return _read(path)


def _read(path: Path) -> bytes:
    secret = path.read_text().strip()
    if len(secret) < 32:
        raise ValueError(f"{path}: the secret is shorter than 32 characters")
    return secret.encode()
