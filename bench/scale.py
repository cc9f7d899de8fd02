"""Scaling figures: a node's memory per hot message and its latency as the hot set grows.

    python -m bench.scale [--quick] [--json PATH]

For each size N (10^3, 10^4, 10^5, 10^6 hot messages; `--quick` stops at 10^5) a fresh
data dir's SQLite store is seeded directly with N / 1,000 conversations of 1,000
messages: a main chain of depth 100 and 90 side branches of 10 messages hanging off it
(regenerations), 200-char text content. A real node (`canopy serve`, default settings,
journal durability) is started on loopback; its RSS is read from /proc right after
start and again once every conversation was activated by one GET. One keep-alive
client then times lineage at depth 100 and appends, spread across conversations, and
the same lineage is timed in-process (the engine alone, no HTTP) on a copy of the data.
The node's response cache is off: with it, every lineage at 10^3 (one conversation)
would be a hit and none at 10^6, hiding how the tree itself scales.

bytes_per_message is (RSS after activation - RSS at start) / N; beyond text subtracts
the 200 characters of text. The node must not passivate anything during a size: its
shutdown log line is checked.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
from msgspec.structs import replace

from bench.node import free_port
from engine.content import normalize
from engine.conversation import ConversationState, root_content
from persistence.records import Conversation, Message
from persistence.sqlite import SQLiteStore
from persistence.store import Changes

SIZES = (10**3, 10**4, 10**5, 10**6)
PER_CONVERSATION = 1000
CHAIN = 100  # the main chain's depth, root included: lineage is timed at its tip
BRANCH = 10  # messages per side branch
TEXT_CHARS = 200
REQUESTS = 2000  # timed requests per measure (after a short warm-up)
IN_FLIGHT = 8  # concurrent activations

_WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "owls")
_START = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class Row:
    hot_messages: int
    rss_mb: float  # MiB after activation
    bytes_per_message: float
    bytes_per_message_beyond_text: float
    lineage_p50_ms: float
    lineage_p99_ms: float
    append_p50_ms: float
    append_p99_ms: float
    engine_lineage_p50_us: float
    rss_start_mb: float
    seed_s: float
    activate_s: float


@dataclass
class Seeded:
    conversation_id: str
    tip_id: str  # the main chain's last message, at depth CHAIN
    state: ConversationState  # the same data in this process, for the engine timings


def texts(rng: random.Random) -> Iterator[bytes]:
    """Canonical content of distinct 200-char texts, as `engine.content.normalize` gives."""
    corpus = " ".join(rng.choice(_WORDS) for _ in range(2000))
    while True:
        start = rng.randrange(len(corpus) - TEXT_CHARS)
        yield normalize({"type": "text", "text": corpus[start : start + TEXT_CHARS]})


def conversation(index: int, content: Iterator[bytes]) -> tuple[Conversation, list[Message], str]:
    """One 1,000-message conversation: a main chain of CHAIN, side branches of BRANCH."""
    owner = f"user-{index % 997}"
    cid = str(uuid.uuid4())
    at = _START + timedelta(hours=index)
    meta = Conversation(
        cid, str(uuid.uuid4()), f"chat {index}", None, at, owner, at, False, None, None, 0, 1
    )
    root = Message(meta.root_id, None, "root", root_content(meta), {}, at, owner, 1, 0)
    nodes = [root]

    def add(parent: Message) -> Message:
        seq = len(nodes)
        role = "human" if parent.depth % 2 else "assistant"
        node = Message(
            str(uuid.uuid4()),
            parent.message_id,
            role,
            next(content),
            {},
            at + timedelta(seconds=seq),
            owner,
            parent.depth + 1,
            seq,
        )
        nodes.append(node)
        return node

    chain = [root]
    for _ in range(CHAIN - 1):
        chain.append(add(chain[-1]))
    fork_at = 1
    while len(nodes) < PER_CONVERSATION:
        leaf = chain[fork_at]
        for _ in range(min(BRANCH, PER_CONVERSATION - len(nodes))):
            leaf = add(leaf)
        fork_at = fork_at % (CHAIN - 2) + 1
    meta = replace(meta, message_count=len(nodes), updated_at=nodes[-1].created_at)
    return meta, nodes, chain[-1].message_id


async def seed(directory: Path, hot_messages: int) -> list[Seeded]:
    """Write the conversations into the node's store, as a flush would have."""
    rng = random.Random(hot_messages)
    content = texts(rng)
    seeded = []
    async with SQLiteStore(directory / "canopy.db") as store:
        for index in range(max(1, hot_messages // PER_CONVERSATION)):
            meta, nodes, tip = conversation(index, content)
            changes = Changes(
                conversation=meta,
                messages={n.message_id: n for n in nodes},
                version=meta.version,
            )
            await store.write(meta.conversation_id, changes)
            state = ConversationState(meta, nodes, [], [])
            seeded.append(Seeded(meta.conversation_id, tip, state))
    return seeded


class Node:
    """A `canopy serve` subprocess on loopback, with default settings."""

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        command = [sys.executable, "-m", "gateway.cli", "serve"]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--data-dir", str(data_dir)]
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "CANOPY_RESPONSE_CACHE_BYTES": "0"},  # see the module docstring
        )
        self.log: deque[str] = deque(maxlen=200)
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            self.log.append(raw.decode(errors="replace"))
            if b"Running on" in raw:
                break
        else:
            raise RuntimeError("node did not start:\n" + "".join(self.log))
        # Keep reading its output so the node never blocks on a full pipe.
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            self.log.append(raw.decode(errors="replace"))

    def rss(self) -> int:
        """Resident set size in bytes (VmRSS)."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        kib = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        assert kib is not None
        return int(kib.group(1)) * 1024

    def stop(self) -> tuple[int, int]:
        """Graceful shutdown; (hot actors, passivations) from the registry's last log line."""
        if self.process.poll() is None:
            self.process.terminate()
        self.process.wait(timeout=60)
        self._reader.join(timeout=5)
        for line in reversed(self.log):
            found = re.search(r"(\d+) hot actors, \d+ activations, (\d+) passivations", line)
            if found:
                return int(found.group(1)), int(found.group(2))
        raise RuntimeError("no registry shutdown line:\n" + "".join(self.log))


