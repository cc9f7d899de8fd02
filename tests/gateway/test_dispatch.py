"""The dispatcher: conversation routes through the trie's chain, everything else (and
every refusal of routing) through aiohttp's own handling, with the same answers."""

from __future__ import annotations

import aiohttp
import pytest

from gateway.dispatch import Dispatcher
from tests.conftest import Node

API = "/api/v1/conversations"


def dispatcher(node: Node) -> Dispatcher:
    server = node.runner.server
    assert server is not None
    handler = server.request_handler
    assert isinstance(handler, Dispatcher)
    return handler


@pytest.fixture
def backend() -> dict[str, object]:
    return {}  # embedded: routing does not depend on the store


async def test_conversation_routes_are_served_directly(node: Node) -> None:
    before = dispatcher(node).stats()
    status, created = await node.request("POST", API, json={"title": "t", "created_by": "u"})
    assert status == 200
    cid = created["conversation_id"]
    status, tree = await node.request("GET", f"{API}/{cid}/tree")
    assert status == 200
    root = tree["messages"][0]["message_id"]
    body = {
        "parent_message_id": root,
        "role": "human",
        "content": {"type": "text", "text": "hi"},
        "created_by": "u",
    }
    status, message = await node.request("POST", f"{API}/{cid}/messages", json=body)
    assert status == 200
    status, read = await node.request("GET", f"{API}/{cid}/messages/{message['message_id']}")
    assert status == 200 and read["message_id"] == message["message_id"]
    after = dispatcher(node).stats()
    assert after["direct"] - before["direct"] == 4
    assert after["general"] == before["general"]


async def test_routing_refusals_and_other_routes_keep_aiohttps_answers(node: Node) -> None:
    before = dispatcher(node).stats()
    status, body = await node.request("PUT", f"{API}/some-id/tree")
    assert status == 405 and body["error"]["code"] == "method_not_allowed"
    status, body = await node.request("GET", f"{API}/some-id/nothing-here")
    assert status == 404 and body["error"]["code"] == "not_found"
    status, _ = await node.request("GET", "/health")
    assert status == 200
    after = dispatcher(node).stats()
    assert after["general"] - before["general"] == 3
    assert after["direct"] == before["direct"]


async def test_expect_continue_is_answered_by_aiohttp(node: Node) -> None:
    before = dispatcher(node).stats()
    url = f"http://{node.settings.host}:{node.settings.port}{API}"
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json={"title": "t", "created_by": "u"}, expect100=True) as response,
    ):
        assert response.status == 200
        assert (await response.json())["title"] == "t"
    assert dispatcher(node).stats()["general"] - before["general"] == 1
