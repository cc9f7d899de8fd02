"""The comparison harness's client against a real ceiling server: counting and percentiles.

No timing assertions: these check that the numbers `bench.compare` prints are counted
right, not what they are.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.client import Connection, Result, build_request, call, run
from bench.compare import Measurement, targets
from bench.cpu import cpu_seconds, settle, tree_cpu_seconds
from bench.node import free_port, node
from bench.target import Server, parse_target

PATH = "/api/v1/conversations/00000000-0000-4000-8000-000000000000/messages/x"


def bare_server(module: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """bench.ceiling or bench.floor on a free port, for the module's tests."""
    port = free_port()
    command = [sys.executable, "-m", module, "--port", str(port)]
    log = tmp_path_factory.mktemp(module) / "server.log"
    with node(command, port, log, cpus=None):
        yield port


@pytest.fixture(scope="module")
def ceiling(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    yield from bare_server("bench.ceiling", tmp_path_factory)


async def test_sequential_run_counts_every_request(ceiling: int) -> None:
    result = await run(ceiling, [build_request("GET", PATH, port=ceiling)], count=50, seconds=30)
    assert (result.count, result.errors, len(result.latencies_ns)) == (50, 0, 50)
    assert 0 < result.percentile_ms(50) <= result.percentile_ms(99)
    assert result.elapsed > 0 and result.rps > 0


async def test_concurrent_run_stops_at_the_count(ceiling: int) -> None:
    batch = [build_request("GET", PATH, port=ceiling)]
    result = await run(ceiling, batch, connections=32, count=1000, seconds=30)
    assert (result.count, result.errors) == (1000, 0)


async def test_concurrent_run_stops_at_the_deadline(ceiling: int) -> None:
    batch = [build_request("GET", PATH, port=ceiling)]
    began = time.perf_counter()
    result = await run(ceiling, batch, connections=4, count=10**9, seconds=0.3)
    assert 0 < result.count < 10**9 and result.errors == 0
    assert time.perf_counter() - began < 10


async def test_non_200_answers_are_counted_as_errors(ceiling: int) -> None:
    good = build_request("GET", PATH, port=ceiling)
    bad = build_request("GET", "/nowhere", port=ceiling)
    result = await run(ceiling, [good, bad], connections=2, count=20, seconds=30)
    assert (result.count, result.errors, len(result.latencies_ns)) == (20, 10, 10)
    assert result.first_error.startswith("404")


async def test_post_bodies_and_decoded_answers(ceiling: int) -> None:
    connection = await Connection.open(ceiling)
    try:
        answer = await call(connection, "GET", PATH)
        assert answer["depth"] == 2 and len(answer["content"]["text"]) == 200
        status, _ = await connection.fetch(build_request("POST", PATH, {"a": 1}, port=ceiling))
        assert status == 405  # the route is GET only; the connection stays usable
        assert (await call(connection, "GET", PATH))["depth"] == 2
    finally:
        connection.close()


@pytest.fixture(scope="module")
def floor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    yield from bare_server("bench.floor", tmp_path_factory)


async def test_the_floor_answers_as_the_ceiling_does(ceiling: int, floor: int) -> None:
    """The bare Protocol and the bare aiohttp app give the same bodies, so their cpu_us
    compare like for like."""
    messages = PATH.rsplit("/", 1)[0]
    answers = []
    for port in (ceiling, floor):
        connection = await Connection.open(port)
        try:
            got = await call(connection, "GET", PATH)
            appended = await call(connection, "POST", messages, {"role": "human"})
            answers.append((got, appended))
        finally:
            connection.close()
    assert answers[0] == answers[1]
    got, appended = answers[1]
    assert (got["depth"], appended["depth"]) == (2, 3)
    assert appended["parent_message_id"] == got["message_id"]


async def test_the_floor_serves_pipelined_requests_split_anyhow(floor: int) -> None:
    messages = PATH.rsplit("/", 1)[0]
    requests = [
        build_request("POST", messages, {"text": "x" * 3000}, port=floor),
        build_request("GET", "/nowhere", port=floor),
        build_request("GET", PATH, port=floor),
    ]
    reader, writer = await asyncio.open_connection("127.0.0.1", floor)
    try:
        data = b"".join(requests)
        for at in range(0, len(data), 7):  # heads and bodies cut mid-way
            writer.write(data[at : at + 7])
            await writer.drain()
        statuses = []
        for _ in requests:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            body = await reader.readexactly(length)
            statuses.append((head.split(b" ")[1], json.loads(body).get("depth")))
        assert statuses == [(b"200", 3), (b"404", None), (b"200", 2)]
    finally:
        writer.close()


async def test_a_dead_server_is_an_error_not_a_hang(tmp_path: Path) -> None:
    port = free_port()
    command = [sys.executable, "-m", "bench.ceiling", "--port", str(port)]
    with node(command, port, tmp_path / "ceiling.log", cpus=None) as started:
        connection = await Connection.open(port)
        started.process.kill()
        started.process.wait()
        status, reason = await connection.fetch(build_request("GET", PATH, port=port))
        assert status == 0 and reason


def test_percentiles_are_nearest_rank() -> None:
    result = Result(latencies_ns=[i * 1_000_000 for i in range(100, 0, -1)])
    assert result.percentile_ms(50) == 50.0
    assert result.percentile_ms(99) == 99.0
    assert result.percentile_ms(100) == 100.0
    assert Result().count == 0


def test_a_server_that_never_starts_is_reported(tmp_path: Path) -> None:
    command = [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"]
    with pytest.raises(RuntimeError, match="boom"), node(command, 1, tmp_path / "x.log", None):
        pass


def feed(connection: Connection, data: bytes, chunk: int) -> None:
    """Deliver `data` as the event loop would, `chunk` bytes per read."""
    for at in range(0, len(data), chunk):
        piece = data[at : at + chunk]
        connection.get_buffer(len(piece))[: len(piece)] = piece
        connection.buffer_updated(len(piece))


def response(status: int, body: bytes) -> bytes:
    head = f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
    return head.encode() + b"\r\nServer: t\r\n\r\n" + body


@pytest.mark.parametrize("chunk", [1, 7, 64, 100_000])
@pytest.mark.parametrize("keep", [False, True])
def test_responses_split_or_joined_anyhow_are_parsed(chunk: int, keep: bool) -> None:
    answers: list[tuple[int, bytes]] = []
    connection = Connection()
    connection.keep_bodies = keep
    connection.on_response = lambda _, status, body: answers.append((status, body))
    big = b"x" * 70_000
    stream = response(200, b"{}") + response(200, b"") + response(200, big) + response(404, b"no")
    feed(connection, stream, chunk)
    expected = [(200, b"{}"), (200, b""), (200, big)] if keep else [(200, b"")] * 3
    assert answers == [*expected, (404, b"no")]  # error bodies are always kept


def test_bodies_larger_than_the_buffer_are_counted_off() -> None:
    answers: list[tuple[int, bytes]] = []
    connection = Connection()
    connection.on_response = lambda _, status, body: answers.append((status, body))
    feed(connection, response(200, b"y" * (3 * Connection.BUFFER + 5)) * 2, Connection.BUFFER)
    assert answers == [(200, b""), (200, b"")]


def test_parse_target_reads_name_url_and_pids() -> None:
    target = parse_target("rust=http://10.0.0.5:8080,pid=12,pid=13")
    assert (target.name, target.url) == ("rust", "http://10.0.0.5:8080")
    assert target.server == Server("10.0.0.5", 8080, (12, 13))
    assert parse_target("x=http://h").server == Server("h", 80, ())


@pytest.mark.parametrize(
    "spec",
    ["http://h:1", "=http://h:1", "a=https://h:1", "a=http://h:1/api", "a=http://h:1,pid=x",
     "a=http://h:1,cpu=3", "a=http://h:notaport", "a=h:1"],
)  # fmt: skip
def test_a_bad_target_is_a_usage_error(spec: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_target(spec)


# The child burns 0.3 s of CPU, says so, then waits on stdin; the parent waits on it.
SPIN = """import sys, time
end = time.process_time() + 0.3
while time.process_time() < end:
    pass
print("spun", flush=True)
sys.stdin.readline()
"""
PARENT = "import subprocess, sys; subprocess.run([sys.executable, '-c', sys.argv[1]])"


def test_cpu_of_a_process_tree_counts_its_children() -> None:
    """A flusher process started by the node is part of the node's cost."""
    command = [sys.executable, "-c", PARENT, SPIN]
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE) as parent:
        assert parent.stdout is not None and parent.stdin is not None
        try:
            assert parent.stdout.readline() == b"spun\n"
            assert cpu_seconds(parent.pid) < 0.25 <= tree_cpu_seconds([parent.pid])
        finally:
            parent.stdin.close()
        assert parent.wait(timeout=60) == 0
    assert tree_cpu_seconds([parent.pid]) == 0.0  # a process that is gone counts nothing


def test_compare_measures_a_target_beside_canopy(tmp_path: Path) -> None:
    """A second Canopy node stands in for the service being replaced: bench.compare seeds
    and shape-checks it, alternates it with its own canopy, and reports cpu_us for every
    system whose pids it knows."""
    port = free_port()
    serve = [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port),
             "--data-dir", str(tmp_path / "other")]  # fmt: skip
    out = tmp_path / "compare.json"
    with node(serve, port, tmp_path / "other.log", cpus=None) as other:
        url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "bench.compare", "--quick", "--no-pin",
                   "--stores", "sqlite", "--systems", "canopy,ceiling,floor",
                   "--ops", "get_message,append",
                   "--target", f"other={url},pid={other.process.pid}", "--target", f"blind={url}",
                   "--json", str(out)]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {(r["op"], r["system"]): r for r in json.loads(out.read_text())["results"]}
    assert set(rows) == {(op, s) for op in ("get_message", "append")
                         for s in ("canopy", "ceiling", "floor", "other", "blind")}  # fmt: skip
    for (_, system), row in rows.items():
        assert row["rps"] > 0 and row["p50_ms"] > 0
        if system == "blind":
            assert row["cpu_us"] is None  # no pid given: unknown, not zero
        else:
            assert isinstance(row["cpu_us"], float) and row["cpu_us"] > 0
    assert "seeded" in done.stderr and "other" in done.stdout and "n/a" in done.stdout


