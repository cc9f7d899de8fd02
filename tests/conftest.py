"""Shared fixtures: a real Canopy node on loopback and an HTTP client for it."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.app import create_app
from gateway.config import Settings
from gateway.connections import EdgeRunner, EdgeSite, default_max_connections
from tests.backends import keyspace
from tests.processes import NodeProcess
from tests.services import CASSANDRA_NODES, REDIS_URL, require


class Node:
    """A running node: its settings, base URL and a JSON client helper."""

    def __init__(self, settings: Settings, runner: web.AppRunner, session: aiohttp.ClientSession):
        self.settings = settings
        self.runner = runner
        self.session = session
        self.base = f"http://{settings.host}:{settings.port}"
        self.closed = False

    @property
    def app(self) -> web.Application:
        return self.runner.app

    async def request(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        """(status, decoded JSON body) of one request; `path` is relative to the node."""
        async with self.session.request(method, self.base + path, **kwargs) as response:
            body = await response.read()
            assert response.content_type == "application/json", body
            return response.status, json.loads(body)

    async def close(self) -> None:
        """Graceful shutdown: stop accepting, finish requests, flush, close storage."""
        if not self.closed:
            self.closed = True
            await self.runner.cleanup()


NodeFactory = Callable[..., Awaitable[Node]]


BACKENDS: dict[str, dict[str, Any]] = {
    "embedded": {},
    # The store-backed comparison mode serves the same API from targeted store queries.
    "embedded-cache-off": {"cache": "off"},
    "cassandra+redis": {
        "store": "scylla",
        "journal": "redis",
        "scylla_nodes": CASSANDRA_NODES,  # on the keyspace of the test (`emptied`)
        "redis_url": REDIS_URL,
        # Its write-behind in this process (the flusher's own tests reach into it); the
        # default, a flusher process, is FLUSHER_PROCESS below.
        "flusher_process": "off",
    },
}


# Cassandra + Redis with the write-behind in its own process (`--flusher-process`).
FLUSHER_PROCESS: dict[str, Any] = {**BACKENDS["cassandra+redis"], "flusher_process": "on"}


def empty_servers() -> None:
    """Require Cassandra and Redis, and empty them: a test on them starts from nothing."""
    from tests.backends import wipe_cassandra, wipe_redis

    require("cassandra")
    require("redis")
    wipe_cassandra()
    wipe_redis()


def emptied(backend: dict[str, Any]) -> dict[str, Any]:
    """A server backend's settings on emptied servers, with this test's keyspace."""
    empty_servers()
    return {**backend, "scylla_keyspace": keyspace()}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Settings of one storage configuration; server backends start each test empty."""
    if request.param == "cassandra+redis":
        return emptied(BACKENDS[request.param])
    return BACKENDS[request.param]


@pytest.fixture
async def start_node(
    tmp_path: Path, unused_tcp_port_factory: Callable[[], int], backend: dict[str, Any]
) -> AsyncIterator[NodeFactory]:
    """Start nodes in this process on 127.0.0.1; each is stopped gracefully at teardown.

    Every test using it runs once per backend. Keyword arguments override Settings
    fields (data_dir defaults to a per-test dir).
    """
    started: list[Node] = []
    session = aiohttp.ClientSession()

    async def start(**overrides: Any) -> Node:
        settings = dataclasses.replace(
            Settings(data_dir=tmp_path / "data", port=unused_tcp_port_factory(), **backend),
            **overrides,
        )
        runner = EdgeRunner(
            create_app(settings),
            max_connections=settings.max_connections or default_max_connections(),
            shutdown_timeout=settings.shutdown_timeout,
            access_log=None,
        )
        await runner.setup()
        await EdgeSite(runner, settings.host, settings.port).start()
        node = Node(settings, runner, session)
        started.append(node)
        return node

    yield start
    for node in reversed(started):
        await node.close()
    await session.close()


@pytest.fixture(scope="session", autouse=True)
def _drop_test_keyspace() -> Iterator[None]:
    """The Cassandra keyspace of this run (made on first use) goes away at the end."""
    yield
    from tests.backends import drop_keyspace

    drop_keyspace()


@pytest.fixture
async def node(start_node: NodeFactory) -> Node:
    return await start_node()


@pytest.fixture
async def node_process(
    tmp_path: Path, unused_tcp_port_factory: Callable[[], int]
) -> AsyncIterator[Callable[..., NodeProcess]]:
    made: list[NodeProcess] = []

    def make(*extra: str, preexec_fn: Callable[[], None] | None = None) -> NodeProcess:
        made.append(
            NodeProcess(tmp_path / "data", unused_tcp_port_factory(), *extra, preexec_fn=preexec_fn)
        )
        return made[-1]

    yield make
    for node in made:
        if node.process is not None and node.process.returncode is None:
            node.process.kill()
            await node.process.wait()
