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
import math
import random
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import uvloop
from msgspec.structs import replace

from bench.client import Connection, ProtocolError, build_request, run
from bench.node import canopy, free_port, node
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
REQUESTS = 2000  # timed requests per measure
WARM_UP = 20  # untimed requests before them
IN_FLIGHT = 8  # connections activating at once
BASE = "/api/v1/conversations"
NO_RESPONSE_CACHE = {"CANOPY_RESPONSE_CACHE_BYTES": "0"}  # see the module docstring

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


def rss(pid: int) -> int:
    """Resident set size in bytes (VmRSS)."""
    status = Path(f"/proc/{pid}/status").read_text()
    kib = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    assert kib is not None
    return int(kib.group(1)) * 1024


def shutdown_counts(log: str) -> tuple[int, int]:
    """(hot actors, passivations) from the registry's shutdown line in a node's log."""
    found = re.findall(r"(\d+) hot actors, \d+ activations, (\d+) passivations", log)
    if not found:
        raise RuntimeError("no registry shutdown line:\n" + log)
    hot, passivations = found[-1]
    return int(hot), int(passivations)


async def activate(port: int, conversations: list[Seeded]) -> None:
    """One GET per conversation, over IN_FLIGHT connections at once."""
    requests = [
        build_request("GET", f"{BASE}/{c.conversation_id}", port=port) for c in conversations
    ]
    result = await run(port, requests, connections=IN_FLIGHT, count=len(requests), seconds=math.inf)
    if result.errors:
        raise RuntimeError(f"{result.errors} activations failed, first {result.first_error}")


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


async def timed(connection: Connection, requests: Sequence[bytes]) -> tuple[float, float]:
    """(p50, p99) in ms of `requests` sent in turn, after WARM_UP untimed ones."""
    timings: list[float] = []
    for i, request in enumerate(requests):
        started = time.perf_counter()
        status, body = await connection.fetch(request)
        if status != 200:
            raise ProtocolError(f"{request[:80]!r}: {status} {body[:200]!r}")
        if i >= WARM_UP:
            timings.append((time.perf_counter() - started) * 1000)
    return percentiles(timings)


async def time_http(port: int, conversations: list[Seeded]) -> tuple[float, float, float, float]:
    """(lineage p50, p99, append p50, p99) in ms over one keep-alive connection."""
    picked = spread(conversations, REQUESTS + WARM_UP, seed=1)
    lineages = [
        build_request("GET", f"{BASE}/{c.conversation_id}/messages/{c.tip_id}/lineage", port=port)
        for c in picked
    ]
    # Every append hangs on the chain's tip, so each one costs the same at every size.
    text = {"type": "text", "text": "y" * TEXT_CHARS}
    appends = [
        build_request(
            "POST",
            f"{BASE}/{c.conversation_id}/messages",
            {
                "parent_message_id": c.tip_id,
                "role": "human",
                "content": text,
                "created_by": "bench",
            },
            port=port,
        )
        for c in spread(conversations, REQUESTS + WARM_UP, seed=2)
    ]
    connection = await Connection.open(port)
    try:
        return (*await timed(connection, lineages), *await timed(connection, appends))
    finally:
        connection.close()


async def on_node(
    port: int, pid: int, conversations: list[Seeded]
) -> tuple[int, int, float, tuple[float, float, float, float]]:
    """(RSS at start, RSS after activation, activation seconds, the HTTP timings)."""
    before = rss(pid)
    started = time.perf_counter()
    await activate(port, conversations)
    activate_s = time.perf_counter() - started
    after = rss(pid)
    return before, after, activate_s, await time_http(port, conversations)


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
        port = free_port()
        command = canopy(port, directory)
        with node(command, port, directory / "node.log", env=NO_RESPONSE_CACHE) as served:
            try:
                before, after, activate_s, http_figures = uvloop.run(
                    on_node(port, served.process.pid, conversations)
                )
            except Exception:
                sys.stderr.write(served.tail(200) + "\n")
                raise
        hot, passivations = shutdown_counts(served.tail(200))
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
