"""`--target NAME=URL[,pid=N]...`: a running server measured beside the ones bench.compare starts.

URL is `http://HOST[:PORT]` with no path (the API is seed 000's, under /api/v1). Each
`pid=N` names a process whose CPU counts as the server's (it and its descendants,
summed); without one the target's `cpu_us` is null.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")


@dataclass(frozen=True)
class Server:
    """Where a system answers, and the processes whose CPU is its cost."""

    host: str
    port: int
    pids: tuple[int, ...] = ()


@dataclass(frozen=True)
class External:
    name: str
    url: str
    server: Server


def parse_target(spec: str) -> External:
    """argparse type for --target; a bad spec is a usage error that says why."""
    name, equals, rest = spec.partition("=")
    if not equals or not NAME.fullmatch(name):
        raise argparse.ArgumentTypeError(f"{spec!r}: expected NAME=URL[,pid=N], NAME a word")
    url, *options = rest.split(",")
    parts = urlsplit(url)
    try:
        port = parts.port or 80
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{spec!r}: {exc}") from None
    if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/"):
        raise argparse.ArgumentTypeError(f"{spec!r}: URL must be http://HOST[:PORT], no path")
    pids = []
    for option in options:
        key, _, value = option.partition("=")
        if key != "pid" or not value.isdigit():
            raise argparse.ArgumentTypeError(f"{spec!r}: unknown option {option!r} (pid=N)")
        pids.append(int(value))
    return External(name, url, Server(parts.hostname, port, tuple(pids)))
