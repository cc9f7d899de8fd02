"""Write-behind figures: flush throughput to a store and store writes per acknowledged message.

    python -m bench.flush [--store sqlite|cassandra] [--conversations 50] [--messages 100]
    python -m bench.flush --cpu [--store cassandra] [--writes 200]

Appends go through real actors (file journal, `journal` durability) while the flusher
runs on its normal interval; then everything left is flushed and timed.

`--cpu` calls `Store.write` directly, one write at a time, with batches of 1, 32 and
1,000 messages (one append's flush, a busy conversation's coalesced appends, a fork)
and reports the process's CPU (every thread: the driver's I/O thread included) per
message and per write.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import uvloop

from engine.access import ANONYMOUS
from engine.actor import ConversationActor, NewConversation, NewMessage
from engine.registry import Registry, RegistryConfig
from persistence.flusher import Flusher, FlusherConfig
from persistence.journal_file import FileJournal
from persistence.records import Conversation, Message
from persistence.sqlite import SQLiteStore
from persistence.store import Changes, Store

SHAPES = (1, 32, 1000)  # messages per write: an append, coalesced appends, a fork


def open_store(kind: str, directory: Path) -> Store:
    if kind == "cassandra":
        from persistence.scylla import ScyllaConfig, ScyllaStore

        return ScyllaStore(ScyllaConfig(keyspace="canopy_bench"))
    return SQLiteStore(directory / "bench.db")


async def run(kind: str, conversations: int, messages: int, interval: float) -> dict[str, float]:
    text = msgspec.json.encode({"type": "text", "text": "x" * 200})
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        async with (
            open_store(kind, directory) as store,
            FileJournal(directory / "journal") as journal,
            Flusher(store, journal, FlusherConfig(interval=interval)) as flusher,
            Registry(store, journal, flusher, RegistryConfig()) as registry,
        ):
            actors = [
                await registry.create(ANONYMOUS, NewConversation("b", "bench"))
                for _ in range(conversations)
            ]

            async def writer(actor: ConversationActor) -> None:
                parent = actor.meta.root_id
                for _ in range(messages):
                    node = await actor.append(
                        ANONYMOUS, NewMessage(parent, "user", text, {}, "bench")
                    )
                    parent = node.message_id

            started = time.perf_counter()
            await asyncio.gather(*(writer(a) for a in actors))
            write_seconds = time.perf_counter() - started
            backlog = sum(len(c.messages) for _, c in flusher.pending())
            started = time.perf_counter()
            assert await flusher.flush_all(retries=3)
            drain_seconds = time.perf_counter() - started
            acked = conversations * (messages + 1)
            return {
                "acked_messages": acked,
                "append_rate_per_s": conversations * messages / write_seconds,
                "backlog_messages": backlog,
                "drain_rate_msgs_per_s": backlog / drain_seconds if backlog else 0.0,
                "store_batches": flusher.batches_written,
                "store_batches_per_ack": flusher.batches_written / acked,
                "stored_rows_per_ack": flusher.messages_written / acked,
            }


def shaped_writes(messages: int, writes: int, tag: str) -> list[tuple[str, Changes]]:
    """`writes` writes of `messages` new messages each, with the conversation row as the
    flusher sends it: a write of 1 or 32 appends to one of a few conversations (its
    activity moves every time), a write of 1,000 is a new conversation (a fork)."""
    at = datetime(2026, 1, 1, tzinfo=UTC)
    content = msgspec.json.encode({"type": "text", "text": "x" * 200})
    out: list[tuple[str, Changes]] = []
    seqs: dict[str, int] = {}
    for n in range(writes):
        cid = f"{tag}-{n}" if messages >= 1000 else f"{tag}-{n % 8}"
        seq = seqs.get(cid, 0)
        seqs[cid] = seq + messages
        rows = {
            f"{cid}-m{seq + i}": Message(
                f"{cid}-m{seq + i}",
                f"{cid}-m{seq + i - 1}",
                "user",
                content,
                {},
                at,
                "bench",
                seq + i + 1,
                seq + i,
            )  # fmt: skip
            for i in range(messages)
        }
        version = seq + messages
        updated = at + timedelta(milliseconds=version)
        meta = Conversation(
            cid, f"{cid}-m0", "bench", None, at, "bench", updated, False, None, None,
            version, version,
        )  # fmt: skip
        out.append((cid, Changes(conversation=meta, messages=rows, version=version)))
    return out


async def timed_writes(store: Store, writes: list[tuple[str, Changes]]) -> float:
    """Process CPU seconds (all threads) spent writing `writes` one after another."""
    started = time.process_time()
    for cid, changes in writes:
        await store.write(cid, changes)
    return time.process_time() - started


async def store_cpu(
    stores: dict[str, Callable[[], Store]], writes: int, rounds: int
) -> dict[str, dict[int, dict[str, float]]]:
    """Median CPU µs per message and per write of each store and shape, the stores
    alternating round by round (a drift in the machine's speed moves them alike)."""
    samples: dict[str, dict[int, list[float]]] = {name: {n: [] for n in SHAPES} for name in stores}
    opened = {name: factory() for name, factory in stores.items()}
    for store in opened.values():
        await store.__aenter__()
    try:
        for r in range(rounds):
            for messages in SHAPES:
                count = min(writes, max(4, writes * 16 // messages))
                for name, store in opened.items():
                    batch = shaped_writes(
                        messages, count, f"{name}-{r}-{messages}-{time.time_ns()}"
                    )
                    samples[name][messages].append(await timed_writes(store, batch) / count)
    finally:
        for store in opened.values():
            await store.__aexit__(None, None, None)
    return {
        name: {
            n: {
                "cpu_us_per_write": statistics.median(per) * 1e6,
                "cpu_us_per_message": statistics.median(per) * 1e6 / n,
            }
            for n, per in shapes.items()
        }
        for name, shapes in samples.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", choices=("sqlite", "cassandra"), default="sqlite")
    parser.add_argument("--conversations", type=int, default=50)
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--cpu", action="store_true", help="CPU per stored message, by shape")
    parser.add_argument("--writes", type=int, default=200, help="--cpu: writes of 1 and 32")
    parser.add_argument("--rounds", type=int, default=5, help="--cpu: rounds (median)")
    args = parser.parse_args()
    if args.cpu:
        with tempfile.TemporaryDirectory() as scratch:
            factory = functools.partial(open_store, args.store, Path(scratch))
            figures = uvloop.run(store_cpu({args.store: factory}, args.writes, args.rounds))
        for messages, row in figures[args.store].items():
            print(
                f"{messages:>5} messages per write: {row['cpu_us_per_write']:>10,.0f} µs per write,"
                f" {row['cpu_us_per_message']:>7,.1f} µs per message"
            )
        return
    result = asyncio.run(run(args.store, args.conversations, args.messages, args.interval))
    for key, value in result.items():
        print(f"{key:>24}: {value:,.3f}")


if __name__ == "__main__":
    main()
