"""The edge's checks before a handler runs: Host, Content-Type, declared length, the body
deadline, the node-wide budget for bodies in flight, and clients that hang up mid-body."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
from typing import TYPE_CHECKING

import pytest
from aiohttp import web
from gateway_helpers import API, assert_error, create_conversation, expect_error, unchanged
from raw_http import exchange, head

from gateway.guards import host_allowed
from gateway.keys import EDGE
from tests.waiting import until

if TYPE_CHECKING:
    from conftest import Node, NodeFactory

CREATE = {"title": "t", "created_by": "alice"}


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("127.0.0.1:8080", True),
        ("localhost:8080", True),
        ("LOCALHOST", True),
        ("[::1]:8080", True),
        ("10.1.2.3", True),
        ("evil.example:8080", False),
        ("localhost.evil.example", False),
        ("127.0.0.1.evil.example", False),
        ("canopy.internal:8080", False),
    ],
)
def test_host_allowed_by_default(host: str, allowed: bool) -> None:
    assert host_allowed(host, frozenset()) is allowed


def test_host_allowed_by_list() -> None:
    assert host_allowed("Canopy.Internal:8080", frozenset({"canopy.internal"}))
    assert host_allowed("anything.example", frozenset({"*"}))
    assert not host_allowed("other.internal", frozenset({"canopy.internal"}))


async def test_a_rebound_host_is_refused(node: Node) -> None:
    """DNS rebinding: a page under the attacker's name reaches the node; it answers 421."""
    headers = {"Host": f"evil.example:{node.settings.port}"}
    async with unchanged(node):
        for method, path, body in [
            ("GET", "/health", None),
            ("POST", f"{API}/conversations", CREATE),
            ("GET", f"{API}/users/alice/conversations", None),
        ]:
            await expect_error(
                node, method, path, 421, "misdirected_request", json=body, headers=headers
            )
    status, _ = await node.request("GET", "/health", headers={"Host": "localhost"})
    assert status == 200


async def test_allowed_hosts_setting(start_node: NodeFactory) -> None:
    node = await start_node(allowed_hosts="canopy.internal, other.internal")
    for host in ("canopy.internal", "other.internal:1", "127.0.0.1"):
        status, _ = await node.request("GET", "/health", headers={"Host": host})
        assert status == 200, host
    await expect_error(
        node, "GET", "/health", 421, "misdirected_request", headers={"Host": "evil.example"}
    )


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "text/plain; charset=utf-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/octet-stream",
        "application/jsonp",
        None,
    ],
)
async def test_json_routes_refuse_other_bodies(node: Node, content_type: str | None) -> None:
    """A cross-origin page may POST text/plain without a preflight; JSON routes refuse it."""
    headers = {} if content_type is None else {"Content-Type": content_type}
    data = json.dumps(CREATE).encode()
    async with unchanged(node):
        if content_type is None:  # aiohttp's client would add octet-stream
            answer = await exchange(
                node.settings.port,
                head(
                    "POST",
                    f"{API}/conversations",
                    node.settings.port,
                    f"Content-Length: {len(data)}",
                )
                + data,
            )
            assert_error(answer.status, answer.json(), 415, "unsupported_media_type")
        else:
            await expect_error(
                node,
                "POST",
                f"{API}/conversations",
                415,
                "unsupported_media_type",
                data=data,
                headers=headers,
            )


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON"]
)
async def test_json_bodies_are_accepted(node: Node, content_type: str) -> None:
    data = json.dumps(CREATE).encode()
    headers = {"Content-Type": content_type}
    status, body = await node.request("POST", f"{API}/conversations", data=data, headers=headers)
    assert status == 200, body


async def test_declared_length_over_the_limit_is_refused_before_the_body(node: Node) -> None:
    """2 MB declared, 1 byte sent: 413 at once, without waiting for the rest."""
    port = node.settings.port
    request = head(
        "POST", f"{API}/conversations", port, "Content-Type: application/json",
        f"Content-Length: {2 * 1024 * 1024}",
    ) + b"{"  # fmt: skip
    async with unchanged(node):
        answer = await exchange(port, request)
        assert_error(answer.status, answer.json(), 413, "payload_too_large")


async def test_a_stalled_body_times_out(start_node: NodeFactory) -> None:
    node = await start_node(body_timeout=0.2)
    port = node.settings.port
    request = head(
        "POST", f"{API}/conversations", port, "Content-Type: application/json",
        "Content-Length: 100",
    ) + b'{"title": '  # fmt: skip
    async with unchanged(node):
        answer = await exchange(port, request)
        assert_error(answer.status, answer.json(), 408, "request_timeout")
    assert node.app[EDGE].budget.held == 0
    await create_conversation(node)  # the node goes on


async def test_bodies_in_flight_have_a_node_wide_budget(start_node: NodeFactory) -> None:
    """Stalled uploads hold memory; past the budget, new ones get 503 (Retry-After)."""
    node = await start_node(max_body_buffer_bytes=1000)
    port = node.settings.port
    budget = node.app[EDGE].budget
    stalled = head(
        "POST", f"{API}/conversations", port, "Content-Type: application/json",
        "Content-Length: 900",
    ) + b'{"title": '  # fmt: skip
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(stalled)
        await until(lambda: budget.held == 900, ticks=100_000)
        body = json.dumps(CREATE).encode() + b" " * 200
        async with unchanged(node):
            answer = await exchange(
                port,
                head(
                    "POST", f"{API}/conversations", port, "Content-Type: application/json",
                    f"Content-Length: {len(body)}",
                ) + body,
            )  # fmt: skip
        assert_error(answer.status, answer.json(), 503, "unavailable")
        assert answer.headers["retry-after"] == "1"
        await create_conversation(node)  # a small body still fits
    finally:
        writer.close()
    await until(lambda: budget.held == 0, ticks=100_000)


def _live_requests() -> list[web.BaseRequest]:
    return [o for o in gc.get_objects() if isinstance(o, web.BaseRequest)]


async def test_an_aborted_upload_is_not_an_error_and_is_freed_without_gc(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that hangs up mid-body: no 500, no ERROR line, and no reference cycle
    keeps the request (and the body read so far) alive until a full GC."""
    port = node.settings.port
    budget = node.app[EDGE].budget
    gc.collect()
    gc.disable()
    try:
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                head(
                    "POST", f"{API}/conversations", port, "Content-Type: application/json",
                    f"Content-Length: {1024 * 1024}",
                ) + b'{"title": "' + b"x" * 512 * 1024
            )  # fmt: skip
            await writer.drain()
            await until(lambda: budget.held > 0, ticks=100_000)
            writer.close()
            await until(lambda: budget.held == 0, ticks=100_000)
        server = node.runner.server
        assert server is not None
        await until(lambda: not server.connections, ticks=100_000)
        assert _live_requests() == []
    finally:
        gc.enable()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert errors == []
    await create_conversation(node)
