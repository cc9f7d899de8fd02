"""Builders for benchmark fixtures: in-memory conversations and a node subprocess."""

from __future__ import annotations

import http.client
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

from bench.node import free_port
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
    """A keep-alive HTTP/1.1 client on loopback: one request at a time."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port)

    def fetch(self, method: str, path: str, body: Any = None) -> bytes:
        """The response body, undecoded: what a timed request should cost the client."""
        data = None if body is None else msgspec.json.encode(body)
        self.connection.request(
            method, path, body=data, headers={"Content-Type": "application/json"}
        )
        response = self.connection.getresponse()
        payload = response.read()
        assert response.status == 200, payload
        return payload

    def call(self, method: str, path: str, body: Any = None) -> Any:
        return msgspec.json.decode(self.fetch(method, path, body))


@pytest.fixture(scope="session")
def node_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A `canopy serve` process (journal durability) for the session."""
    port = free_port()
    data_dir: Path = tmp_path_factory.mktemp("bench-node")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert process.stdout is not None
    for line in process.stdout:
        if b"Running on" in line:
            break
    else:
        raise RuntimeError("node did not start")
    # Keep reading its output so the node never blocks on a full pipe.
    threading.Thread(target=process.stdout.read, daemon=True).start()
    yield port
    process.terminate()
    process.wait(timeout=30)
