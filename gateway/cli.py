"""`canopy` command line: `canopy serve` starts a node."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

import uvloop

from gateway import config, connections
from gateway.app import create_app
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
    ):
        config.add_arguments(commands.add_parser(command, help=about))
    args = parser.parse_args(argv)
    try:
        settings = config.build(args)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        if args.command == "migrate":
            return migrate(settings)
        return serve(settings)
    except (DataDirLocked, JournalDamaged) as exc:
        print(f"canopy {args.command}: {exc}", file=sys.stderr, flush=True)
        return 2


def migrate(settings: config.Settings) -> int:
    from persistence.scylla import migrate as create_schema  # the driver is an extra

    with DataDirLock(settings.data_dir):
        create_schema(settings.scylla())
    print(f"keyspace {settings.scylla_keyspace} is ready on {settings.scylla_nodes}")
    return 0


def serve(settings: config.Settings) -> int:
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
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
