"""`canopy` command line: `canopy serve` starts a node."""

from __future__ import annotations

import argparse
import logging
import sys

import uvloop
from aiohttp import web

from gateway import config
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
    web.run_app(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        shutdown_timeout=settings.shutdown_timeout,
        access_log=None,
        loop=uvloop.new_event_loop(),
        print=lambda message: print(message, flush=True),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