class Client:
    """One keep-alive HTTP/1.1 connection; one request at a time."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port)

    def call(self, method: str, path: str, body: bytes | None = None) -> bytes:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        self.connection.request(method, path, body=body, headers=headers)
        response = self.connection.getresponse()
        payload = response.read()
        if response.status != 200:
            raise RuntimeError(f"{method} {path}: {response.status} {payload[:200]!r}")
        return payload


def activate(port: int, conversations: list[Seeded]) -> None:
    """One GET per conversation, IN_FLIGHT at a time."""
    local = threading.local()

    def get(item: Seeded) -> None:
        if not hasattr(local, "client"):
            local.client = Client(port)
        local.client.call("GET", f"/api/v1/conversations/{item.conversation_id}")

    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        list(pool.map(get, conversations))


def percentiles(samples: Sequence[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, len(ordered) * 99 // 100)]


def spread(conversations: list[Seeded], count: int, seed: int) -> list[Seeded]:
    """`count` conversations in random order, each as evenly often as possible."""
    rng = random.Random(seed)
    picked: list[Seeded] = []
    while len(picked) < count:
        batch = list(conversations)
        rng.shuffle(batch)
        picked += batch[: count - len(picked)]
    return picked


def time_http(port: int, conversations: list[Seeded]) -> tuple[float, float, float, float]:
    """(lineage p50, p99, append p50, p99) in ms over one keep-alive connection."""
    client = Client(port)
    base = "/api/v1/conversations"
    timings: list[float] = []
    for i, item in enumerate(spread(conversations, REQUESTS + 20, seed=1)):
        started = time.perf_counter()
        client.call("GET", f"{base}/{item.conversation_id}/messages/{item.tip_id}/lineage")
        if i >= 20:
            timings.append((time.perf_counter() - started) * 1000)
    lineage = percentiles(timings)
    text = "y" * TEXT_CHARS
    timings = []
    for i, item in enumerate(spread(conversations, REQUESTS + 20, seed=2)):
        # Every append hangs on the chain's tip, so each one costs the same at every size.
        body = msgspec.json.encode(
            {
                "parent_message_id": item.tip_id,
                "role": "human",
                "content": {"type": "text", "text": text},
                "created_by": "bench",
            }
        )
        started = time.perf_counter()
        client.call("POST", f"{base}/{item.conversation_id}/messages", body)
        if i >= 20:
            timings.append((time.perf_counter() - started) * 1000)
    return (*lineage, *percentiles(timings))


def time_engine(conversations: list[Seeded]) -> float:
    """Median in-process lineage at depth CHAIN, in µs, spread across conversations."""
    clock = time.perf_counter_ns
    timings = []
    for item in spread(conversations, 5000, seed=3):
        lineage = item.state.tree.lineage
        started = clock()
        lineage(item.tip_id)
        timings.append(clock() - started)
    return percentiles(timings)[0] / 1000


def measure(hot_messages: int) -> Row:
    with tempfile.TemporaryDirectory(prefix="canopy-scale-") as scratch:
        directory = Path(scratch)
        started = time.perf_counter()
        conversations = asyncio.run(seed(directory, hot_messages))
        seed_s = time.perf_counter() - started
        total = len(conversations) * PER_CONVERSATION
        node = Node(directory)
        try:
            before = node.rss()
            started = time.perf_counter()
            activate(node.port, conversations)
            activate_s = time.perf_counter() - started
            after = node.rss()
            http_figures = time_http(node.port, conversations)
        except Exception:
            node.stop()
            sys.stderr.write("".join(node.log))
            raise
        hot, passivations = node.stop()
        if passivations or hot != len(conversations):
            raise RuntimeError(f"{passivations} passivations, {hot} hot of {len(conversations)}")
        engine_p50 = time_engine(conversations)
    per_message = (after - before) / total
    return Row(
        total,
        after / 2**20,
        per_message,
        per_message - TEXT_CHARS,
        *http_figures,
        engine_p50,
        before / 2**20,
        seed_s,
        activate_s,
    )


_COLUMNS = (
    ("hot_messages", "hot msgs", "{:,}"),
    ("rss_mb", "RSS MiB", "{:.0f}"),
    ("bytes_per_message", "B/msg", "{:.0f}"),
    ("bytes_per_message_beyond_text", "B/msg-text", "{:.0f}"),
    ("lineage_p50_ms", "lin p50 ms", "{:.3f}"),
    ("lineage_p99_ms", "lin p99 ms", "{:.3f}"),
    ("append_p50_ms", "app p50 ms", "{:.3f}"),
    ("append_p99_ms", "app p99 ms", "{:.3f}"),
    ("engine_lineage_p50_us", "engine lin µs", "{:.1f}"),
    ("seed_s", "seed s", "{:.1f}"),
    ("activate_s", "activate s", "{:.1f}"),
)


def print_row(row: Row | None) -> None:
    cells = []
    for name, title, fmt in _COLUMNS:
        cell = title if row is None else fmt.format(getattr(row, name))
        cells.append(cell.rjust(max(len(title), 9)))
    print("  ".join(cells), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="stop at 10^5 hot messages")
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    parser.add_argument("--sizes", type=int, nargs="+", default=SIZES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = [n for n in args.sizes if not args.quick or n <= 10**5]
    print_row(None)
    rows = []
    for hot_messages in sizes:
        rows.append(measure(hot_messages))
        print_row(rows[-1])
    if args.json:
        args.json.write_bytes(msgspec.json.format(msgspec.json.encode([asdict(r) for r in rows])))


if __name__ == "__main__":
    main()
