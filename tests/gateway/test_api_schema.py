"""Schemathesis over /openapi.json against a real node: no 5xx, every response as documented.

The node runs as a `canopy serve --auth none` process on loopback (schemathesis calls it
synchronously). Each case's path parameters are pointed at a conversation made for it
(with a message and a branch), so cases reach the routes' success paths, not only 404s.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.app import create_app
from gateway.config import Settings
from gateway.openapi import document

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def node_url(
    tmp_path_factory: pytest.TempPathFactory, unused_tcp_port_factory: Callable[[], int]
) -> Iterator[str]:
    data_dir: Path = tmp_path_factory.mktemp("schemathesis")
    port = str(unused_tcp_port_factory())
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--port", port, "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert process.stdout is not None
    output = process.stdout
    # daemon: a failed setup must not leave the run waiting on it
    drain = threading.Thread(target=output.read, daemon=True)  # keeps the pipe from filling
    try:
        seen: list[bytes] = []
        for line in output:  # ends if the node exits
            seen.append(line)
            if b"Running on" in line:
                break
        else:
            raise AssertionError(f"node exited before serving: {b''.join(seen)!r}")
        drain.start()
        base = f"http://127.0.0.1:{port}"
        assert requests.get(base + "/openapi.json", timeout=30).json() == DOCUMENT
        yield base
    finally:
        process.terminate()
        code = process.wait(timeout=60)
        if drain.is_alive():
            drain.join()  # ends at the pipe's end, once the node has exited
        output.close()
    assert code == 0


# The document the node serves, built here the same way so that the cases can be made
# at collection (schemathesis' from_fixture reads a node attribute pytest 9 removed);
# the node_url fixture checks that the node serves exactly this.
DOCUMENT = document(create_app(Settings()), Settings().auth_modes())
schema = schemathesis.openapi.from_dict(DOCUMENT)


def seeded(session: requests.Session, base: str) -> dict[str, str]:
    """A conversation of its own for one case: ids for its path parameters."""

    def post(path: str, body: dict[str, Any]) -> Any:
        response = session.post(base + path, json=body, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()

    conversation = post("/api/v1/conversations", {"title": "t", "created_by": "u"})
    cid = conversation["conversation_id"]
    root = session.get(f"{base}/api/v1/conversations/{cid}/tree", timeout=30).json()
    text = {"type": "text", "text": "hello"}
    parent = root["messages"][0]["message_id"]
    message = post(
        f"/api/v1/conversations/{cid}/messages",
        {"parent_message_id": parent, "role": "user", "content": text, "created_by": "u"},
    )
    branch = post(
        f"/api/v1/conversations/{cid}/branches",
        {"branch_name": "b", "leaf_message_id": message["message_id"], "created_by": "u"},
    )
    post(
        f"/api/v1/conversations/{cid}/share",
        {"shared_with": "v", "permission": "read", "shared_by": "u"},
    )
    return {"conversation_id": cid, "message_id": message["message_id"],
            "branch_id": branch["branch_id"], "user_id": "v"}  # fmt: skip


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


@schema.parametrize()
@settings(
    max_examples=8,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_api_answers_as_documented(case: Any, node_url: str, session: requests.Session) -> None:
    if case.path_parameters:
        ids = seeded(session, node_url)
        for name in case.path_parameters:
            case.path_parameters[name] = ids[name]
    case.call_and_validate(base_url=node_url, session=session, checks=CHECKS)
