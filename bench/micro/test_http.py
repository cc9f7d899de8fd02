"""HTTP latency at one client against a real node process (journal durability).

Timed requests return the raw body; it is decoded once, outside the timing, to check it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from bench.micro.conftest import Client


@pytest.fixture(scope="module")
def conversation(node_port: int) -> Iterator[tuple[Client, str, str]]:
    """A conversation with a 100-message chain: (client, conversation id, deepest id)."""
    client = Client(node_port)
    cid = client.call("POST", "/api/v1/conversations", {"title": "bench", "created_by": "bench"})[
        "conversation_id"
    ]
    parent = client.call("GET", f"/api/v1/conversations/{cid}/tree")["messages"][0]["message_id"]
    for i in range(99):
        body = {
            "parent_message_id": parent,
            "role": "human",
            "content": {"type": "text", "text": f"m{i}"},
            "created_by": "b",
        }
        parent = client.call("POST", f"/api/v1/conversations/{cid}/messages", body)["message_id"]
    yield client, cid, parent
    client.close()


def test_http_get_message(benchmark: Any, conversation: tuple[Client, str, str]) -> None:
    client, cid, leaf = conversation
    body = benchmark(client.fetch, "GET", f"/api/v1/conversations/{cid}/messages/{leaf}")
    assert msgspec.json.decode(body)["depth"] == 100


def test_http_lineage_100(benchmark: Any, conversation: tuple[Client, str, str]) -> None:
    client, cid, leaf = conversation
    path = f"/api/v1/conversations/{cid}/messages/{leaf}/lineage"
    assert len(msgspec.json.decode(benchmark(client.fetch, "GET", path))) == 100


def test_http_append(benchmark: Any, conversation: tuple[Client, str, str]) -> None:
    client, cid, leaf = conversation
    body = {
        "parent_message_id": leaf,
        "role": "assistant",
        "content": {"type": "text", "text": "reply"},
        "created_by": "b",
    }
    path = f"/api/v1/conversations/{cid}/messages"
    assert msgspec.json.decode(benchmark(client.fetch, "POST", path, body))["depth"] == 101
