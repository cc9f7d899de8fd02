"""Builders for benchmark fixtures: in-memory conversations and a node subprocess."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
import uvloop

from bench.client import Connection, build_request
from bench.node import canopy, free_port, node
from engine.conversation import ConversationState
from persistence.records import Conversation, Message

_AT = datetime(2026, 1, 1, tzinfo=UTC)
TEXT = b'{"type":"text","text":"' + b"x" * 200 + b'"}'


def message(message_id: str, parent_id: str | None, depth: int, seq: int) -> Message:
    role = "root" if parent_id is None else "human"
    return Message(message_id, parent_id, role, TEXT, {}, _AT, "bench", depth, seq)


def chain_state(length: int, fanout_at_root: int = 0) -> ConversationState:
    """A conversation whose messages form one chain of `length` (root included)."""
    meta = Conversation("c", "m0", "bench", None, _AT, "bench", _AT, False, None, None, length, 1)
    nodes = [message("m0", None, 1, 0)]
    for i in range(1, length):
        nodes.append(message(f"m{i}", f"m{i - 1}", i + 1, i))
    for j in range(fanout_at_root):
        nodes.append(message(f"f{j}", "m0", 2, length + j))
    return ConversationState(meta, nodes, [], [])


class Client:
    """A keep-alive connection (bench/client.py) driven synchronously on its own event
    loop, for pytest-benchmark: one request at a time."""

    def __init__(self, port: int) -> None:
        self.loop = uvloop.new_event_loop()
        self.connection = self.loop.run_until_complete(Connection.open(port))

    def fetch(self, method: str, path: str, body: Any = None) -> bytes:
        """The response body, undecoded: what a timed request should cost the client."""
        request = build_request(method, path, body, port=self.connection.port)
        status, payload = self.loop.run_until_complete(self.connection.fetch(request))
        assert status == 200, payload
        return payload

    def call(self, method: str, path: str, body: Any = None) -> Any:
        return msgspec.json.decode(self.fetch(method, path, body))

    def close(self) -> None:
        self.connection.close()
        self.loop.run_until_complete(asyncio.sleep(0))  # the transport's close runs
        self.loop.close()


@pytest.fixture(scope="session")
def node_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A `canopy serve` process (journal durability) for the session."""
    port = free_port()
    data_dir: Path = tmp_path_factory.mktemp("bench-node")
    with node(canopy(port, data_dir), port, data_dir / "node.log"):
        yield port
