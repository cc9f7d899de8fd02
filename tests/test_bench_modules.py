"""Every benchmark module imports: a bench broken by a refactor of another fails here,
not on the day someone needs its figure."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

import pytest

import bench
from bench.node import free_port, node

# locustfile is loaded by locust's own process: importing it here would let gevent
# monkey-patch this one.
MODULES = sorted(
    m.name for m in pkgutil.iter_modules(bench.__path__) if not m.ispkg and m.name != "locustfile"
)


@pytest.mark.parametrize("name", MODULES)
def test_the_bench_module_imports(name: str) -> None:
    importlib.import_module(f"bench.{name}")


def test_the_usual_benches_are_found() -> None:
    assert {"append_load", "auth", "compare", "sidebar"} <= set(MODULES)


# Issue 13 1(e): every bench starts its nodes with bench/node.py and speaks HTTP with
# bench/client.py; a second launcher or client measures something else than the others.
OWN_LAUNCHER_OR_CLIENT = (
    "http.client",
    "ClientSession",
    "urllib.request",
    "subprocess.Popen",
    '"gateway.cli", "serve", "--port"',
    'bind(("127.0.0.1", 0))',
)


def test_bench_has_one_launcher_and_one_http_client() -> None:
    root = Path(bench.__path__[0])
    found = [
        f"{path.relative_to(root)}: {pattern}"
        for path in sorted(root.rglob("*.py"))
        if path.name not in ("node.py", "client.py")
        for pattern in OWN_LAUNCHER_OR_CLIENT
        if pattern in path.read_text()
    ]
    assert found == []


def test_a_bench_node_gets_the_environment_overrides(tmp_path: Path) -> None:
    announce = "import os; print('Running on', os.environ['CANOPY_BENCH_PROBE'], flush=True)"
    command = [sys.executable, "-c", announce]
    with node(command, free_port(), tmp_path / "node.log", env={"CANOPY_BENCH_PROBE": "42"}) as ran:
        assert "Running on 42" in ran.tail()