@pytest.mark.parametrize(
    ("target", "says"),
    [("canopy=http://127.0.0.1:1", "the name is taken"),
     ("x=http://127.0.0.1:1,pid=999999999", "no such process")],
)  # fmt: skip
def test_compare_refuses_a_target_it_cannot_measure(target: str, says: str) -> None:
    command = [sys.executable, "-m", "bench.compare", "--target", target]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and says in done.stderr


def measured(op: str, system: str, *, p50: float = 1.0, p99: float = 2.0, rps: float = 100.0,
             cpu_us: float | None = 100.0, store: str = "cassandra") -> Measurement:  # fmt: skip
    return Measurement(op, system, store, p50, p99, rps, 10, 100, 0.5, 0.5, 0.1, cpu_us)


def test_targets_hold_the_write_paths_figures_and_each_external_targets_ratio() -> None:
    results = [
        measured("get_message", "canopy", rps=850.0),
        measured("get_message", "ceiling", rps=1000.0),
        measured("append", "canopy", p50=0.25, rps=7000.0, cpu_us=140.0),
        measured("append", "cache_off", p50=5.0),
        measured("append", "rust", rps=3000.0),
        measured("append", "other", rps=4000.0),
        measured("fork_1000", "canopy", p99=9.0),
    ]
    found = {t["target"]: t for t in targets(results, "cassandra")}
    assert found["get_message rps canopy/ceiling"]["met"]  # 0.85 >= 0.8
    assert (
        found["append rps canopy/rust"]["met"] and found["append rps canopy/rust"]["value"] == 2.333
    )
    assert not found["append rps canopy/other"]["met"]  # 1.75 < 2
    assert not found["append cpu_us canopy"]["met"]  # 140 > 130: an upper bound
    assert found["append cpu_us canopy"]["at_most"]
    assert found["append p50 ms canopy"]["met"] and found["fork_1000 p99 ms canopy"]["met"]
    assert "append rps canopy/cache_off" not in found  # a system of its own, not a target
    sqlite = {
        t["target"]: t for t in targets([measured("append", "canopy", store="sqlite")], "sqlite")
    }
    assert sqlite["append cpu_us canopy"]["goal"] == 80.0 and "append p50 ms canopy" not in sqlite


async def test_settling_ends_at_the_first_quiet_reading() -> None:
    """Busy readings (two cores, then one) are waited out; the first quiet one ends it."""
    clock = [0.0]
    per_window = iter([0.2, 0.1, 0.01, 0.0])  # CPU seconds each 0.1 s reading sees

    async def sleep(seconds: float) -> None:
        clock[0] += next(per_window)

    assert await settle(1.0, busy=lambda: clock[0], sleep=sleep) == 3


async def test_settling_is_bounded_when_the_machine_never_falls_quiet() -> None:
    clock = [0.0]

    async def sleep(seconds: float) -> None:
        clock[0] += seconds * 2  # two cores busy, for ever

    assert await settle(0.5, busy=lambda: clock[0], sleep=sleep) == 5
