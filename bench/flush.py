"""Write-behind figures: flush throughput to a store and store writes per acknowledged message.

    python -m bench.flush [--store sqlite|cassandra] [--conversations 50] [--messages 100]

Appends go through real actors (file journal, `journal` durability) while the flusher
runs on its normal interval; then everything left is flushed and timed.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import msgspec

from engine.access import ANONYMOUS
from engine.actor import ConversationActor, NewConversation, NewMessage
from engine.registry import Registry, RegistryConfig
from persistence.flusher import Flusher, FlusherConfig
from persistence.journal_file import FileJournal
from persistence.sqlite import SQLiteStore
from persistence.store import Store


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", choices=("sqlite", "cassandra"), default="sqlite")
    parser.add_argument("--conversations", type=int, default=50)
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--interval", type=float, default=0.05)
    args = parser.parse_args()
    result = asyncio.run(run(args.store, args.conversations, args.messages, args.interval))
    for key, value in result.items():
        print(f"{key:>24}: {value:,.3f}")


if __name__ == "__main__":
    main()
