"""`canopy` command line: `canopy serve` starts a node."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

import uvloop

from gateway import config, connections, workers
from gateway.app import create_app
from gateway.workers import WorkersRefused
from persistence.data_dir import DataDirLock, DataDirLocked
from persistence.journal import JournalDamaged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="canopy", description="Canopy: the hot tier for AI chat history."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for command, about in (
        ("serve", "start a node"),
        ("migrate", "create the Cassandra keyspace and tables"),
        ("flusher", "write a node's Redis journal behind to the store (its flusher process)"),
    ):
        config.add_arguments(commands.add_parser(command, help=about))
    commands.choices["serve"].add_argument(
        "--worker-index", type=int, default=None, help=argparse.SUPPRESS
    )  # set by the supervisor of --workers N for each worker it starts
    commands.choices["flusher"].add_argument(
        "--stdin-lifeline", action="store_true", help="stop when stdin closes (the parent node)"
    )
    args = parser.parse_args(argv)
    try:
        settings = config.build(args)
        if args.command == "flusher" and settings.journal != "redis":
            raise ValueError(
                "canopy flusher writes a Redis journal behind: it needs --journal redis"
            )
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        if args.command == "migrate":
            return migrate(settings)
        if args.command == "flusher":
            return flusher(settings, lifeline=args.stdin_lifeline)
        return serve(settings, args.worker_index)
    except (DataDirLocked, JournalDamaged, WorkersRefused) as exc:
        print(f"canopy {args.command}: {exc}", file=sys.stderr, flush=True)
        return 2


def migrate(settings: config.Settings) -> int:
    from persistence.scylla import migrate as create_schema  # the driver is an extra

    with DataDirLock(settings.data_dir):
        create_schema(settings.scylla())
    print(f"keyspace {settings.scylla_keyspace} is ready on {settings.scylla_nodes}")
    return 0


def flusher(settings: config.Settings, *, lifeline: bool) -> int:
    from gateway import flusher_command

    # Before any thread starts (the driver's inherit it): on a busy core the write-behind
    # waits for the serving process, within its unflushed-bytes limit (docs/decisions.md).
    os.nice(settings.flusher_nice)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(flusher_command.run(settings, lifeline=lifeline))


def serve(settings: config.Settings, worker_index: int | None = None) -> int:
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    if worker_index is not None:
        return workers.run_worker(settings, worker_index)
    if settings.worker_count() > 1:
        return workers.supervise(settings)
    workers.check_layout(settings.data_dir, 1)
    serving = connections.serve(
        create_app(settings),
        settings.host,
        settings.port,
        max_connections=settings.max_connections or connections.default_max_connections(),
        shutdown_timeout=settings.shutdown_timeout,
        announce=lambda message: print(message, flush=True),
    )
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serving)
    return 0


if __name__ == "__main__":
    sys.exit(main())
