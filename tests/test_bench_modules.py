"""Every benchmark module imports: a bench broken by a refactor of another fails here,
not on the day someone needs its figure."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import bench

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
